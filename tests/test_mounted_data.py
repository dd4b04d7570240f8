"""Training from a manifest of absolute paths on another file system, with a decoded cache under a disk budget."""

from __future__ import annotations

import json

import pandas as pd
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli


def test_absolute_paths_on_a_mount_train_and_the_cache_keeps_to_its_disk_budget(tmp_path):
    # "mount" stands for a remote file system mounted on every machine at the same place; the manifest
    # lives elsewhere and names the images by their absolute paths under that mount point.
    mount = tmp_path / "mnt" / "shared"
    images = make_imagefolder(mount / "train", per_class=12)
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted(images.rglob("*.png"))]
    lists = tmp_path / "lists"
    lists.mkdir()
    pd.DataFrame(rows).to_csv(lists / "train.csv", index=False)

    entry = 24 * 24 * 3 + 128  # one decoded 24 px image in the cache
    budget = 20 * entry  # fewer than the 36 images: training must evict and decode again
    recipe = write_recipe(tmp_path / "r.toml", mount, data={
        "root": str(mount), "manifest": str(lists / "train.csv"), "image_size": 32, "num_workers": 0,
        "normalize": "imagenet", "cache_dir": str(tmp_path / "cache"), "cache_disk_gb": budget / 2**30})
    runs = tmp_path / "runs"
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", "0", "--name", "mounted"]) == 0

    run_dir = next(runs.glob("*-mounted"))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert len(manifest) == 36 and not manifest["path"].str.startswith("/").any()  # stored relative to the mount
    oof = pd.read_parquet(run_dir / "oof.parquet")
    assert len(oof) == (manifest["fold"] == 0).sum()

    held = [p.stat().st_size for p in (tmp_path / "cache").rglob("*.npy")]
    assert held and sum(held) <= budget and len(held) < 36
