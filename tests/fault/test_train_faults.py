"""Faults injected into training: resume's fold selection, two trainers on one run, a stop in the warm-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.errors import RunError
from toolkit.store import Run
from toolkit.train import Callback, train

REPO = Path(__file__).resolve().parents[2]


class _Interrupt(Callback):
    """Ctrl-C at the end of epoch ``at`` of fold 0 (after the epoch before it was saved)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer, state, row, val):
        if (state.fold, state.epoch) == (0, self.at):
            raise KeyboardInterrupt


def _interrupted_fold0_run(images: Path, tmp_path: Path) -> Path:
    """A run started with ``--folds 0`` of a two-fold split and interrupted in its second epoch."""
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, split={"folds": 2}, train={"epochs": 2}))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, runs_root=tmp_path / "runs", folds="0", callbacks=[_Interrupt(at=1)], progress=False)
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file()]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["folds"] == [0]
    return run_dir


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- 1. resume keeps the folds
def test_resume_trains_only_the_recorded_folds(images, tmp_path):
    run_dir = _interrupted_fold0_run(images, tmp_path)
    runs = str(tmp_path / "runs")

    assert cli(["train", "--resume", run_dir.name, "--runs", runs]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["folds"] == [0]
    assert not (run_dir / "folds/1").exists()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(zip(metrics["fold"], metrics["epoch"], strict=True)) == [(0, 0), (0, 1)]

    # --folds that leaves out a recorded fold would write a summary without it: refused, nothing touched.
    before = (run_dir / "run.json").read_text()
    assert cli(["train", "--resume", run_dir.name, "--runs", runs, "--folds", "1"]) == 2
    assert (run_dir / "run.json").read_text() == before
    # --folds that includes every recorded fold extends the run: fold 0 is kept, fold 1 is added.
    done0 = (run_dir / "folds/0/done.json").stat().st_mtime_ns
    assert cli(["train", "--resume", run_dir.name, "--runs", runs, "--folds", "0,1"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["folds"] == [0, 1]
    assert (run_dir / "folds/0/done.json").stat().st_mtime_ns == done0
    assert (run_dir / "folds/1/done.json").is_file()
    assert len(pd.read_parquet(run_dir / "oof.parquet")) == 24


# --------------------------------------------------------------------------- 2. one trainer per run
def test_the_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    """Two processes: the child holds the lock, we are refused with its pid; kill -9 frees it."""
    from toolkit.store import RunStore

    run = RunStore(tmp_path / "runs").create("train", name="locked")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from toolkit.store import Run\n"
         "with Run(sys.argv[1]).lock():\n    print('held', flush=True); time.sleep(120)", str(run.path)],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as caught, run.lock():
            pass
        assert str(holder.pid) in str(caught.value) and "\n" not in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with run.lock():  # no stale lock after kill -9: the OS dropped it with the process
        pass
    with run.lock():  # and released on exit
        pass


def test_a_second_trainer_on_a_locked_run_fails_at_once(images, tmp_path):
    run_dir = _interrupted_fold0_run(images, tmp_path)
    info_before = (run_dir / "run.json").read_text()
    metrics_before = (run_dir / "metrics.csv").read_text()
    cmd = [sys.executable, "-m", "toolkit", "train", "--resume", run_dir.name, "--runs", str(tmp_path / "runs")]

    with Run(run_dir).lock():  # as a first `clsctl train --resume` holds it while it trains
        t0 = time.perf_counter()
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        waited = time.perf_counter() - t0
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and str(os.getpid()) in lines[0], lines
    assert waited < 120  # it did not wait for the lock
    assert (run_dir / "run.json").read_text() == info_before  # not marked running, pid untouched
    assert (run_dir / "metrics.csv").read_text() == metrics_before

    # Once the first trainer is gone the resume goes ahead, and each epoch is recorded once.
    assert cli(["train", "--resume", run_dir.name, "--runs", str(tmp_path / "runs")]) == 0
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(zip(metrics["fold"], metrics["epoch"], strict=True)) == [(0, 0), (0, 1)]


def test_the_trainer_holds_the_lock_while_it_trains(images, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", images, split={"folds": 2}))
    seen: list[str] = []

    class TryLock(Callback):
        def on_epoch_end(self, trainer, state, row, val):
            try:
                with trainer.folder.lock():
                    seen.append("acquired")
            except RunError as exc:
                seen.append(str(exc))

    run = train(recipe, runs_root=tmp_path / "runs", folds="0", callbacks=[TryLock()], progress=False)
    assert len(seen) == 1 and str(os.getpid()) in seen[0], seen
    with run.lock():  # released when training ended
        pass


# --------------------------------------------------------------------------- 3. the decoded-cache warm-up
@pytest.fixture
def warm_images(tmp_path, monkeypatch) -> Path:
    """67 images (enough for the warm-up to run), one of them a PNG truncated in its pixel data."""
    import toolkit.train.trainer

    monkeypatch.setattr(toolkit.train.trainer, "cores", lambda: 2)  # the warm-up needs two processes
    root = make_imagefolder(tmp_path / "warm", per_class=22, size=16)
    good = (root / "red/000.png").read_bytes()
    (root / "red/zz_truncated.png").write_bytes(good[: len(good) // 2])
    return root


def _runs_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()] if folder.exists() else []


def test_a_truncated_image_found_by_the_warm_up_leaves_no_run(warm_images, tmp_path):
    from toolkit.errors import DataError

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", warm_images))
    with pytest.raises(DataError, match="zz_truncated.png"):
        train(recipe, runs_root=tmp_path / "runs", progress=False)
    assert _runs_in(tmp_path / "runs") == []


def test_ctrl_c_in_the_warm_up_never_leaves_a_run_marked_running(warm_images, tmp_path, monkeypatch):
    import toolkit.imaging.cache

    (warm_images / "red/zz_truncated.png").unlink()
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", warm_images))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.imaging.cache, "warm_cache", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, runs_root=tmp_path / "runs", progress=False)
    for run_dir in _runs_in(tmp_path / "runs"):
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_ctrl_c_in_a_resumes_warm_up_leaves_it_interrupted(images, tmp_path, monkeypatch):
    import toolkit.imaging.cache

    run_dir = _interrupted_fold0_run(images, tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.imaging.cache, "warm_cache", interrupted)
    assert cli(["train", "--resume", run_dir.name, "--runs", str(tmp_path / "runs")]) == 130
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
