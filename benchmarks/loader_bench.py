"""Does the data pipeline starve the model? ``clsctl train`` epochs vs a bare loop on in-memory tensors.

Run from the repository root::

    .venv/bin/python benchmarks/loader_bench.py [--cases pacs:resnet18:64,pacs:mobilenetv3_small_100:128,...]
        [--epochs 3] [--batch 64] [--threads 2] [--out benchmarks/results/loader.json]

For each case (dataset:model:size), in one process tree on the same cores, one after the other:

1. **bare**: every image of the training fold decoded with PIL, resized to ``size`` and stacked into
   one channels-last float tensor *before* the clock starts; then the same number of images per epoch
   as clsctl trains (random order, random horizontal flip on the tensor, cross-entropy, AdamW) — the
   compute ceiling of this model at this size, batch and thread count;
2. **clsctl**: ``clsctl train`` on fold 0 of the same grouped split, ``light`` preset, ``--epochs``
   epochs, with a decoded-image cache that starts empty: epoch 1 decodes every file from disk (cold),
   epoch 2+ read the cache (warm). Its ``train_img_s`` column times the training loop only (batches
   fetched, forward, backward, step); validation and checkpoints are excluded, as the bare loop has none.
   Before epoch 1 clsctl decodes every file into the cache on all cores (``cache_warm`` in run.json):
   that time is added to epoch 1's, so epoch 1 counts from the first decode.

Ratios are clsctl img/s / bare img/s (targets: epoch 1 ≥ 0.75, epoch 2+ ≥ 0.9). ``data_wait_s`` (time
the training loop waited for batches) is reported beside them: it is the part of an epoch the loader
owns. Both sides use ``--threads`` torch threads and channels-last; clsctl uses its default
DataLoader workers (one on a 2-core machine), so decoding and augmenting share the cores with the model.

The bare loop runs twice, before and after clsctl (``--bare-epochs`` epochs each, best epoch of each),
and the ratio uses the mean of the two: a shared machine drifts between phases, and a single bare
measurement on one side of clsctl can be off by 20 %. Both bare values are kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))
GROUPS = {"pacs-sketch": "group_id", "mnist-10k": None, "facemask-3class": "photo_cluster"}
ALIASES = {"pacs": "pacs-sketch", "mnist": "mnist-10k", "facemask": "facemask-3class"}
DEFAULT_CASES = ("pacs:resnet18:64,pacs:mobilenetv3_small_100:128,"
                 "mnist:resnet18:64,mnist:mobilenetv3_small_100:128")


def _fold0(dataset: str):  # noqa: ANN202
    """Rows of fold 0's training part, with clsctl's own split (so both sides train the same images)."""
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    df = pd.read_csv(DATA / dataset / "manifest.csv")
    y = df["label"].astype(str)
    group = GROUPS[dataset]
    if group:
        split = StratifiedGroupKFold(5, shuffle=True, random_state=0).split(df, y, df[group].astype(str))
    else:
        split = StratifiedKFold(5, shuffle=True, random_state=0).split(df, y)
    train, _ = next(split)
    return df, y, np.asarray(train)


def bare(dataset: str, model_name: str, size: int, epochs: int, batch: int, threads: int, fused: bool = False) -> dict:
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    df, y, train = _fold0(dataset)
    classes = sorted(y.unique())
    labels = torch.tensor(y.map({c: i for i, c in enumerate(classes)}).to_numpy()[train])
    root = DATA / dataset
    t0 = time.perf_counter()
    pixels = np.stack([np.asarray(Image.open(root / p).convert("RGB").resize((size, size), Image.BILINEAR))
                       for p in df["path"].to_numpy()[train]])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    x = x.contiguous(memory_format=torch.channels_last)
    load_s = time.perf_counter() - t0
    model = timm.create_model(model_name, num_classes=len(classes)).to(memory_format=torch.channels_last)
    # torch's default on the CPU is the per-tensor update; --bare-fused gives the bare loop clsctl's fused one.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=fused or None)
    model.train()
    per_epoch = []
    steps = len(train) // batch  # clsctl drops the last partial batch
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(train)))
        t = time.perf_counter()
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = F.cross_entropy(model(xb), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_epoch.append(steps * batch / (time.perf_counter() - t))
    return {"load_s": load_s, "img_s_per_epoch": per_epoch, "img_s": max(per_epoch), "images_per_epoch": steps * batch}


def clsctl(dataset: str, model_name: str, size: int, epochs: int, batch: int, threads: int, work: Path,
           extra: tuple[str, ...] = ()) -> dict:
    import pandas as pd

    root = DATA / dataset
    group = GROUPS[dataset]
    runs, cache = work / "runs", work / "cache"
    sets = [f'data.root="{root}"', f'data.manifest="{root / "manifest.csv"}"', f"data.image_size={size}",
            f"model.name={model_name}", "model.pretrained=false", "model.pretrained_file=none", "optim.lr=1e-3",
            f"train.epochs={epochs}", f"train.batch_size={batch}", "train.patience=none", "split.folds=5",
            "split.seed=0", 'aug.preset="light"', "data.normalize=imagenet", "data.cache=true",
            f'data.cache_dir="{cache}"', "loss.label_smoothing=0.0", 'sched.name="none"',
            f"split.group={group}" if group else "split.group=none", *extra]
    cmd = [sys.executable, "-m", "toolkit", "train", "--recipe", str(REPO / "recipes" / "lite0_finetune.toml"),
           "--folds", "0", "--runs", str(runs), "--name", "bench"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    run = next(p for p in runs.iterdir() if p.name.endswith("-bench"))
    m = pd.read_csv(run / "metrics.csv")
    # The decoded cache is filled on every core before epoch 1 (run.json's cache_warm): that time is
    # charged to epoch 1, which is then the time from the first decode to the end of its training loop.
    warm = json.loads((run / "run.json").read_text()).get("cache_warm") or {}
    warm_s = float(warm.get("seconds", 0.0))
    images = float(m["train_img_s"].iloc[0] * m["train_s"].iloc[0])
    return {"wall_s": wall, "img_s_per_epoch": m["train_img_s"].tolist(), "cache_warm": warm,
            "epoch1_loop_img_s": float(m["train_img_s"].iloc[0]),
            "epoch1_img_s": images / (float(m["train_s"].iloc[0]) + warm_s),
            "warm_img_s": float(m["train_img_s"].iloc[1:].mean()), "data_wait_s": m["data_wait_s"].tolist(),
            "train_s": m["train_s"].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bare-epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--bare-fused", action="store_true", help="the bare loop's AdamW uses torch's fused update")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe overrides for clsctl (repeatable), e.g. optim.kwargs={fused=false}")
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: run one bare case, print JSON
    args = parser.parse_args()
    if args.bare:
        dataset, model_name, size = args.bare.split(":")
        print(json.dumps(bare(dataset, model_name, int(size), args.epochs, args.batch, args.threads,
                              args.bare_fused)))  # --epochs = bare epochs here
        return
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    print("| data | model | px | bare img/s (before / after) | cache warm s | clsctl epoch 1 (incl. warm) | ratio "
          "| clsctl epoch 2+ | ratio | wait s (ep1 / ep2+) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        short, model_name, size = case.split(":")
        dataset = ALIASES.get(short, short)
        spec = f"{dataset}:{model_name}:{size}"

        def run_bare(spec: str = spec) -> dict:
            out = subprocess.run([sys.executable, __file__, "--bare", spec, "--epochs", str(args.bare_epochs),
                                  "--batch", str(args.batch), "--threads", str(args.threads),
                                  *(["--bare-fused"] if args.bare_fused else [])],
                                 check=True, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).stdout
            return json.loads(out.strip().splitlines()[-1])

        before = run_bare()
        with tempfile.TemporaryDirectory() as tmp:
            c = clsctl(dataset, model_name, int(size), args.epochs, args.batch, args.threads, Path(tmp),
                       tuple(args.set))
        after = run_bare()
        b = {"img_s": (before["img_s"] + after["img_s"]) / 2, "before": before, "after": after}
        row = {"dataset": dataset, "model": model_name, "size": int(size), "bare": b, "clsctl": c,
               "bare_fused": args.bare_fused, "clsctl_sets": args.set,
               "epoch1_ratio": c["epoch1_img_s"] / b["img_s"], "warm_ratio": c["warm_img_s"] / b["img_s"]}
        results.append(row)
        wait = c["data_wait_s"]
        print(f"| {dataset} | {model_name} | {size} | {b['img_s']:.0f} ({before['img_s']:.0f} / {after['img_s']:.0f}) | "
              f"{c['cache_warm'].get('seconds', 0):.1f} | {c['epoch1_img_s']:.0f} | "
              f"{row['epoch1_ratio']:.2f} | {c['warm_img_s']:.0f} | {row['warm_ratio']:.2f} | "
              f"{wait[0]:.1f} / {sum(wait[1:]) / max(1, len(wait) - 1):.1f} |", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
