"""How clsctl's stages grow with the data: 10k, 30k and 100k images in 500 classes, end to end.

Generates a synthetic ImageFolder once per size into a cache folder: small PNG and JPEG images of
varied sizes (16-64 px) in C classes, about four images per group (a ``group`` column in
``manifest.csv``), with a few exact duplicates (byte copies filed under another class) and near
duplicates (a re-encoded, slightly resized copy). Then times every stage, each in its own process
so its peak memory is its own:

* ``eda``: ``clsctl eda ROOT --manifest manifest.csv --group group``
* ``split``: ``clsctl split manifest.csv --folds 5 --group group``
* ``train``: one epoch of ``test_resnet`` at 32 px on fold 0, through the decoded cache (its warm-up
  included): the pipeline's overhead, not a model
* ``oof``: ten k-fold train runs with N × C out-of-fold probabilities written through the store (the
  members below; constructed numbers, as ``tests/rungen.py`` makes them)
* ``predict``: the trained fold on the first 10,000 images (fewer when N is smaller)
* ``ensemble``: ``clsctl ensemble <the ten runs> --select greedy``
* ``clean``: ``clsctl clean <one of them>`` (cleanlab on N × C, and the duplicate search over N images)
* ``report``: ``clsctl report`` over every run above

For each stage: wall time, CPU time (the stage and every process it waited for), the peak RSS of
its largest process (``wait4``: the stage process or any of its pool and loader processes, whichever
peaked highest) and the growth exponent k between consecutive sizes (time ∝ N^k), of wall and of
CPU time (on a shared machine the CPU time is the steadier one). Stages read what the stages before
them wrote, so ``--stages`` must keep a stage's predecessors.

    python benchmarks/scale_bench.py                          # 10k and 30k, 500 classes
    python benchmarks/scale_bench.py --large                  # also 100k
    python benchmarks/scale_bench.py --sizes 2000,6000 --stages eda,split
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("eda", "split", "train", "oof", "predict", "ensemble", "clean", "report")
MEMBERS = 10
PREDICT_IMAGES = 10_000


def class_name(c: int) -> str:
    return f"class_{c:03d}"


def generate(folder: Path, n: int, classes: int, seed: int = 0) -> Path:
    """An ImageFolder of ``n`` images under ``folder/images`` and its ``manifest.csv`` (path, label, group)."""
    import numpy as np
    from PIL import Image

    marker = folder / "DONE"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    root = folder / "images"
    for c in range(classes):
        (root / class_name(c)).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    # Classes of unequal size (the largest about 4x the smallest, at least 3 images each: cleanlab needs
    # every class), groups of 1-7 images within a class.
    share = rng.uniform(1.0, 4.0, classes)
    floor = np.repeat(np.arange(classes), min(3, n // classes))
    labels = np.sort(np.concatenate([floor, rng.choice(classes, size=n - floor.size, p=share / share.sum())]))
    rows = []
    group = 0
    left_in_group = 0
    tints = rng.integers(0, 256, (classes, 3))
    for i in range(n):
        c = int(labels[i])
        if left_in_group == 0 or (i and labels[i - 1] != c):
            group, left_in_group = group + 1, int(rng.integers(1, 8))
        left_in_group -= 1
        w, h = (int(v) for v in rng.integers(16, 65, 2))
        # A smooth random picture (a few cells blown up) so perceptual hashes spread like real images'.
        cells = rng.integers(0, 256, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3))
        cells = (cells * 0.7 + tints[c] * 0.3).astype(np.uint8)
        picture = Image.fromarray(cells).resize((w, h), Image.Resampling.BILINEAR)
        jpeg = rng.random() < 0.3
        rel = f"{class_name(c)}/{i:06d}.{'jpg' if jpeg else 'png'}"
        if jpeg:
            picture.save(root / rel, quality=90)
        else:
            picture.save(root / rel)
        rows.append((rel, class_name(c), f"g{group:06d}"))
    # Plant duplicates: 0.5 % exact copies filed under another class, 0.5 % near copies in the same class.
    for kind in ("exact", "near"):
        for j, src in enumerate(rng.choice(n, size=max(1, n // 200), replace=False)):
            rel, label, grp = rows[int(src)]
            c = (int(label[6:]) + 1) % classes if kind == "exact" else int(label[6:])
            new = f"{class_name(c)}/{kind}{j:05d}{Path(rel).suffix}"
            if kind == "exact":
                shutil.copyfile(root / rel, root / new)
            else:
                img = Image.open(root / rel).convert("RGB")
                img.resize((img.width + 1, img.height)).save(root / new, quality=85)
            rows.append((new, class_name(c), grp))
    import pandas as pd

    pd.DataFrame(rows, columns=["path", "label", "group"]).to_csv(folder / "manifest.csv", index=False)
    marker.write_text(str(len(rows)))
    return folder


def make_members(work: Path, data: Path, classes: int) -> None:
    """Ten finished 5-fold train runs over the split manifest's rows, with N × C probabilities each."""
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np
    import pandas as pd
    from rungen import BASE_RECIPE, merged, train_run

    manifest = pd.read_csv(work / "split.csv", dtype=str)
    names = [class_name(c) for c in range(classes)]
    labels = manifest["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    folds = manifest["fold"].astype(int).to_numpy()
    n = len(labels)
    for m in range(MEMBERS):
        rng = np.random.default_rng(m)
        # float32 from the start: the store writes float32, and N × C float64 would double this process's peak
        probs = rng.random((n, classes), dtype=np.float32)
        probs *= 0.5
        right = rng.random(n) < 0.5 + 0.03 * m
        pred = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
        probs[np.arange(n), pred] += np.float32(20.0)
        probs /= probs.sum(axis=1, keepdims=True)
        run = train_run(work / "runs", f"member{m:02d}", classes=names, labels=labels, probs=probs, folds=folds,
                  paths=manifest["path"].tolist(), data_root=str(data / "images"),
                  recipe=merged(BASE_RECIPE, {"optim.lr": 1e-3 * (1 + m)}), epochs=2)
        run.write_manifest(manifest)  # what clean reads its paths and folds from
        del probs


def run_stage(name: str, argv: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run one stage in its own process: wall seconds and the peak RSS (MiB) of its largest process."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        # wait4 reports the stage process's own peak or its waited-for children's, whichever is larger
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}), log {log}:\n{tail}")
    # CPU seconds too: on a shared machine they show growth that waiting for the CPU hides
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}


def stage_commands(work: Path, data: Path, classes: int) -> dict[str, list[str]]:
    """Each stage's command line; later stages read what earlier ones wrote under ``work``."""
    clsctl = [sys.executable, "-m", "toolkit"]
    me = [sys.executable, str(Path(__file__).resolve())]
    root, manifest = data / "images", data / "manifest.csv"
    recipe = work / "tiny.toml"
    recipe.write_text(f'''name = "scale"
[data]
root = "{root}"
manifest = "{work / 'split.csv'}"
image_size = 32
normalize = "imagenet"
cache_dir = "{work / 'decoded'}"
[model]
name = "test_resnet"
pretrained = false
[aug]
preset = "none"
[train]
epochs = 1
batch_size = 256
seed = 0
''')
    import pandas as pd

    pd.read_csv(manifest, dtype=str).head(PREDICT_IMAGES).to_csv(work / "predict.csv", index=False)
    return {
        "eda": [*clsctl, "eda", str(root), "--manifest", str(manifest), "--group", "group", "--out", str(work / "eda")],
        "split": [*clsctl, "split", str(manifest), "--root", str(root), "--folds", "5", "--group", "group",
                  "--out", str(work / "split.csv"), "--name", "split"],
        "train": [*clsctl, "train", "--recipe", str(recipe), "--folds", "0", "--name", "tiny"],
        "oof": [*me, "--members", str(work), "--data", str(data), "--classes", str(classes)],
        "predict": [*clsctl, "predict", "tiny", str(work / "predict.csv"), "--root", str(root), "--folds", "0",
                    "--name", "p10k"],
        "ensemble": [*clsctl, "ensemble", str(work / "runs" / "*-member*"), "--select", "greedy", "--name", "ens"],
        "clean": [*clsctl, "clean", "member00", "--top", "5"],
        "report": [*clsctl, "report", str(work / "runs" / "*"), "--out", str(work / "report.html")],
    }


def bench_size(n: int, classes: int, cache: Path, stages: list[str]) -> dict[str, dict[str, float]]:
    data = generate(cache / f"data-{n}x{classes}", n, classes)
    work = cache / f"work-{n}x{classes}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    env = {**os.environ, "CLSCTL_RUNS": str(work / "runs"), "CLSCTL_CACHE": str(work / "cache"),
           "PYTHONPATH": str(REPO)}
    commands = stage_commands(work, data, classes)
    results = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        results[stage] = run_stage(stage, commands[stage], env, work / "logs" / f"{stage}.log")
        r = results[stage]
        print(f"  {n:>7} {stage:<9} {r['seconds']:8.1f} s {r['cpu_s']:8.1f} cpu-s {r['rss_mib']:8.0f} MiB", flush=True)
    return results


def table(sizes: list[int], results: dict[int, dict[str, dict[str, float]]], stages: list[str]) -> str:
    """Markdown: per size wall seconds, CPU seconds and peak MiB; per step between sizes k of wall and CPU time."""
    def k(stage: str, a: int, b: int, key: str) -> str:
        ta, tb = results[a][stage][key], results[b][stage][key]
        return f"{math.log(tb / ta) / math.log(b / a):.2f}"

    steps = list(zip(sizes, sizes[1:], strict=False))
    head = ["stage", *[f"{n:,}: s / CPU s / peak MiB" for n in sizes],
            *[f"k {a:,}→{b:,} (wall / CPU)" for a, b in steps]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in stages:
        cells = [stage]
        for n in sizes:
            r = results[n][stage]
            cells.append(f"{r['seconds']:.1f} / {r['cpu_s']:.1f} / {r['rss_mib']:.0f}")
        cells += [f"{k(stage, a, b, 'seconds')} / {k(stage, a, b, 'cpu_s')}" for a, b in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,30000", help="comma-separated image counts")
    parser.add_argument("--large", action="store_true", help="add 100,000 images to --sizes")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clsctl-scale-bench",
                        help="where the generated data and the stages' outputs go")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    # the stages this script runs in a process of its own
    parser.add_argument("--members", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.members:
        make_members(args.members, args.data, args.classes)
        return

    sizes = sorted({int(s) for s in args.sizes.split(",")} | ({100_000} if args.large else set()))
    stages = [s for s in STAGES if s in args.stages.split(",")]
    results = {}
    for n in sizes:
        print(f"{n:,} images × {args.classes} classes", flush=True)
        results[n] = bench_size(n, args.classes, args.cache, stages)
    print()
    print(table(sizes, results, stages))
    if args.json:
        args.json.write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
