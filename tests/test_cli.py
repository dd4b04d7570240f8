"""The CLI shell: version, recipe commands, one-line errors with the documented exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.cli.main import run

REPO = Path(__file__).resolve().parents[1]


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "clsctl 0.1.0"


def test_recipe_show_resolves_and_round_trips(tmp_path, capsys):
    assert run(["recipe", "show", str(REPO / "recipes/quickstart.toml"), "--set", "train.epochs=7"]) == 0
    text = capsys.readouterr().out
    assert "epochs = 7" in text and 'root = "builtin:digits"' in text
    out = tmp_path / "resolved.toml"
    out.write_text(text)
    from toolkit.config import load_recipe

    assert load_recipe(out) == load_recipe(REPO / "recipes/quickstart.toml", ["train.epochs=7"])


def test_recipe_keys_lists_sections(capsys):
    assert run(["recipe", "keys", "train"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs" in out and "integer" in out and "model.name" not in out
    assert run(["recipe", "keys", "trian"]) == 2


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["recipe", "show", "missing.toml"], 2, "does not exist"),
        (["recipe", "show", "--set", "train.epoch=3"], 2, "did you mean `train.epochs`"),
        (["recipe", "show", "--set", 'train.epochs="x"'], 2, "must be an integer"),
        (["train"], 2, "no recipe given"),
        (["nonsense"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_exit_code(argv, code, needle, capsys):
    assert run(argv) == code
    err = capsys.readouterr().err
    assert needle in err
    if code == 2 and argv[0] != "nonsense":
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0]


def test_corrupt_images_are_listed_before_any_run(tmp_path):
    bad = tmp_path / "imgs"
    for cls in ("a", "b"):
        (bad / cls).mkdir(parents=True)
        for i in range(4):
            (bad / cls / f"{i}.png").write_bytes(b"not a png")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nroot = "{bad}"\nimage_size = 16\nnum_workers = 0\n[model]\nname = "test_efficientnet_gn"\n'
                      'pretrained = false\n[split]\nfolds = 2\n[train]\nepochs = 1\nbatch_size = 2\n')
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "CLSCTL_RUNS": str(tmp_path / "runs"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "toolkit", "train", "--recipe", str(recipe), "--folds", "0"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: 8 unreadable image(s): a/0.png: not an image") and "b/3.png" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    debug = subprocess.run([sys.executable, "-m", "toolkit", "train", "--recipe", str(recipe), "--folds", "0"],
                           capture_output=True, text=True, env={**env, "CLSCTL_DEBUG": "1"})
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("per_class", [4, 40])
def test_truncated_image_inside_a_loader_worker_is_one_line(tmp_path, per_class):
    """A file that passes the header check but whose pixels are cut short fails with its name before any
    training: decoded in the training process (few images) or by the warm-up's pool (80 images)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from imagegen import make_imagefolder

    root = make_imagefolder(tmp_path / "imgs", per_class=per_class, size=64)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "red" / "cut.jpg")
    data = (root / "red" / "cut.jpg").read_bytes()
    (root / "red" / "cut.jpg").write_bytes(data[: len(data) // 2])
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nroot = "{root}"\nimage_size = 16\nnum_workers = 1\n[model]\nname = "test_efficientnet_gn"\n'
                      'pretrained = false\n[split]\nfolds = 2\n[train]\nepochs = 1\nbatch_size = 4\n')
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "CLSCTL_RUNS": str(tmp_path / "runs"), "CLSCTL_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "toolkit", "train", "--recipe", str(recipe)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cut.jpg" in lines[0] and "truncated" in lines[0], out.stderr
    assert "1 unreadable image(s)" in lines[0] and not (tmp_path / "runs").exists()
    assert "Traceback" not in out.stderr


def test_calibration_alone_implies_calibrate():
    """`--calibration vector` without `--calibrate` calibrates with vector scaling instead of being ignored."""
    from toolkit.cli.options import calibration_method

    assert calibration_method(False, None) is None
    assert calibration_method(True, None) == "temperature"
    assert calibration_method(False, "vector") == "vector"
    assert calibration_method(True, "vector") == "vector"
