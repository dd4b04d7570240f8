"""Crashes, signals, full disks, non-finite losses, tiny data and concurrent readers in training.

Kills happen in a child process (``crashpoints.py`` plants them); resumes and the reference run run in
this process. A resumed run must end exactly as the uninterrupted deterministic CPU run does, with the
folds it was started with, and every file of a run folder must parse at every moment.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli
from toolkit.store import Run
from toolkit.train import Callback

REPO = Path(__file__).resolve().parents[2]
CRASHPOINTS = Path(__file__).with_name("crashpoints.py")
VOLATILE = ("seconds", "train_img_s", "train_s", "data_wait_s")
FOLDS = "0,2"  # of a three-fold split: a resumed run must end with exactly these folds


@pytest.fixture(scope="module")
def recipe(images, tmp_path_factory) -> Path:
    """24 images, three folds, two epochs of four batches: every kill point is reached in seconds."""
    return write_recipe(tmp_path_factory.mktemp("recipe") / "r.toml", images, split={"folds": 3},
                        train={"epochs": 2, "batch_size": 4})


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end as."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("reference")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CLSCTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
            assert cli(_train_args(recipe, runs)) == 0
    finally:
        torch.set_num_threads(before)
    return _only_run(runs)


# --------------------------------------------------------------------------- helpers
def _train_args(recipe: Path, runs: Path, *extra: str) -> list[str]:
    return ["train", "--recipe", str(recipe), "--runs", str(runs), "--folds", FOLDS, "-n", "crash", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _spawn(plan: list[dict[str, Any]], *args: str | Path) -> subprocess.Popen:
    """``clsctl ARGS`` in a child process with the faults of ``plan`` planted (see crashpoints.py)."""
    return subprocess.Popen([sys.executable, str(CRASHPOINTS), json.dumps(plan), *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if (p / "run.json").is_file()) if runs.is_dir() else []


def _only_run(runs: Path) -> Path:
    found = _run_dirs(runs)
    assert len(found) == 1, found
    return found[0]


def _parse(path: Path) -> None:
    """Read ``path`` the way its reader does; raise if it is not whole."""
    suffix = path.suffix
    if suffix == ".json":
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    elif suffix == ".csv":
        text = path.read_bytes().decode("utf-8")
        assert text.endswith("\n"), "the last line is torn"
        widths = {len(row) for row in csv.reader(io.StringIO(text))}
        assert len(widths) == 1, f"rows of {sorted(widths)} cells"
    elif suffix == ".parquet":
        pd.read_parquet(path)
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        load_file(str(path))
    elif suffix == ".toml":
        tomllib.loads(path.read_text(encoding="utf-8"))
    elif suffix in (".bin", ".pkl"):  # torch.save's zip archives (Accelerate's optimizer and RNG state)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
    else:
        raise AssertionError("no reader for this kind of file")


def _unreadable(run_dir: Path) -> list[str]:
    """Files of ``run_dir`` that do not parse. Hidden files (the lock, atomic writes' temporary files) and
    the staging folder ``state.tmp/`` are left out: no reader looks at them."""
    problems = []
    for folder, dirs, files in os.walk(run_dir):
        dirs[:] = [d for d in dirs if d != "state.tmp"]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder, name)
            try:
                _parse(path)
            except FileNotFoundError:
                continue  # removed while we looked (a finished fold's resume state)
            except Exception as exc:  # noqa: BLE001 - every way of not parsing is a finding
                problems.append(f"{path.relative_to(run_dir)}: {type(exc).__name__}: {exc}")
    return problems


def _watch(child: subprocess.Popen, runs: Path, timeout: float = 300) -> tuple[str, str]:
    """Parse every file of the runs under ``runs`` over and over while ``child`` trains; return its output."""
    problems: list[str] = []
    statuses: set[str] = set()
    polls = 0
    deadline = time.monotonic() + timeout
    while child.poll() is None:
        assert time.monotonic() < deadline, "the child never reached its kill point"
        for run_dir in _run_dirs(runs):
            problems += _unreadable(run_dir)
            statuses.add(json.loads((run_dir / "run.json").read_text())["status"])
        polls += 1
        time.sleep(0.01)
    out, err = child.communicate()
    assert not problems, problems[:5]
    assert statuses <= {"running"}, statuses
    assert polls > 3 or child.returncode != -signal.SIGKILL, "nothing was watched"
    return out, err


def _assert_killed(child: subprocess.Popen, runs: Path) -> Path:
    """The child died by SIGKILL and left a run whose files parse, marked running by a process that is gone."""
    out, err = child.communicate() if child.returncode is None else ("", "")
    assert child.returncode == -signal.SIGKILL, (child.returncode, out, err)
    run_dir = _only_run(runs)
    assert not _unreadable(run_dir), _unreadable(run_dir)
    run = Run(run_dir)
    assert run.status == "running" and run.stale  # what `clsctl report` shows as "stopped"
    return run_dir


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock")


def _metrics(run_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "metrics.csv")
    return df.drop(columns=[c for c in VOLATILE if c in df.columns]).sort_values(["fold", "epoch"]).reset_index(drop=True)


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    """``run_dir`` finished exactly as ``reference`` did: same folds, files, metrics, weights and OOF."""
    info = _json(run_dir / "run.json")
    assert (info["status"], info["error"], info["folds"]) == ("finished", None, [0, 2]), info
    assert _files(run_dir) == _files(reference)  # no fold more or less, no state or temporary file left
    pd.testing.assert_frame_equal(_metrics(run_dir), _metrics(reference))
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "oof.parquet"), pd.read_parquet(reference / "oof.parquet"))
    assert _json(run_dir / "summary.json") == _json(reference / "summary.json")
    for k in (0, 2):
        fold, ref = run_dir / f"folds/{k}", reference / f"folds/{k}"
        assert (fold / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes(), k
        for name in ("done.json", "best.json", "model.json"):
            assert _json(fold / name) == _json(ref / name), (k, name)


class _Once(Callback):
    """Runs ``act(trainer, state)`` once, after batch ``step`` (from 1) of ``epoch`` of ``fold``."""

    def __init__(self, fold: int, epoch: int, step: int, act) -> None:  # noqa: ANN001
        self.at, self.act, self.done = (fold, epoch, step), act, False

    def on_step_end(self, trainer, state, updated):
        if not self.done and (state.fold, state.epoch + 1, state.step) == self.at:
            self.done = True
            self.act(trainer, state)


def _plant(monkeypatch, *callbacks: Callback) -> None:
    """Add ``callbacks`` to every training this test runs through the CLI."""
    import toolkit.train.trainer as trainer_mod

    real = trainer_mod.default_callbacks
    monkeypatch.setattr(trainer_mod, "default_callbacks", lambda *a, **k: [*real(*a, **k), *callbacks])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- 1. kill -9, then --resume
def test_kill_9_mid_epoch_then_resume_ends_as_an_uninterrupted_run(recipe, reference, tmp_path):
    """Killed in fold 2's second epoch (fold 0 finished); every file parsed while it trained."""
    runs = tmp_path / "runs"
    child = _spawn([{"at": "step", "fold": 2, "epoch": 1, "step": 2}], *_train_args(recipe, runs))
    _watch(child, runs)
    run_dir = _assert_killed(child, runs)
    assert (run_dir / "folds/0/done.json").is_file() and not (run_dir / "folds/2/done.json").exists()

    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0
    _assert_same_run(run_dir, reference)


KILL_POINTS = {
    "fold 0, first batch": [{"at": "step", "fold": 0, "epoch": 0, "step": 1}],
    "half-written checkpoint": [{"at": "write", "path": r"/folds/0/model\.safetensors$"}],
    "half-written optimizer state": [{"at": "torch_save", "path": r"/folds/0/state\.tmp/optimizer\.bin$", "nth": 2}],
    "resume state half swapped": [{"at": "rename", "src": "state", "dst": "state.old"}],
    "fold 0 done, its state not yet removed": [{"at": "fold_end", "fold": 0}],
    "between folds": [{"at": "fold_start", "fold": 2}],
    "half-written fold OOF": [{"at": "write", "path": r"/folds/2/oof\.parquet$"}],
    "half-written run OOF": [{"at": "write", "path": r"-crash/oof\.parquet$"}],
    "half-written summary": [{"at": "write", "path": r"-crash/summary\.json$"}],
    "half-written metrics rewrite": [{"at": "write", "path": r"-crash/metrics\.csv$"}],
    "run.json being marked finished": [{"at": "finish"}],
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_resume_ends_as_an_uninterrupted_run(point, recipe, reference, tmp_path):
    runs = tmp_path / "runs"
    plan = KILL_POINTS[point]
    if point == "half-written metrics rewrite":
        # metrics.csv is rewritten whole only when a fold resumes: kill once mid-fold, then in that rewrite.
        _assert_killed(_spawn([{"at": "step", "fold": 0, "epoch": 1, "step": 1}], *_train_args(recipe, runs)), runs)
        child = _spawn(plan, "train", "--resume", "crash", "--runs", runs)
    else:
        child = _spawn(plan, *_train_args(recipe, runs))
    run_dir = _assert_killed(child, runs)
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0
    _assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_killed_twice_then_resumed_ends_as_an_uninterrupted_run(recipe, reference, tmp_path):
    runs = tmp_path / "runs"
    _assert_killed(_spawn([{"at": "step", "fold": 0, "epoch": 1, "step": 3}], *_train_args(recipe, runs)), runs)
    child = _spawn([{"at": "step", "fold": 2, "epoch": 0, "step": 2}], "train", "--resume", "crash", "--runs", runs)
    _watch(child, runs)
    run_dir = _assert_killed(child, runs)
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0
    _assert_same_run(run_dir, reference)


# --------------------------------------------------------------------------- 2. SIGINT / SIGTERM
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_marks_the_run_interrupted_keeps_its_state_and_names_the_resume(
        signum, code, recipe, reference, tmp_path, monkeypatch, capsys):
    _plant(monkeypatch, _Once(0, 1, 2, lambda trainer, state: os.kill(os.getpid(), signum)))
    runs = tmp_path / "runs"
    assert cli(_train_args(recipe, runs)) == code
    run_dir = _only_run(runs)
    line = _one_error_line(capsys.readouterr().err)
    assert f"clsctl train --resume {run_dir.name} --runs {runs}" in line, line
    info = _json(run_dir / "run.json")
    assert info["status"] == "interrupted" and signal.Signals(signum).name in info["error"]
    assert _json(run_dir / "folds/0/state/progress.json")["progress"]["epoch"] == 0  # the last whole epoch
    assert not _unreadable(run_dir)

    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0
    _assert_same_run(run_dir, reference)


@pytest.mark.parametrize("where", ["on the way out", pytest.param("in the trainer", marks=pytest.mark.slow)])
def test_a_second_ctrl_c_exits_at_once(where, recipe, tmp_path):
    """After the first Ctrl-C the way out is slow and swallows KeyboardInterrupt (as a DataLoader worker join
    can: "on the way out" is an object freed with the traceback, "in the trainer" a cleanup in the loop)."""
    runs = tmp_path / "runs"
    cleanup = "del" if where == "on the way out" else "finally"
    child = _spawn([{"at": "step", "fold": 0, "epoch": 0, "step": 1, "do": "pause", "slow_cleanup": cleanup}],
                   *_train_args(recipe, runs))
    try:
        assert child.stdout.readline().strip() == "PAUSED", child.stderr.read()
        child.send_signal(signal.SIGINT)
        while (line := child.stdout.readline()) and line.strip() != "CLEANING":
            pass
        assert line.strip() == "CLEANING"
        child.send_signal(signal.SIGINT)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
            pytest.fail("a second Ctrl-C did not stop the process")
    assert child.returncode in (-signal.SIGINT, 130)
    run_dir = _only_run(runs)
    assert _json(run_dir / "run.json")["status"] == "interrupted"
    assert not _unreadable(run_dir)
    if where == "on the way out":
        assert f"clsctl train --resume {run_dir.name}" in child.stderr.read()


# --------------------------------------------------------------------------- 3. disk full
def _disk_full(monkeypatch, where: str = "") -> None:
    """From now on the disk takes nothing more: every atomic write whose path contains ``where`` fails with
    ENOSPC at its first write(), and so (with no ``where``) does every CSV append."""
    import contextlib

    import toolkit.store.atomic as atomic

    real_writer = atomic.atomic_writer

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Full:
        def __init__(self, handle) -> None:  # noqa: ANN001
            self.handle, self.write = handle, refuse

        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(self.handle, name)

    @contextlib.contextmanager
    def writer(path, mode="wb", **kwargs):  # noqa: ANN001, ANN202
        with real_writer(path, mode, **kwargs) as handle:
            yield Full(handle) if where in str(path) else handle

    monkeypatch.setattr(atomic, "atomic_writer", writer)
    if not where:
        monkeypatch.setattr(atomic, "_write_all", refuse)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_mid_training_is_one_line_and_keeps_the_last_checkpoint(recipe, reference, tmp_path,
                                                                             monkeypatch, capsys):
    kept: dict[str, bytes] = {}

    def fill(trainer, state) -> None:
        kept.update(_snapshot(trainer.folder.fold_dir(0)))
        _disk_full(monkeypatch)  # undone below (space freed) before the resume

    _plant(monkeypatch, _Once(0, 1, 1, fill))
    runs = tmp_path / "runs"
    assert cli(_train_args(recipe, runs)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device writing /" in line and "free space" in line and "--resume" in line, line
    run_dir = _only_run(runs)
    # Nor can run.json take the failure: it stays "running", and Run.stale tells once this process is gone.
    assert Run(run_dir).status == "running"
    for name in ("model.safetensors", "model.json", "oof.parquet", "best.json", "state/progress.json"):
        assert (run_dir / "folds/0" / name).read_bytes() == kept[name], name
    assert not [p for p in run_dir.rglob(".*.tmp-*")]  # no temporary file left behind
    assert not _unreadable(run_dir)

    monkeypatch.undo()  # space freed
    torch.set_num_threads(1)
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0
    _assert_same_run(run_dir, reference)


@pytest.fixture
def file_size_limit():
    """Set RLIMIT_FSIZE in this process for the test (restored after it); Python ignores SIGXFSZ."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_file_size_limit_fails_the_run_in_one_line_and_resume_finishes_it(recipe, reference, tmp_path,
                                                                             monkeypatch, capsys, file_size_limit):
    """Under ``ulimit -f`` the weights (400 kB) no longer fit but run.json does: the run is marked failed."""
    _plant(monkeypatch, _Once(0, 1, 1, lambda trainer, state: file_size_limit(100_000)))
    runs = tmp_path / "runs"
    assert cli(_train_args(recipe, runs)) == 1
    file_size_limit(resource.RLIM_INFINITY)
    line = _one_error_line(capsys.readouterr().err)
    assert "file size limit" in line and "--resume" in line, line
    run_dir = _only_run(runs)
    info = _json(run_dir / "run.json")
    assert info["status"] == "failed" and "file size limit" in info["error"], info
    assert _json(run_dir / "folds/0/state/progress.json")["progress"]["epoch"] == 0
    assert not _unreadable(run_dir)

    monkeypatch.undo()
    torch.set_num_threads(1)
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0
    _assert_same_run(run_dir, reference)


def test_a_full_disk_while_predicting_keeps_the_previous_predictions(images, reference, tmp_path, monkeypatch,
                                                                     capsys):
    run_dir = Path(shutil.copytree(reference, tmp_path / reference.name))
    assert cli(["predict", str(run_dir), str(images), "-n", "test"]) == 0
    before = _snapshot(run_dir / "predictions")
    capsys.readouterr()

    _disk_full(monkeypatch, where="/predictions/")
    assert cli(["predict", str(run_dir), str(images), "-n", "test", "--tta", "hflip"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device writing " in line and "/predictions/test." in line and "free space" in line, line
    assert _snapshot(run_dir / "predictions") == before


def test_a_row_the_disk_cuts_halfway_is_taken_back(tmp_path, monkeypatch):
    """metrics.csv grows by appends: half a row written before ENOSPC must not stay as a torn line."""
    import toolkit.store.atomic as atomic

    path = tmp_path / "metrics.csv"
    atomic.append_csv_row(path, {"fold": 0, "epoch": 0, "train_loss": 0.5})
    real = atomic._write_all

    def half(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_all", half)
    with pytest.raises(OSError) as caught:
        atomic.append_csv_row(path, {"fold": 0, "epoch": 1, "train_loss": 0.25})
    assert caught.value.filename == str(path)  # the error names the file the disk refused
    assert path.read_text() == "fold,epoch,train_loss\n0,0,0.5\n"


# --------------------------------------------------------------------------- 4. non-finite loss
def _nan_loss_at(monkeypatch, *calls: int) -> None:
    """The training loss of the given training steps (counted from 1 over the whole run) is NaN."""
    import toolkit.train.steps as steps

    real, seen = steps.multihead_loss, [0]

    def loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        value = real(*args, **kwargs)
        if torch.is_grad_enabled():  # training, not validation
            seen[0] += 1
            if seen[0] in calls:
                return value * float("nan")
        return value

    monkeypatch.setattr(steps, "multihead_loss", loss)


def test_a_nan_loss_stops_the_run_keeping_the_last_good_epoch(recipe, reference, tmp_path, monkeypatch, capsys):
    _nan_loss_at(monkeypatch, 6)  # fold 0, epoch 1, its second batch
    runs = tmp_path / "runs"
    assert cli(_train_args(recipe, runs)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "non-finite loss in fold 0, epoch 1, step 1" in line and 'train.nonfinite = "skip"' in line, line
    run_dir = _only_run(runs)
    info = _json(run_dir / "run.json")
    assert info["status"] == "failed" and "non-finite loss" in info["error"]
    assert _json(run_dir / "folds/0/model.json")["epoch"] == 0
    assert _json(run_dir / "folds/0/state/progress.json")["progress"]["epoch"] == 0

    monkeypatch.undo()
    torch.set_num_threads(1)
    assert cli(["train", "--resume", run_dir.name, "--runs", str(runs)]) == 0  # a transient NaN: resume goes on
    _assert_same_run(run_dir, reference)


def test_nonfinite_skip_skips_the_batches_and_counts_them(recipe, tmp_path, monkeypatch):
    from toolkit.config import load_recipe
    from toolkit.train import train

    _nan_loss_at(monkeypatch, 6, 7)
    skipping = load_recipe(recipe, ["train.nonfinite=skip"])
    run = train(skipping, runs_root=tmp_path / "runs", folds=FOLDS, progress=False)
    assert run.status == "finished"
    done = {k: run.read_fold_done(k) for k in (0, 2)}
    assert (done[0]["nonfinite_skipped"], done[2]["nonfinite_skipped"]) == (2, 0)
    metrics = _metrics(run.path)
    assert metrics["train_loss"].notna().all() and metrics["val_loss"].notna().all()
    assert list(metrics["nonfinite_skipped"]) == [0, 2, 0, 0]
    assert run.summary["folds"]["0"]["nonfinite_skipped"] == 2


def test_nonfinite_skip_still_stops_when_every_batch_is_nonfinite(recipe, tmp_path):
    from toolkit.config import load_recipe
    from toolkit.errors import TrainingError
    from toolkit.train import train

    class Poison(Callback):
        def on_epoch_end(self, trainer, state, row, val):
            with torch.no_grad():
                for param in state.model.parameters():
                    param.fill_(float("nan"))

    skipping = load_recipe(recipe, ["train.nonfinite=skip"])
    with pytest.raises(TrainingError, match="every batch of fold 0, epoch 1"):
        train(skipping, runs_root=tmp_path / "runs", folds="0", callbacks=[Poison()], progress=False)


# --------------------------------------------------------------------------- 5. tiny data, big batch
def test_a_big_batch_on_tiny_data_keeps_the_last_batch_and_warns(tmp_path):
    """100 training rows in batches of 64: the epoch trains on all 100, not 64, and the user is told that
    BatchNorm sees two batches per epoch."""
    from toolkit.config import load_recipe
    from toolkit.progress import NullProgress
    from toolkit.train import train

    images = make_imagefolder(tmp_path / "train", per_class=50, size=8, classes={"red": (220, 30, 30),
                                                                               "blue": (30, 40, 220), "green": (30, 200, 40)})
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, split={"folds": 3},
                                      model={"name": "test_efficientnet", "pretrained": False},
                                      data={"image_size": 16}, train={"epochs": 1, "batch_size": 64}))

    class Lines(NullProgress):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def log(self, line: str) -> None:
            self.lines.append(line)

    seen: list[int] = []

    class Count(Callback):
        def on_step_end(self, trainer, state, updated):
            seen.append(state.step)

    progress = Lines()
    train(recipe, runs_root=tmp_path / "runs", folds="0", callbacks=[Count()], progress=progress)
    row = _metrics(_only_run(tmp_path / "runs")).iloc[0]
    assert seen == [1, 2]
    assert round(pd.read_csv(_only_run(tmp_path / "runs") / "metrics.csv")[["train_img_s", "train_s"]]
                 .prod(axis=1).iloc[0]) == 100, row
    warned = [line for line in progress.lines if "BatchNorm" in line]
    assert len(warned) == 1 and "train.batch_size" in warned[0], progress.lines


@pytest.mark.parametrize(("samples", "batch", "paired", "kept"), [
    (100, 64, False, True),   # 36 left over: more than half a batch, kept
    (70, 64, False, False),   # 6 left over: a noisy step on 6 images, dropped
    (97, 64, True, False),    # 33 left over under MixUp: an odd count cannot be paired
    (98, 64, True, True),
    (18, 8, False, False),    # 2 processes × batch 4: the step is 8 images
    (40, 64, False, True),    # one batch holds everything
])
def test_which_last_batch_is_kept(samples, batch, paired, kept):
    from toolkit.train.loaders import keeps_last_batch

    assert keeps_last_batch(samples, batch, paired=paired) is kept


# --------------------------------------------------------------------------- 6. concurrency
def test_readers_of_a_run_still_training_see_it_running(images, recipe, reference, tmp_path, monkeypatch, capsys):
    finished = Path(shutil.copytree(reference, tmp_path / "done" / reference.name))
    seen: dict[str, tuple[int, str]] = {}

    def read(trainer, state) -> None:
        run = str(trainer.folder.path)
        capsys.readouterr()
        for name, argv in {
            "predict": ["predict", run, str(images)],
            "ensemble": ["ensemble", run, str(finished), "--runs", str(tmp_path / "ensembles")],
            "report": ["report", run, str(finished), "--out", str(tmp_path / "report.html")],
        }.items():
            code = cli(argv)
            seen[name] = (code, capsys.readouterr().err)

    _plant(monkeypatch, _Once(2, 0, 2, read))  # fold 0 finished, fold 2 training
    assert cli(_train_args(recipe, tmp_path / "runs")) == 0
    run_dir = _only_run(tmp_path / "runs")

    code, err = seen["predict"]
    assert code == 2 and "run running" in _one_error_line(err) and "wait for the training to finish" in err, err
    code, err = seen["ensemble"]
    assert code == 2, err
    _one_error_line(err)
    code, err = seen["report"]
    assert code == 0, err
    html = (tmp_path / "report.html").read_text()
    assert f"{run_dir.name}" in html and 'class="status-running"' in html


@pytest.mark.slow
def test_two_trainings_into_one_runs_folder_at_once_get_their_own_folders(recipe, tmp_path):
    """Both runs are named alike and started in the same (pinned) second: their ids would collide."""
    runs = tmp_path / "runs"
    plan = [{"clock": "2026-11-22T10:15:00"}]
    children = [_spawn(plan, "train", "--recipe", recipe, "--runs", runs, "--folds", "0", "-n", "twin")
                for _ in range(2)]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    run_dirs = _run_dirs(runs)
    assert [p.name for p in run_dirs] == ["20261122-101500-2-twin", "20261122-101500-twin"]
    infos = [_json(p / "run.json") for p in run_dirs]
    assert [i["id"] for i in infos] == [p.name for p in run_dirs]
    assert len({i["pid"] for i in infos}) == 2 and {i["status"] for i in infos} == {"finished"}
    for run_dir in run_dirs:
        metrics = pd.read_csv(run_dir / "metrics.csv")
        assert list(zip(metrics["fold"], metrics["epoch"], strict=True)) == [(0, 0), (0, 1)]
        assert not _unreadable(run_dir)
