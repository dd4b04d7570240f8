"""Hostile tables and a missing network: malformed manifests and sample submissions, a hashes file of another
data set, and pretrained weights with no way to get them.

Each refused command must say what is wrong in one line (exit 2 for input, 1 for the network) and write
nothing: no run folder, no prediction set.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from faultkit import one_line, run_folders
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.config.schema import DataConfig
from toolkit.data.sources import load_manifest
from toolkit.store import Run
from toolkit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("blue", "green", "red")




@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("manifest_faults") / "train", per_class=6, size=16)


ROWS = [f"{c}/{i:03d}.png,{c}" for c in CLASSES for i in range(6)]  # the `images` fixture, as a CSV body


def _manifests() -> dict[str, tuple[bytes, str]]:
    """Case name → (file content, what the one line must say)."""
    good = "path,label\n" + "\n".join(ROWS) + "\n"
    return {
        "no_path_column": (good.replace("path,label", "file,label").encode(), "has no path column 'path'"),
        "no_label_column": (("path\n" + "\n".join(r.split(",")[0] for r in ROWS)).encode(),
                            "has no label column 'label'"),
        "empty_file": (b"", "is empty"),
        "blank_lines": (b"\n\n  \n", "is empty"),
        "header_only": (b"path,label\n", "has a header row but no image rows"),
        "latin1": ((good + "red/005.png,ros\xe9\n").encode("latin-1"), "is not UTF-8 text (line 20"),
        "utf16": (good.encode("utf-16"), "is UTF-16 text, not UTF-8"),
        "utf16_no_bom": (good.encode("utf-16-le"), "holds NUL bytes"),
        "binary": (bytes(range(1, 256)) * 4, "cannot read manifest"),
        "duplicate_paths": ((good + "red/000.png,red\n").encode(), "1 duplicate path(s): red/000.png (rows 13 and 19)"),
        "absolute_outside": ((good + "/etc/passwd,red\n").encode(), "point outside the image root"),
        "dot_dot": ((good + "../../etc/passwd,red\n").encode(), "point outside the image root"),
        "missing_file": ((good + "red/nope.png,red\n").encode(), "not found under"),
    }


MANIFEST_CASES = ["no_path_column", "no_label_column", "empty_file", "blank_lines", "header_only", "latin1", "utf16",
                  "utf16_no_bom", "binary", "duplicate_paths", "absolute_outside", "dot_dot", "missing_file"]


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_a_malformed_manifest_is_one_line_and_leaves_no_run(images, tmp_path, capsys, case):
    content, needle = _manifests()[case]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    recipe = write_recipe(tmp_path / "r.toml", images, data={"manifest": str(manifest), "root": str(images)})
    code = cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--folds", "0"])
    one_line(capsys, code, str(manifest), needle)
    assert run_folders(tmp_path / "runs") == []


@pytest.mark.parametrize("case", ["empty_file", "header_only", "latin1", "utf16", "binary", "duplicate_paths"])
def test_split_of_a_malformed_manifest_is_one_line_and_records_nothing(images, tmp_path, capsys, case):
    content, needle = _manifests()[case]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    code = cli(["split", str(manifest), "--root", str(images), "--runs", str(tmp_path / "runs")])
    one_line(capsys, code, str(manifest), needle)
    assert run_folders(tmp_path / "runs") == []


def test_manifests_that_are_fine_load(images, tmp_path):
    """A UTF-8 BOM (Excel's 'CSV UTF-8'), absolute paths inside the root, Windows separators."""
    rows = ROWS
    manifest = tmp_path / "m.csv"
    lines = [f"{images / r.split(',')[0]},{r.split(',')[1]}" if i % 3 == 0 else r.replace("/", "\\") if i % 3 == 1
             else r for i, r in enumerate(rows)]
    manifest.write_bytes(("path,label\n" + "\n".join(lines) + "\n").encode("utf-8-sig"))
    df = load_manifest(DataConfig(manifest=str(manifest), root=str(images)))
    assert df["path"].tolist() == [r.split(",")[0] for r in rows]


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def finished(images, tmp_path_factory) -> Run:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("manifest_run")
    recipe = load_recipe(write_recipe(base / "r.toml", images))
    run = train(recipe, runs_root=base / "runs", folds="0", progress=False)
    assert run.status == "finished"
    return run


def test_predict_with_a_label_the_run_does_not_know_isone_line(finished, images, tmp_path, capsys):
    manifest = tmp_path / "test.csv"
    manifest.write_text("path,label\nred/000.png,red\nred/001.png,purple\nblue/000.png,blue\n")
    code = cli(["predict", str(finished.path), str(manifest), "--root", str(images), "-n", "t"])
    one_line(capsys, code, str(manifest), "class name(s) the run does not know: purple", "blue, green, red")
    assert not (finished.path / "predictions").exists()


def _samples(paths: list[str]) -> dict[str, tuple[bytes, str]]:
    ids = "\n".join(paths)
    return {
        "other_ids": (("id,label\n" + "\n".join(f"x{i}" for i in range(len(paths))) + "\n").encode(),
                      f"{len(paths)} id(s) have no prediction"),
        "fewer_ids": (("id,label\n" + "\n".join(paths[:4]) + "\n").encode(), "2 predicted image(s) are not in it"),
        "more_ids": (("id,label\n" + ids + "\nred/999.png\n").encode(), "1 id(s) have no prediction: row 8 (red/999.png)"),
        "duplicate_ids": (("id,label\n" + ids + "\n" + paths[0] + "\n").encode(), "appear more than once"),
        "one_column": (("id\n" + ids + "\n").encode(), "has 1 column(s)"),
        "unknown_class_column": (("id,purple,red\n" + "\n".join(f"{p},0,1" for p in paths) + "\n").encode(),
                                 "header names class(es) the predictions do not have: purple"),
        "empty_file": (b"", "is empty"),
        "latin1": (("id,label\n" + ids + "\ncaf\xe9.png\n").encode("latin-1"), "is not UTF-8 text (line 8"),
        "utf16": (("id,label\n" + ids + "\n").encode("utf-16"), "is UTF-16 text"),
    }


@pytest.mark.parametrize("case", ["other_ids", "fewer_ids", "more_ids", "duplicate_ids", "one_column",
                                  "unknown_class_column", "empty_file", "latin1", "utf16"])
def test_a_sample_submission_that_does_not_fit_is_one_line_and_nothing_is_written(finished, images, tmp_path,
                                                                                  capsys, case):
    paths = [f"{c}/{i:03d}.png" for c in CLASSES for i in range(2)]
    manifest = tmp_path / "test.csv"
    manifest.write_text("path\n" + "\n".join(paths) + "\n")
    content, needle = _samples(paths)[case]
    sample = tmp_path / "sample.csv"
    sample.write_bytes(content)
    code = cli(["predict", str(finished.path), str(manifest), "--root", str(images), "-n", "s",
                "--sample-submission", str(sample)])
    one_line(capsys, code, str(sample), needle)
    assert not (finished.path / "predictions").exists()


# --------------------------------------------------------------------------- split --hashes
def _hash_table(root: Path, out: Path) -> Path:
    from toolkit.imaging.hashing import image_hashes

    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    image_hashes(paths, root, workers=1).to_parquet(out, index=False)
    return out


def test_split_hashes_of_another_data_set_say_they_cover_none(images, tmp_path, capsys):
    """The audit used to match no pair, report `audit: ok` and exit 0, having checked nothing."""
    other = make_imagefolder(tmp_path / "other", per_class=3, size=16, classes={"cat": (90, 90, 90), "dog": (9, 9, 9)})
    hashes = _hash_table(other, tmp_path / "hashes.parquet")
    code = cli(["split", str(images), "--hashes", str(hashes), "--runs", str(tmp_path / "runs")])
    one_line(capsys, code, str(hashes), "covers none of the manifest's 18 image(s)", "--dedup")
    assert run_folders(tmp_path / "runs") == []

    pairs = tmp_path / "pairs.csv"  # a pair table of the other data set
    pd.DataFrame({"a": ["cat/000.png"], "b": ["cat/001.png"], "kind": ["exact"], "distance": [0]}).to_csv(pairs, index=False)
    code = cli(["split", str(images), "--hashes", str(pairs), "--runs", str(tmp_path / "runs")])
    one_line(capsys, code, str(pairs), "none of its 1 duplicate pair(s) names an image of the manifest")


def test_split_hashes_that_miss_some_images_say_how_many(images, tmp_path, capsys):
    hashes = _hash_table(images, tmp_path / "all.parquet")
    table = pd.read_parquet(hashes)
    table[~table["path"].str.startswith("red/00")].to_parquet(tmp_path / "some.parquet", index=False)
    code = cli(["split", str(images), "--hashes", str(tmp_path / "some.parquet"), "--runs", str(tmp_path / "runs")])
    one_line(capsys, code, "covers 12 of the manifest's 18 image(s); 6 have no hash (red/000.png")
    assert run_folders(tmp_path / "runs") == []
    # an eda run of the same data (here its table) is accepted, and the audit reports on it
    assert cli(["split", str(images), "--hashes", str(hashes), "--runs", str(tmp_path / "runs")]) == 0
    assert "audit: 0 of 0 duplicate pair(s)" in capsys.readouterr().out


# --------------------------------------------------------------------------- offline
@pytest.fixture
def silent_hub():
    """A server that accepts connections and never answers (a dead proxy, a captive portal)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("network", ["hf_hub_offline", "no_name_lookup", "refused", "silent"])
def test_pretrained_weights_with_no_network_fail_in_seconds_naming_the_fix(images, tmp_path, capsys, monkeypatch,
                                                                            silent_hub, network):
    import huggingface_hub.constants
    import timm  # noqa: F401 - loaded before the clock starts: the time is the check's, not the imports'

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    if network == "hf_hub_offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        endpoint = {"no_name_lookup": "http://hub.invalid", "refused": f"http://127.0.0.1:{port}",
                    "silent": silent_hub}[network]
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)  # read once, when it was imported
    recipe = write_recipe(tmp_path / "r.toml", images, model={"name": "resnet18", "pretrained": True})
    start = time.perf_counter()
    code = cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs")])
    elapsed = time.perf_counter() - start
    one_line(capsys, code, "resnet18", 'model.pretrained_file = "path/to/weights.safetensors"',
              "model.pretrained = false", exit_code=1)
    assert elapsed < 5, elapsed
    assert run_folders(tmp_path / "runs") == []
