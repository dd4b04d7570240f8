"""Corrupt images: cut short, empty, text named ``.png``, broken after the manifest was written or after the
decoded cache was filled, replaced by another image under the same name — in train, predict and eda.

Each test injects the fault into real files and checks what a user sees: every bad file named in one line
before any training (exit 2, no run folder), or, with ``data.on_bad_image = "skip"``, a run or a prediction
set without them that says which were left out.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from faultkit import one_line, run_folders
from imagegen import make_imagefolder, write_recipe
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.errors import DataError
from toolkit.imaging.cache import DecodedImageCache
from toolkit.store import Run
from toolkit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

# relative path → what is wrong with it; each header still reads except the empty and the text file
BAD = {"red/cut.jpg": "truncated", "red/cut.png": "truncated", "green/empty.png": "file is empty",
       "blue/text.png": "not an image"}


def _noise(size: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def _encoded(pixels: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def spoil(root: Path) -> list[str]:
    """Write (or overwrite) the four files of ``BAD`` under ``root``; their paths, in manifest order."""
    jpeg = _encoded(_noise(48, 1), "JPEG", quality=95)
    png = _encoded(_noise(16, 2), "PNG")
    (root / "red/cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # the header and half of the scan
    (root / "red/cut.png").write_bytes(png[: len(png) // 2])
    (root / "green/empty.png").write_bytes(b"")
    (root / "blue/text.png").write_text("this is not a picture\n")
    return sorted(BAD)


def break_in_place(path: Path) -> None:
    """Scramble a PNG's pixel data in place, same size and header, and put its times back: only the
    change time (which nobody can set) and a full decode tell."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8:start - 4], "big")
    for i in range(start + 8, start + length - 8):
        data[i] ^= 0xFF
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns




# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("how", ["few_uncached", "cache_off", "one_core", "manifest"])
def test_every_unreadable_image_is_named_before_training_when_the_warm_up_is_skipped(tmp_path, capsys,
                                                                                      monkeypatch, how):
    """The warm-up decodes on a pool only for 64+ uncached images and 2+ cores; the rest of the time every
    image must still be decoded once before epoch 1, or a cut-short file fails the run mid-epoch, alone."""
    import toolkit.train.trainer

    per_class = 22 if how == "one_core" else 6  # 66 + 4 images: enough for the pool, were there 2 cores
    root = make_imagefolder(tmp_path / "train", per_class=per_class, size=16)
    data: dict[str, object] = {"cache": how != "cache_off"}
    if how == "one_core":
        monkeypatch.setattr(toolkit.train.trainer, "cores", lambda: 1)
    if how == "manifest":  # good files when the manifest was written, broken afterwards
        make_imagefolder(tmp_path / "more", per_class=1, size=16)
        for rel in BAD:
            shutil.copy(tmp_path / "more" / rel.split("/")[0] / "000.png", root / rel)
        paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
        pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths]}).to_csv(root / "m.csv", index=False)
        data["manifest"] = str(root / "m.csv")
    bad = spoil(root)
    recipe = write_recipe(tmp_path / "r.toml", root, data=data)
    code = cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--folds", "0"])
    err = one_line(capsys, code, "4 unreadable image(s)", *bad, 'data.on_bad_image = "skip"')
    assert "truncated" in err and "file is empty" in err and "not an image" in err
    assert run_folders(tmp_path / "runs") == []  # found before the run folder, so before any training


def test_skip_trains_without_the_unreadable_images_and_records_them(tmp_path):
    root = make_imagefolder(tmp_path / "train", per_class=6, size=16)
    bad = spoil(root)
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", root, data={"on_bad_image": "skip"}))
    run = train(recipe, runs_root=tmp_path / "runs", folds="0", progress=False)
    assert run.status == "finished"
    record = run.info["bad_images"]
    assert record["skipped"] == 4 and [f["path"] for f in record["files"]] == bad
    assert all(f["reason"] for f in record["files"])
    manifest = run.read_manifest()
    assert len(manifest) == 18 and not set(bad) & set(manifest["path"])
    assert set(run.read_oof()["path"]) <= set(manifest["path"])


@pytest.mark.filterwarnings("ignore:class 'blue' has 2 member")  # the split's own note, not the fault
def test_skip_that_would_empty_a_class_is_refused(tmp_path):
    root = make_imagefolder(tmp_path / "train", per_class=6, size=16, classes={"red": (200, 0, 0), "green": (0, 200, 0)})
    (root / "blue").mkdir()
    (root / "blue/empty.png").write_bytes(b"")
    (root / "blue/text.png").write_text("no pixels here")
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", root, data={"on_bad_image": "skip"}))
    with pytest.raises(DataError, match="leaves class.* blue .*without an image"):
        train(recipe, runs_root=tmp_path / "runs", folds="0", progress=False)
    assert run_folders(tmp_path / "runs") == []


def test_an_image_broken_after_the_cache_was_filled_is_found_before_training(tmp_path, capsys):
    """Same size, same modification time: a cache keyed by those two would serve the old pixels and train on."""
    from toolkit.data.preprocessing import make_image_loader

    root = make_imagefolder(tmp_path / "train", per_class=6, size=16)
    recipe = write_recipe(tmp_path / "r.toml", root, data={"cache": True})
    loader = make_image_loader(load_recipe(recipe), ram_mb=0)
    assert isinstance(loader, DecodedImageCache)
    for path in sorted(root.rglob("*.png")):
        loader.load(path)  # the cache holds every image, as after an earlier run
    break_in_place(root / "red/003.png")
    code = cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--folds", "0"])
    one_line(capsys, code, "1 unreadable image(s)", "red/003.png", "corrupt")
    assert run_folders(tmp_path / "runs") == []


@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_a_same_size_replacement_with_its_times_put_back_is_decoded_again(tmp_path, how):
    """``cp -p``, ``rsync -t`` or a tar extraction put a new image where an old one was, with the old one's
    size (uncompressed PNGs of one size) and modification time: both cache tiers must see the new pixels."""
    path = tmp_path / "img.png"
    old, new = _noise(24, 1), _noise(24, 2)
    path.write_bytes(_encoded(old, "PNG", compress_level=0))
    st = path.stat()
    cache = DecodedImageCache(tmp_path / "cache", short_side=64, ram_mb=8)
    np.testing.assert_array_equal(cache.load(path), old)
    replacement = _encoded(new, "PNG", compress_level=0)
    assert len(replacement) == st.st_size
    if how == "replaced":  # a new file moved over the old one: a new inode
        (tmp_path / "img.tmp").write_bytes(replacement)
        os.replace(tmp_path / "img.tmp", path)
    else:  # written over in place: the same inode
        with open(path, "r+b") as fh:
            fh.write(replacement)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    np.testing.assert_array_equal(cache.load(path), new)  # the in-memory tier
    np.testing.assert_array_equal(DecodedImageCache(tmp_path / "cache", short_side=64).load(path), new)  # on disk


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Run:
    """A finished one-fold run (the default data.on_bad_image = "fail")."""
    base = tmp_path_factory.mktemp("corrupt_predict")
    torch.set_num_threads(1)
    root = make_imagefolder(base / "train", per_class=6, size=16)
    recipe = load_recipe(write_recipe(base / "r.toml", root))
    run = train(recipe, runs_root=base / "runs", folds="0", progress=False)
    assert run.status == "finished"
    return run


def _test_folder(folder: Path) -> list[str]:
    """Four good images and the four bad ones in one unlabeled folder; the bad names."""
    for i in range(4):
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(16, 10 + i)).save(folder / f"good{i}.png")
    for sub in ("red", "green", "blue"):
        (folder / sub).mkdir(exist_ok=True)
    return spoil(folder)


def test_predict_names_every_unreadable_image_and_writes_nothing(finished, tmp_path, capsys):
    bad = _test_folder(tmp_path / "test")
    code = cli(["predict", str(finished.path), str(tmp_path / "test"), "-n", "t"])
    one_line(capsys, code, "4 unreadable image(s)", *bad)
    assert not (finished.path / "predictions").exists()


def test_predict_with_skip_leaves_them_out_with_a_warning(finished, tmp_path):
    """A skipped image has no prediction and no submission row (clsctl does not make up an answer); a sample
    submission that asks for one is refused, naming it."""
    from toolkit.predict import predict

    run_dir = tmp_path / finished.path.name
    shutil.copytree(finished.path, run_dir)
    recipe = run_dir / "recipe.toml"
    assert 'on_bad_image = "fail"' in recipe.read_text()
    recipe.write_text(recipe.read_text().replace('on_bad_image = "fail"', 'on_bad_image = "skip"'))
    bad = _test_folder(tmp_path / "test")

    result = predict(Run(run_dir), tmp_path / "test", name="t", progress=False)
    assert sorted(result.paths) == [f"good{i}.png" for i in range(4)]
    assert any("skipped 4 unreadable image(s)" in n and all(b in n for b in bad) for n in result.notes)
    info = json.loads((run_dir / "predictions/t.json").read_text())
    assert [s["path"] for s in info["skipped"]] == bad and all(s["reason"] for s in info["skipped"])
    assert len(pd.read_csv(run_dir / "predictions/t.csv")) == 4

    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": [*result.paths, *bad], "label": "red"}).to_csv(sample, index=False)
    with pytest.raises(DataError, match="sample submission lists 4 image.*cannot be read"):
        predict(Run(run_dir), tmp_path / "test", name="s", sample_submission=sample, progress=False)
    assert not (run_dir / "predictions/s.csv").exists()


# --------------------------------------------------------------------------- eda
def test_eda_lists_every_unreadable_image_and_describes_the_rest(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "train", per_class=4, size=16)
    bad = spoil(root)
    assert cli(["eda", str(root), "--out", str(tmp_path / "eda")]) == 0
    report = json.loads((tmp_path / "eda/eda.json").read_text())
    listed = {u["path"]: u["reason"] for u in report["unreadable"]}
    assert sorted(listed) == bad
    for rel, what in BAD.items():
        assert what in listed[rel], (rel, listed[rel])
    out = capsys.readouterr().out
    assert all(rel in out for rel in bad), out
