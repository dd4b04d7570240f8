"""Bad input from the user: recipes, weight files, checkpoints, saved training state, command options.

Every fault here is a mistake a user can fix, so clsctl answers with one line naming the key or file and
exit 2 (never a "report it" crash, exit 1), before any run folder exists. The last part fuzzes recipes with
hypothesis: whatever keys, values and types a TOML file or a ``--set`` holds, the answer is a recipe or one
such line.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from faultkit import one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli
from toolkit.config import LIMITS, SECTIONS, iter_keys, load_recipe
from toolkit.config.loader import printable
from toolkit.errors import ToolkitError
from toolkit.store import Run
from toolkit.train import Callback, train
from toolkit.train.validate import validate_recipe

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


class _Evil:
    """A pickle that makes a folder when it is unpickled: proof that a file was (not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.mkdir, (str(self.marker),)


def _evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Evil(marker)))



def _no_run(runs: Path) -> bool:
    return not runs.exists() or not any(runs.iterdir())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("input_faults") / "train", per_class=6, size=16)


@pytest.fixture
def recipe(images, tmp_path) -> Path:
    return write_recipe(tmp_path / "r.toml", images, split={"folds": 2})


class _CtrlC(Callback):
    """Ctrl-C at the end of fold 0's second epoch: the state after its first epoch is on disk."""

    def on_epoch_end(self, trainer, state, row, val):  # noqa: ANN001, ANN201
        if (state.fold, state.epoch) == (0, 1):
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def finished(images, tmp_path_factory) -> Run:
    """A finished run of fold 0 of a two-fold split."""
    base = tmp_path_factory.mktemp("finished")
    run = train(load_recipe(write_recipe(base / "r.toml", images, split={"folds": 2})), runs_root=base / "runs",
                name="finished", folds="0", progress=False)
    assert run.status == "finished"
    return run


@pytest.fixture(scope="module")
def interrupted(images, tmp_path_factory) -> Run:
    """A run of fold 0 stopped in its second epoch, with the saved state of the first."""
    base = tmp_path_factory.mktemp("interrupted")
    recipe = load_recipe(write_recipe(base / "r.toml", images, split={"folds": 2}, train={"epochs": 2}))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, runs_root=base / "runs", name="interrupted", folds="0", callbacks=[_CtrlC()], progress=False)
    (path,) = (base / "runs").iterdir()
    run = Run(path)
    assert run.status == "interrupted" and run.fold_state_dir(0) is not None
    return run


def _copy(run: Run, dest: Path) -> Run:
    shutil.copytree(run.path, dest / "runs" / run.path.name)
    return Run(dest / "runs" / run.path.name)


# --------------------------------------------------------------------------- recipe files
def test_a_binary_recipe_file_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_bytes(bytes(range(256)) * 4)
    one_line(capsys, cli(["recipe", "show", str(path)]), str(path), "UTF-8")
    one_line(capsys, cli(["train", "--recipe", str(path), "--runs", str(tmp_path / "runs")]), str(path))
    assert _no_run(tmp_path / "runs")


def test_a_recipe_with_a_utf8_bom_loads(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_bytes("\ufeff# saved by Notepad\n[train]\nepochs = 2\n".encode())
    assert cli(["recipe", "show", str(path)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["train"]["epochs"] == 2


@pytest.mark.parametrize(("extends", "needle"), [("", "`extends` is empty"), (".", "is a folder"),
                                                  ("sub", "is a folder")])
def test_extends_that_is_empty_or_a_folder_says_so(tmp_path, capsys, extends, needle):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "r.toml"
    path.write_text(f'extends = "{extends}"\n')
    err = one_line(capsys, cli(["recipe", "show", str(path)]), str(path), needle)
    assert "does not exist" not in err


def test_a_recipe_that_is_a_folder_says_so(tmp_path, capsys):
    err = one_line(capsys, cli(["recipe", "show", str(tmp_path)]), str(tmp_path), "is a folder")
    assert "does not exist" not in err


# --------------------------------------------------------------------------- values, before any run folder
@pytest.mark.parametrize(("override", "key"), [
    ("data.image_size=0", "data.image_size"),
    ("data.eval_size=0", "data.eval_size"),
    ("aug.crop_pct=0", "aug.crop_pct"),
    ("aug.crop_pct=-0.5", "aug.crop_pct"),
    ("aug.scale=[0.5]", "aug.scale"),
    ("aug.scale=[0.9, 0.2]", "aug.scale"),
    ("model.in_chans=1", "model.in_chans"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=-1e-3", "optim.lr"),
    ("optim.lr=inf", "optim.lr"),
    ("optim.weight_decay=-1", "optim.weight_decay"),
    ("data.std=[0, 0, 0]", "data.std"),
    ("data.mean=[0.5, 0.5]", "data.mean"),
    ('data.normalize="dataset"', "data.stats_file"),
    ("split.folds=1", "split.folds"),
    ("train.seed=-1", "train.seed"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing"),
])
def test_a_bad_value_fails_in_one_line_before_any_run_folder(recipe, tmp_path, capsys, override, key):
    runs = tmp_path / "runs"
    code = cli(["train", "--recipe", str(recipe), "--set", override, "--folds", "0", "--runs", str(runs)])
    err = one_line(capsys, code, key)
    assert "learning rate" not in err or key == "optim.lr"  # std = 0 once blamed the learning rate
    assert _no_run(runs)


def test_value_errors_are_found_without_torch(recipe, tmp_path):
    """Config errors are found before the heavy libraries load: the answer comes in the time it takes to read."""
    script = ("import sys\nfrom toolkit.cli.main import run\n"
              f"codes = [run(['train', '--recipe', {str(recipe)!r}, '--set', s, '--runs', {str(tmp_path / 'runs')!r}])"
              " for s in ['optim.lr=-1', 'aug.crop_pct=0', 'model.in_chans=1', 'data.std=[0, 0, 0]']]\n"
              "print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[2, 2, 2, 2] False", out.stderr
    assert _no_run(tmp_path / "runs")


def test_every_range_names_a_recipe_key_and_is_listed():
    keys = {key: meaning for key, _, _, meaning in iter_keys()}
    for key, limit in LIMITS.items():
        assert key in keys, f"LIMITS names `{key}`, which is no recipe key"
        assert limit.rule() in keys[key] or f"{limit.length} values" in keys[key], key


def test_data_std_of_zero_is_refused_with_mean_set_too(recipe, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = cli(["train", "--recipe", str(recipe), "--set", "data.std=[0, 0, 0]", "--set", "data.mean=[0.5, 0.5, 0.5]",
                "--folds", "0", "--runs", str(runs)])
    err = one_line(capsys, code, "data.std")
    assert "optim.lr" not in err
    assert _no_run(runs)


@pytest.mark.parametrize("stats", ["missing", "not json", '{"stats": {"mean": [0.5, 0.5, 0.5]}}',
                                   '{"stats": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}}'])
def test_dataset_statistics_that_cannot_be_used_fail_before_any_run_folder(recipe, tmp_path, capsys, stats):
    runs, stats_file = tmp_path / "runs", tmp_path / "eda.json"
    if stats != "missing":
        stats_file.write_text(stats)
    code = cli(["train", "--recipe", str(recipe), "--set", 'data.normalize="dataset"',
                "--set", f'data.stats_file="{stats_file}"', "--folds", "0", "--runs", str(runs)])
    one_line(capsys, code, str(stats_file))
    assert _no_run(runs)


# --------------------------------------------------------------------------- weight files and checkpoints
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("content", ["text", "empty", "pickle"])
def test_pretrained_file_that_holds_no_weights_fails_before_any_run_folder(recipe, tmp_path, capsys, suffix, content):
    weights, marker = tmp_path / f"w{suffix}", tmp_path / "executed"
    if content == "pickle":
        _evil_pickle(weights, marker)
    else:
        weights.write_text("these are not weights\n" if content == "text" else "")
    runs = tmp_path / "runs"
    code = cli(["train", "--recipe", str(recipe), "--set", "model.pretrained=true", "--set",
                f'model.pretrained_file="{weights}"', "--folds", "0", "--runs", str(runs)])
    one_line(capsys, code, "model.pretrained_file", str(weights))
    assert _no_run(runs) and not marker.exists()


@pytest.mark.parametrize("content", ["text", "empty", "pickle"])
def test_a_checkpoint_that_is_not_safetensors_isone_line(finished, images, tmp_path, capsys, content):
    run = _copy(finished, tmp_path)
    checkpoint, marker = run.checkpoint_path(0), tmp_path / "executed"
    if content == "pickle":
        _evil_pickle(checkpoint, marker)
    else:
        checkpoint.write_text("not weights" if content == "text" else "")
    code = cli(["predict", str(run.path), str(images), "--workers", "0"])
    one_line(capsys, code, "folds/0/model.safetensors")
    assert not marker.exists() and not (run.path / "predictions").exists()


@pytest.mark.parametrize("text", [
    "{", "[]", "null", '"model"', "\x00\x01binary",
    '{"arch": 3, "heads": "x", "classes": 5, "mean": 1, "std": 1, "image_size": "a"}',
    '{"arch": "test_efficientnet_gn", "heads": ["label"], "classes": ["blue", "green", "red"], "mean": [0.5],'
    ' "std": [0.5], "image_size": 32, "preprocessing": 7}',
    '{"arch": "test_efficientnet_gn", "heads": ["label"], "classes": {"other": ["a"]}, "mean": [0.5, 0.5, 0.5],'
    ' "std": [0.5, 0.5, 0.5], "image_size": 32}',
])
def test_a_malformed_model_json_isone_line(finished, images, tmp_path, capsys, text):
    run = _copy(finished, tmp_path)
    run.checkpoint_path(0).with_suffix(".json").write_text(text)
    code = cli(["predict", str(run.path), str(images), "--workers", "0"])
    one_line(capsys, code, "model.json")
    assert not (run.path / "predictions").exists()


# --------------------------------------------------------------------------- resume
def test_a_pickled_optimizer_state_is_refused_inone_line(interrupted, tmp_path, capsys):
    run, marker = _copy(interrupted, tmp_path), tmp_path / "executed"
    _evil_pickle(run.fold_state_dir(0) / "optimizer.bin", marker)
    code = cli(["train", "--resume", str(run.path)])
    one_line(capsys, code, "optimizer.bin", "folds/0")
    assert not marker.exists()
    assert Run(run.path).status == "interrupted"  # refused before the run was marked running


def test_a_tampered_random_state_is_skipped_with_a_warning(interrupted, tmp_path, capsys):
    run, marker = _copy(interrupted, tmp_path), tmp_path / "executed"
    _evil_pickle(run.fold_state_dir(0) / "random_states_0.pkl", marker)
    assert cli(["train", "--resume", str(run.path)]) == 0
    out = capsys.readouterr()
    warning = [line for line in (out.out + out.err).splitlines() if "random_states_0.pkl" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "folds/0" in warning[0], out
    assert not marker.exists()
    assert Run(run.path).status == "finished"


def test_resuming_a_split_run_says_it_is_a_split_run(images, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(["split", str(images), "--folds", "2", "--runs", str(runs)]) == 0
    capsys.readouterr()
    (path,) = runs.iterdir()
    err = one_line(capsys, cli(["train", "--resume", path.name, "--runs", str(runs)]), "split", "data.manifest")
    assert "no recipe.toml" not in err


# --------------------------------------------------------------------------- clsctl aug preview
@pytest.mark.parametrize(("args", "needle"), [
    (["--n", "-5"], "--n"), (["--n", "0"], "--n"), (["--views", "0"], "--views"),
    (["--set", "data.image_size=0"], "data.image_size"), (["--set", "aug.crop_pct=0", "--views", "2"], "aug.crop_pct"),
    (["--set", "aug.scale=[0.5]", "--set", "aug.resize=random_resized_crop"], "aug.scale"),
])
def test_aug_preview_refuses_bad_options_inone_line(images, tmp_path, capsys, args, needle):
    out = tmp_path / "preview.png"
    one_line(capsys, cli(["aug", "preview", str(images), "-o", str(out), *args]), needle)
    assert not out.exists()


# --------------------------------------------------------------------------- fuzzing (hypothesis)
_FIELDS: dict[str, list[str]] = {}
for _key, *_ in iter_keys():
    _section, _, _rest = _key.partition(".")
    _FIELDS.setdefault(_section if _rest else "", []).append(_rest.split(".")[0].split("[")[0] if _rest else _key)

_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_words = st.sampled_from(["none", "null", "", "imagenet", "dataset", "ce", "sum", "adamw", "cosine", "hflip",
                          "scale:1.1", "random_resized_crop", "builtin:digits", "test_efficientnet_gn", "label",
                          "~nobody_here/x", "a\x00b", "../..", "/", "r.toml"])
_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 300)
            | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 2) | _words
            | st.text(max_size=16) | st.dates())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_names, inner, max_size=3),
                       max_leaves=8)


@st.composite
def _entries(draw) -> list[tuple[str, str, object]]:
    """One to three ``(section, key, value)``: real and misspelt sections and keys, any TOML value."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*SECTIONS, "", "", "trian", "Data"]))
        known = _FIELDS.get(section, [])
        key = draw(st.sampled_from(known) | _names if known else _names)
        out.append((section, key, draw(_values)))
    return out


def _named(line: str, paths: list[str]) -> bool:
    """Whether ``line`` names one of the key paths (or the section or table above one)."""
    prefixes = {printable(".".join(p.split(".")[:i])) for p in paths for i in range(1, p.count(".") + 2)}
    return any(re.search(r"(?<![\w.])" + re.escape(p) + r"(?!\w)", line) for p in prefixes)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_entries())
def test_fuzzed_recipe_files_load_and_validate_or_fail_in_one_line_naming_the_key(fuzz_dir, entries):
    doc: dict = {}
    for section, key, value in entries:
        table = doc.setdefault(section, {}) if section else doc
        if isinstance(table, dict):
            table[key] = value
    path = fuzz_dir / "r.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    code, out, err = _cli(["recipe", "show", str(path)])
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], err
        assert _named(lines[0], [f"{s}.{k}" if s else k for s, k, _ in entries]), (lines[0], doc)
    else:
        shown = fuzz_dir / "shown.toml"
        shown.write_text(out, encoding="utf-8")
        recipe = load_recipe(path)
        assert load_recipe(shown) == recipe  # what show prints is the same recipe
        try:  # and every name in it resolves through timm and the registries, or one line says which does not
            validate_recipe(recipe)
        except ToolkitError as exc:
            assert exc.exit_code == 2 and len(str(exc).splitlines()) == 1, str(exc)
            assert _named(str(exc), [f"{s}.{k}" if s else k for s, k, _ in entries]), (str(exc), doc)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(key=st.sampled_from([k for k, *_ in iter_keys()]) | st.text(max_size=20),
       value=st.text(max_size=20) | _scalars.map(lambda v: tomli_w.dumps({"v": v})[4:].strip()))
def test_fuzzed_set_overrides_apply_or_fail_in_one_line_naming_the_key(key, value):
    code, _, err = _cli(["recipe", "show", f"--set={key}={value}"])
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], err
        assert printable(key.strip()) in lines[0] or "--set" in lines[0], lines[0]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(data=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_fuzzed_bytes_as_a_recipe_fail_in_one_line_naming_the_file(fuzz_dir, data):
    path = fuzz_dir / "bytes.toml"
    path.write_bytes(data)
    code, _, err = _cli(["recipe", "show", str(path)])
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], err


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path, capsys):
    assert cli(["recipe", "show", str(path)]) == 0
    assert tomllib.loads(capsys.readouterr().out)  # the resolved recipe is valid TOML
