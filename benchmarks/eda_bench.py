"""Benchmark ``clsctl eda``: throughput against a bare decode, and peak memory against set size.

Run from the repository root::

    .venv/bin/python benchmarks/eda_bench.py [--workers N] [--rounds 3] [--synthetic 50000]
        [--baseline-tree DIR] [--skip-memory] [--single] [--out FILE]

What it measures (on ``$CLSCTL_DATA`` or ``../shared/data``):

* Throughput on pacs-sketch and facemask-3class/crops. On the same files, with the same number
  of processes and the same chunking (eda sends a worker ``chunk_size(n, workers)`` images per
  task; the decode pool gets ``imap(..., chunksize=chunk_size(n, workers))``), page cache warm:
  (1) a bare one-pass decode with Pillow (``Image.open`` + ``convert("RGB")``) and (2) with OpenCV
  (``cv2.imread``, BGR as it comes, no checks), (3) the toolkit's own loader (``load_image_array``,
  what training decodes with), (4) ``run_eda`` in a fresh interpreter, and with ``--baseline-tree`` (5)
  ``run_eda`` of another checkout of the repository (e.g. the previous commit, from
  ``git worktree add /tmp/eda-base HEAD``). The contenders run one after another in
  each of ``--rounds`` rounds, so slow phases of a shared machine hit all of them; the table gives
  the best round of each and the spread, and the ratios are taken per round (eda in round r over
  the bare decode in round r), reported as median and range. The eda rate is for its one pass
  (read, header, hashes, statistics, features, thumbnails; pool start included, as for the
  decode) and end to end (plus duplicate search, outliers, plots, HTML).
* Peak memory of the whole process tree (main process + pool workers) on mnist-10k and on a
  generated folder of tiny 28×28 PNGs (``--synthetic`` images, 50,000 by default), each eda run
  in a fresh subprocess. With psutil installed the tree's summed RSS is sampled every 20 ms (an
  upper bound: pages shared after fork are counted in each process); without it, the largest
  single process from ``getrusage(RUSAGE_CHILDREN)`` is reported.

* With ``--single`` (instead of the above): CPU time per image in one process, best of
  ``--rounds`` interleaved rounds, of the two bare decodes, of the "must-do" part of any such pass
  (read, SHA-1 of the bytes, decode, planes, grayscale test, SHA-1 of the planes) and of eda's
  per-chunk pass: how far eda is from the floor its own design sets.

Results are printed as Markdown tables (and written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit.data.sources import manifest_from_path  # noqa: E402
from toolkit.imaging.pool import chunk_size, default_workers  # noqa: E402


def data_root() -> Path:
    return Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))


def _bare(path: str) -> int:
    with Image.open(path) as im:
        return im.convert("RGB").size[0]


def _bare_cv(path: str) -> int:
    import cv2

    return cv2.imread(path, cv2.IMREAD_COLOR).shape[1]


def _toolkit(path: str) -> int:
    from toolkit.imaging.decode import load_image_array

    try:
        return load_image_array(path).shape[1]
    except Exception:
        return 0


def decode_rate(func, files: list[str], workers: int) -> float:
    """Images per second of ``func`` over ``files`` with eda's pool settings (pool start included).

    The pool gets the files ``chunk_size(n, workers)`` at a time: the tasks eda's pass sends.
    """
    size = chunk_size(len(files), workers)
    start = time.perf_counter()
    if workers <= 1:
        for f in files:
            func(f)
    else:
        with get_context().Pool(workers) as pool:
            for _ in pool.imap(func, files, chunksize=size):
                pass
    return len(files) / (time.perf_counter() - start)


# The child runs in either tree: this one, or a baseline checkout from before eda moved to report/.
_CHILD = """
import json, sys, time
try:
    from toolkit.data.sources import manifest_from_path as manifest
    from toolkit.report.eda import run_eda
except ImportError:
    from toolkit.data.eda import eda_manifest as manifest, run_eda
t = time.perf_counter()
df = manifest(sys.argv[1])
r = run_eda(df, None, sys.argv[2], workers=int(sys.argv[3]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "pass_seconds": r["timing"]["pass_seconds"],
                  "n": r["images"]["total"], "pairs": r["duplicates"]["pairs"]}))
"""


def run_eda_child(data: Path, out: Path, workers: int, tree: Path = REPO) -> dict:
    """Run eda (of the checkout ``tree``) in a fresh interpreter; return its timings and peak memory (MiB)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(data), str(out), str(workers)], cwd=tree,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    peak_tree = peak_main = 0
    if psutil is not None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                main = p.memory_info().rss
                tree_rss = main + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                break
            peak_tree, peak_main = max(peak_tree, tree_rss), max(peak_main, main)
            time.sleep(0.02)
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"eda failed on {data} (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["largest_process_mib"] = largest / 1024 if largest > before else None
    result["tree_peak_mib"] = peak_tree / 2**20 if peak_tree else None
    result["main_peak_mib"] = peak_main / 2**20 if peak_main else None
    return result


def _spread(rates: list[float]) -> str:
    """Best of the rounds, with the range of all rounds."""
    return f"{max(rates):.0f} ({min(rates):.0f}–{max(rates):.0f})"


def _ratio(num: list[float], den: list[float]) -> str:
    """Per-round ratios: median (min–max)."""
    r = sorted(a / b for a, b in zip(num, den, strict=True))
    return f"{float(np.median(r)):.2f} ({r[0]:.2f}–{r[-1]:.2f})"


def throughput(name: str, folder: Path, workers: int, rounds: int, tmp: Path, baseline: Path | None) -> list[str]:
    """Interleaved rounds of every contender on one dataset; Markdown rows for the two tables."""
    df = manifest_from_path(folder)
    files = [str(folder / p) for p in df["path"]]
    for f in files:  # warm the page cache: everyone decodes from memory
        Path(f).read_bytes()
    rates: dict[str, list[float]] = {k: [] for k in ("bare", "bare_cv", "loader", "pass", "e2e", "base_pass",
                                                     "base_e2e")}
    for r in range(rounds):
        rates["bare"].append(decode_rate(_bare, files, workers))
        rates["bare_cv"].append(decode_rate(_bare_cv, files, workers))
        res = run_eda_child(folder, tmp / f"{name.replace('/', '_')}-{r}", workers)
        rates["pass"].append(res["n"] / res["pass_seconds"])
        rates["e2e"].append(res["n"] / res["seconds"])
        if baseline is not None:
            res = run_eda_child(folder, tmp / f"{name.replace('/', '_')}-base-{r}", workers, baseline)
            rates["base_pass"].append(res["n"] / res["pass_seconds"])
            rates["base_e2e"].append(res["n"] / res["seconds"])
        rates["loader"].append(decode_rate(_toolkit, files, workers))
        print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items() if v),
              flush=True)
    rates = {k: v for k, v in rates.items() if v}
    row = (f"| {name} | {len(files)} | {_spread(rates['bare'])} | {_spread(rates['bare_cv'])} "
           f"| {_spread(rates['loader'])} | {_spread(rates['pass'])} | {_spread(rates['e2e'])} "
           f"| {_ratio(rates['pass'], rates['bare'])} | {_ratio(rates['pass'], rates['bare_cv'])} "
           f"| {_ratio(rates['e2e'], rates['bare'])} |")
    base = ""
    if baseline is not None:
        base = (f"| {name} | {_spread(rates['base_pass'])} | {_spread(rates['pass'])} "
                f"| {_ratio(rates['base_pass'], rates['bare'])} | {_ratio(rates['pass'], rates['bare'])} "
                f"| {_ratio(rates['pass'], rates['base_pass'])} |")
    return [row, base]


def _must_do(path: str) -> None:
    """What any pass like eda's does before measuring anything: read, SHA-1 of the bytes, decode,
    planes, grayscale test, SHA-1 of the planes (one when grey) — OpenCV for plain files."""
    import hashlib

    import cv2

    from toolkit.imaging.decode import decode_plain_native
    from toolkit.imaging.hashing import read_file

    data = read_file(path)
    hashlib.sha1(data, usedforsecurity=False).hexdigest()
    native = decode_plain_native(data)
    pixels = native[1] if native is not None else np.asarray(Image.open(path).convert("RGB"))
    planes = cv2.split(pixels) if pixels.ndim == 3 else [pixels]
    if len(planes) == 3 and cv2.norm(planes[0], planes[1], cv2.NORM_INF) == 0 \
            and cv2.norm(planes[0], planes[2], cv2.NORM_INF) == 0:
        planes = planes[:1]
    digest = hashlib.sha1(b"", usedforsecurity=False)
    for plane in planes:
        digest.update(plane)
    digest.hexdigest()


def single_process(name: str, folder: Path, rounds: int) -> str:
    """CPU time per image in this process, best of interleaved rounds: the decodes, the floor, eda's pass."""
    import cv2

    from toolkit.data.eda_pass import analyze_chunk

    cv2.setNumThreads(1)
    files = [str(folder / p) for p in manifest_from_path(folder)["path"]]

    funcs = {"bare Pillow": _bare, "bare OpenCV": _bare_cv, "must-do": _must_do}
    best: dict[str, float] = {}
    for _ in range(rounds):
        for key, func in funcs.items():
            t = time.process_time()
            for f in files:
                func(f)
            best[key] = min(best.get(key, 1e9), (time.process_time() - t) / len(files))
        t = time.process_time()
        for i in range(0, len(files), 64):
            analyze_chunk([(f, False) for f in files[i:i + 64]])
        best["eda"] = min(best.get("eda", 1e9), (time.process_time() - t) / len(files))
    us = {k: v * 1e6 for k, v in best.items()}
    return (f"| {name} | {us['bare Pillow']:.0f} | {us['bare OpenCV']:.0f} | {us['must-do']:.0f} | {us['eda']:.0f} "
            f"| {best['bare Pillow'] / best['must-do']:.2f} | {best['bare Pillow'] / best['eda']:.2f} "
            f"| {best['bare OpenCV'] / best['eda']:.2f} |")


def write_synthetic(folder: Path, n: int) -> None:
    """``n`` distinct 28×28 grey PNGs in 10 class folders: random 7×7 layouts, upscaled.

    Random layouts keep the perceptual hashes spread out, so the duplicate search finds few pairs
    and the memory measured is that of the per-image tables, not of a pair list.
    """
    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8), "L")
        img = coarse.resize((28, 28), Image.Resampling.BILINEAR)
        img.save(folder / str(i % 10) / f"{i:06d}.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every contender")
    parser.add_argument("--synthetic", type=int, default=50_000)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="another checkout of the repository whose eda runs beside this one")
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--single", action="store_true",
                        help="only time one process per image: bare decodes, the must-do floor, eda's pass")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workers = args.workers
    shared = data_root()
    pacs = shared / "pacs-sketch" / "sketch"
    if not pacs.is_dir():
        pacs = shared / "pacs-sketch"
    lines = [f"workers: {workers}, cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}, "
             f"rounds: {args.rounds}", "",
             "| data | images | bare Pillow decode img/s | bare OpenCV decode img/s | loader img/s "
             "| eda pass img/s | eda end-to-end img/s | pass / bare Pillow | pass / bare OpenCV "
             "| end-to-end / bare Pillow |", "|---|---|---|---|---|---|---|---|---|---|"]
    base_lines = ["", f"Baseline tree: {args.baseline_tree}", "",
                  "| data | baseline pass img/s | eda pass img/s | baseline pass / bare | eda pass / bare "
                  "| speed-up |", "|---|---|---|---|---|---|"]
    sets = (("pacs-sketch", pacs), ("facemask-3class/crops", shared / "facemask-3class" / "crops"))
    if args.single:
        lines = ["One process, CPU µs per image (best of the rounds):", "",
                 "| data | bare Pillow | bare OpenCV | must-do floor | eda pass | Pillow / floor | Pillow / eda "
                 "| OpenCV / eda |", "|---|---|---|---|---|---|---|---|"]
        lines += [single_process(name, folder, args.rounds) for name, folder in sets if folder.is_dir()]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            args.out.write_text(text, encoding="utf-8")
        return
    tmp = Path(tempfile.mkdtemp(prefix="eda-bench-"))
    try:
        for name, folder in sets:
            if not folder.is_dir():
                lines.append(f"| {name} | missing | | | | | | | | |")
                continue
            row, base = throughput(name, folder, workers, args.rounds, tmp, args.baseline_tree)
            lines.append(row)
            base_lines.append(base)
            print(row, flush=True)
        if args.baseline_tree is not None:
            lines += base_lines
        if not args.skip_memory:
            lines += ["", "| data | images | eda seconds | tree peak RSS MiB (sum) | main process peak MiB "
                      "| largest process MiB (getrusage) |", "|---|---|---|---|---|---|"]
            synth = tmp / "synthetic"
            t = time.perf_counter()
            write_synthetic(synth, args.synthetic)
            print(f"wrote {args.synthetic} synthetic PNGs in {time.perf_counter() - t:.0f} s", flush=True)
            for name, folder in (("mnist-10k", shared / "mnist-10k"), (f"synthetic {args.synthetic}", synth)):
                if not folder.is_dir():
                    lines.append(f"| {name} | missing | | | | |")
                    continue
                res = run_eda_child(folder, tmp / ("out-" + name.split()[0]), workers)

                def mib(v: float | None) -> str:
                    return "n/a" if v is None else f"{v:.0f}"

                lines.append(f"| {name} | {res['n']} | {res['seconds']:.1f} | {mib(res['tree_peak_mib'])} | "
                             f"{mib(res['main_peak_mib'])} | {mib(res['largest_process_mib'])} |")
                print(lines[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
