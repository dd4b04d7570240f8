"""How well ``clsctl clean`` finds label errors: flip a known share of labels, clean, compare.

Two cases, as the issue that added ``clean`` asks:

* ``mnist``: ``../shared/data/mnist-10k`` with 5 % of labels flipped to another class (seeded); a 5-fold
  ``clsctl train`` run (resnet18 from scratch at 32 px, 6 epochs), then ``clean`` on its out-of-fold
  probabilities, then a retrain on the ``--apply drop`` manifest with the same folds. Both runs' out-of-fold
  predictions are also scored against the *true* labels on the rows both have, so the gain is not
  measured on the labels that were cleaned.
* ``pacs``: ``../shared/data/pacs-sketch`` with 5 % flipped; ``clean --quick`` with the local
  tf_efficientnet_lite0 ImageNet weights (no training run), folds grouped by ``group_id``.

Usage::

    python benchmarks/clean_bench.py mnist|pacs [--noise 0.05] [--seed 0] [--out benchmarks/results/clean-<case>]
    python benchmarks/clean_bench.py mnist --limit 3000 --epochs 4 --no-retrain     # a quick rerun

Writes the flipped rows (``flipped.csv``), the noisy manifest, the runs, and ``result.json`` into ``--out``.
Precision = flagged rows that were flipped / flagged rows; recall = flipped rows flagged / flipped rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = DATA.parent / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def flip_labels(manifest: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A copy with ``share`` of the labels moved to another class drawn uniformly; and the flipped rows."""
    rng = np.random.default_rng(seed)
    classes = sorted(manifest["label"].astype(str).unique())
    noisy = manifest.copy()
    noisy["label"] = noisy["label"].astype(str)
    rows = np.sort(rng.choice(len(noisy), size=round(share * len(noisy)), replace=False))
    new = [rng.choice([c for c in classes if c != noisy.at[i, "label"]]) for i in rows]
    flipped = pd.DataFrame({"path": noisy.loc[rows, "path"].to_numpy(), "true": noisy.loc[rows, "label"].to_numpy(),
                            "given": new})
    noisy.loc[rows, "label"] = new
    return noisy, flipped


def score(flagged: set[str], flipped: set[str]) -> dict[str, float]:
    hits = len(flagged & flipped)
    return {"flagged": len(flagged), "flipped": len(flipped), "hits": hits,
            "precision": hits / max(1, len(flagged)), "recall": hits / max(1, len(flipped))}


def true_label_f1(run, truth: pd.Series, rows: list[str]) -> float:  # noqa: ANN001 - toolkit.store.Run
    """Macro-F1 of a run's out-of-fold predictions against the true labels, on ``rows`` (paths)."""
    from sklearn.metrics import f1_score

    oof = run.read_oof().set_index("path")
    return float(f1_score(truth.loc[rows].to_numpy(), oof.loc[rows, "pred"].astype(str).to_numpy(), average="macro"))


def mnist(out: Path, noise: float, seed: int, *, limit: int | None = None, epochs: int = 6,
          retrain: bool = True) -> dict:
    from toolkit.clean.cleaner import clean_run
    from toolkit.config import load_recipe, with_overrides
    from toolkit.train import train

    root = DATA / "mnist-10k"
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)[["path", "label"]]
    if limit is not None and limit < len(manifest):  # a seeded sample, for a quick rerun
        manifest = manifest.sample(n=limit, random_state=seed).sort_index().reset_index(drop=True)
    noisy, flipped = flip_labels(manifest, noise, seed)
    out.mkdir(parents=True, exist_ok=True)
    noisy.to_csv(out / "noisy_manifest.csv", index=False)
    flipped.to_csv(out / "flipped.csv", index=False)
    recipe_path = out / "mnist.toml"
    recipe_path.write_text(f'''name = "mnist-noisy"
[data]
root = "{root}"
manifest = "{out / 'noisy_manifest.csv'}"
image_size = 32
normalize = "imagenet"
[split]
folds = 5
seed = {seed}
[model]
name = "resnet18"
pretrained = false
[aug]
preset = "none"
hflip = false
[optim]
name = "adamw"
lr = 3e-3
weight_decay = 0.05
[sched]
name = "cosine"
warmup_epochs = 1
[train]
epochs = {epochs}
batch_size = 128
seed = {seed}
patience = "none"
''')
    runs = out / "runs"
    t0 = time.perf_counter()
    noisy_run = train(load_recipe(recipe_path), runs_root=runs, name="noisy")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cleaned = clean_run(noisy_run, runs_root=runs, name="clean", apply="drop")
    clean_s = time.perf_counter() - t0
    flagged = set(cleaned.heads[0].suspects["path"])
    result = {"case": "mnist-10k", "images": len(manifest), "epochs": epochs, "noise": noise, "seed": seed,
              "train_s": round(train_s, 1),
              "clean_s": round(clean_s, 1), **score(flagged, set(flipped["path"])),
              "health": cleaned.heads[0].health["score"], "conflicts": len(cleaned.conflicts)}
    if not retrain:
        result["runs"] = {"noisy": noisy_run.id, "clean": cleaned.run.id}
        return result
    recipe = with_overrides(load_recipe(recipe_path), {"data.manifest": cleaned.applied["manifest"],
                                                        "name": "mnist-cleaned"})
    t0 = time.perf_counter()
    retrained = train(recipe, runs_root=runs, name="retrained")
    result["retrain_s"] = round(time.perf_counter() - t0, 1)
    truth = manifest.set_index("path")["label"].astype(str)
    both = retrained.read_oof()["path"].tolist()
    result.update({
        "rows_after_drop": cleaned.applied["rows_after"],
        "cv_macro_f1_noisy_run": noisy_run.summary["cv"]["macro_f1"]["mean"],
        "cv_macro_f1_retrained": retrained.summary["cv"]["macro_f1"]["mean"],
        "true_label_macro_f1_noisy_run": true_label_f1(noisy_run, truth, both),
        "true_label_macro_f1_retrained": true_label_f1(retrained, truth, both),
        "rows_scored_against_truth": len(both),
        "runs": {"noisy": noisy_run.id, "clean": cleaned.run.id, "retrained": retrained.id},
    })
    return result


def pacs(out: Path, noise: float, seed: int, image_size: int) -> dict:
    from toolkit.clean.cleaner import clean_source

    root = DATA / "pacs-sketch"
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)[["path", "label", "group_id"]]
    noisy, flipped = flip_labels(manifest, noise, seed)
    out.mkdir(parents=True, exist_ok=True)
    noisy.to_csv(out / "noisy_manifest.csv", index=False)
    flipped.to_csv(out / "flipped.csv", index=False)
    t0 = time.perf_counter()
    cleaned = clean_source(out / "noisy_manifest.csv", root=root, group="group_id", pretrained_file=WEIGHTS,
                           image_size=image_size, seed=seed, runs_root=out / "runs", name="quick")
    seconds = time.perf_counter() - t0
    flagged = set(cleaned.heads[0].suspects["path"])
    summary = cleaned.run.summary
    return {"case": "pacs-sketch --quick", "noise": noise, "seed": seed, "image_size": image_size,
            "seconds": round(seconds, 1), **score(flagged, set(flipped["path"])),
            "health": cleaned.heads[0].health["score"], "quick": summary.get("quick"), "run": cleaned.run.id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=("mnist", "pacs"))
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224, help="pacs: the side images are embedded at")
    parser.add_argument("--limit", type=int, default=None, help="mnist: a seeded sample of this many images [all]")
    parser.add_argument("--epochs", type=int, default=6, help="mnist: training epochs")
    parser.add_argument("--no-retrain", action="store_true", help="mnist: stop after clean (no retrain on its manifest)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    out = args.out or REPO / "benchmarks" / "results" / f"clean-{args.case}"
    if args.case == "mnist":
        result = mnist(out, args.noise, args.seed, limit=args.limit, epochs=args.epochs, retrain=not args.no_retrain)
    else:
        result = pacs(out, args.noise, args.seed, args.image_size)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
