"""clsctl train vs a bare PyTorch loop, side by side, on the real datasets.

For each case the bare loop (``../shared/tools/bare_loop.py``: timm model, AdamW, one-cycle, label
smoothing 0.1, hflip, batch 64, 2 threads, images pre-decoded into memory, fold 0 of
``StratifiedGroupKFold(5, shuffle=True, random_state=0)``) and ``clsctl train`` on the same fold,
epochs, model, size and batch run one after the other in this process's environment. clsctl splits
with the same scikit-learn call, so fold 0 is the same rows.

Usage::

    python benchmarks/train_bench.py [--cases facemask,pacs,mnist] [--epochs N] [--out benchmarks/results/train.json]

clsctl numbers include what the bare loop leaves out: decoding from disk every epoch, validation
after every epoch, and saving the best checkpoint and the resumable state.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))
SHARED = DATA.parent
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"

CASES = {
    "facemask": dict(data="facemask-3class", root="", group="photo_cluster", size=64, epochs=6,
                     model="tf_efficientnet_lite0", pretrained=True, lr=1e-3),
    "pacs": dict(data="pacs-sketch", root="", group="group_id", size=128, epochs=4,
                 model="tf_efficientnet_lite0", pretrained=True, lr=1e-3),
    "mnist": dict(data="mnist-10k", root="", group="-", size=28, epochs=3, model="resnet18", pretrained=False, lr=3e-3),
}


def bare(case: dict) -> dict:
    root = DATA / case["data"]
    cmd = [sys.executable, str(SHARED / "tools" / "bare_loop.py"), str(root / "manifest.csv"), str(root), "label",
           case["group"], str(case["size"]), str(case["epochs"]), case["model"]]
    if case["pretrained"]:
        cmd.append(str(WEIGHTS))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    values = dict(re.findall(r"(\w+)=([\d.]+)", out))
    return {"wall_s": wall, "train_s": float(values["train_s"]), "load_s": float(values["load_s"]),
            "train_img_s": float(values["train_img_s"]), "accuracy": float(values["val_acc"]),
            "macro_f1": float(values["val_macro_f1"])}


def clsctl(case: dict, runs: Path) -> dict:
    root = DATA / case["data"]
    sets = [f'data.root="{root}"', f'data.manifest="{root / "manifest.csv"}"', f"data.image_size={case['size']}",
            f"model.name={case['model']}", f"model.pretrained={str(case['pretrained']).lower()}",
            f"optim.lr={case['lr']}", f"train.epochs={case['epochs']}", "train.batch_size=64", "train.patience=none",
            "split.folds=5", "split.seed=0", "aug.preset=none", "aug.hflip=true", "data.normalize=imagenet",
            # one warmup epoch out of one would leave no epoch at the full rate
            f"sched.warmup_epochs={1 if case['epochs'] > 1 else 0}"]
    sets.append(f'model.pretrained_file="{WEIGHTS}"' if case["pretrained"] else "model.pretrained_file=none")
    sets.append(f"split.group={case['group']}" if case["group"] != "-" else "split.group=none")
    cmd = [sys.executable, "-m", "toolkit", "train", "--recipe", str(REPO / "recipes" / "lite0_finetune.toml"),
           "--folds", "0", "--runs", str(runs), "--name", case["data"]]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    run = next(p for p in runs.iterdir() if p.name.endswith(case["data"]))
    import pandas as pd

    metrics = pd.read_csv(run / "metrics.csv")
    summary = json.loads((run / "summary.json").read_text())
    last = metrics.iloc[-1]
    train_s = float((metrics["seconds"]).sum())
    return {"wall_s": wall, "epoch_s_total": train_s, "train_img_s": float(metrics["train_img_s"].mean()),
            "train_img_s_epoch1": float(metrics["train_img_s"].iloc[0]),
            "accuracy_last": float(last["accuracy"]), "macro_f1_last": float(last["macro_f1"]),
            "accuracy_best": summary["folds"]["0"]["metrics"]["accuracy"],
            "macro_f1_best": summary["folds"]["0"]["metrics"]["macro_f1"], "run": str(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="facemask,pacs,mnist")
    parser.add_argument("--epochs", type=int, default=None, help="every case trains this many epochs [the case's]")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            case = CASES[name] if args.epochs is None else {**CASES[name], "epochs": args.epochs}
            b = bare(case)
            c = clsctl(case, Path(tmp) / name)
            results[name] = {"case": case, "bare": b, "clsctl": c,
                             "train_img_s_ratio": c["train_img_s"] / b["train_img_s"],
                             "wall_ratio": c["wall_s"] / b["wall_s"]}
            print(json.dumps({name: results[name]}, indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
