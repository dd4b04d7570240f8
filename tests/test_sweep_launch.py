"""clsctl sweep --launch: trials trained by 2-process DDP on the CPU (gloo), reported and pruned through
the study; a launch command that cannot run is refused before any trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from imagegen import make_imagefolder, write_recipe
from sweepgen import seeded_pruning_study

from toolkit.cli.main import run as cli

REPO = Path(__file__).resolve().parents[1]
# What `accelerate launch` needs to start 2 processes on a machine without a GPU, without asking anything.
LAUNCH = "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs") / "train", per_class=12)


@pytest.fixture
def cpu_launch(monkeypatch, tmp_path) -> Path:
    """The environment the trial's processes inherit; their temporary files go under the returned folder."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def _recipe(tmp_path: Path, images: Path, name: str, epochs: int = 2, **sweep) -> Path:
    cfg = {"trials": 2, "sampler": "random", "pruner": "none", "seed": 0,
           "space": {"optim.lr": {"low": 1e-9, "high": 1e-2, "log": True}}, **sweep}
    return write_recipe(tmp_path / f"{name}.toml", images, sweep=cfg,
                        train={"epochs": epochs, "batch_size": 4, "seed": 0, "deterministic": True})


def _summary(runs: Path, study: str) -> dict:
    (sweep_run,) = [p for p in runs.iterdir() if p.name.endswith(f"-{study}") and (p / "summary.json").is_file()]
    return json.loads((sweep_run / "summary.json").read_text())


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process ended while we looked
    return found


@pytest.mark.parametrize(("launch", "said"), [
    ("acelerate launch --num_processes 2", "`acelerate` is not a command on PATH"),
    ("accelerate launch -m toolkit train", "names what to run"),
    ("accelerate launch --num_processs 2", "unrecognized arguments: --num_processs"),
])
def test_a_bad_launch_command_is_one_line_before_any_trial(tmp_path, images, capsys, launch, said):
    runs = tmp_path / "runs"
    recipe = _recipe(tmp_path, images, "bad")
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs), "--launch", launch]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --launch") and said in err, err
    assert not runs.exists()  # no study, no run folder


def test_a_failing_trial_process_fails_its_trial_with_its_error_and_the_sweep_goes_on(tmp_path, images, capsys):
    launcher = tmp_path / "launcher.sh"
    # Answers the probe as a real launch would, then fails every trial the way a crashed process does.
    launcher.write_text(f"""#!/bin/sh
case "$*" in *--probe*) exec {sys.executable} "$@";; esac
echo "some progress line"
echo "RuntimeError: CUDA error: out of memory"
echo "=============================="
exit 1
""")
    launcher.chmod(0o755)
    runs = tmp_path / "runs"
    recipe = _recipe(tmp_path, images, "fails")
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs), "--launch", str(launcher)]) == 0
    out = capsys.readouterr().out
    assert "3 trials in a row failed" in out
    trials = _summary(runs, "fails")["trials"]
    assert [t["state"] for t in trials] == ["failed"] * 3
    assert all(t["error"] == "RuntimeError: CUDA error: out of memory" for t in trials)


@pytest.mark.slow
def test_trials_train_as_two_process_ddp_and_a_pruned_one_stops_every_process(tmp_path, images, cpu_launch):
    recipe = _recipe(tmp_path, images, "ddp", pruner="median", startup_trials=1, warmup_epochs=0)
    runs = tmp_path / "runs"
    seeded_pruning_study(runs, "ddp")
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs), "--launch", LAUNCH]) == 0

    sweep_run = next(p for p in runs.iterdir() if p.name.endswith("-ddp"))
    assert json.loads((sweep_run / "run.json").read_text())["trial_processes"] == 2
    summary = json.loads((sweep_run / "summary.json").read_text())
    assert {t["number"]: t["state"] for t in summary["trials"]} == {0: "complete", 1: "pruned"}
    complete, pruned = summary["trials"]
    # The main process of each trial reported every epoch to the study.
    assert len(complete["curve"]) == 2 and len(pruned["curve"]) == 1
    assert pruned["pruned_at"]["epoch"] == 0
    for row, epochs in ((complete, 2), (pruned, 1)):
        folder = runs / row["run"]
        info = json.loads((folder / "run.json").read_text())
        assert info["status"] == "finished" and info["num_processes"] == 2 and info["parents"] == [sweep_run.name]
        assert json.loads((folder / "trial.json").read_text())["state"] == row["state"]
        # Both processes stopped after the same epoch: one that trained on would have hung the other.
        assert len((folder / "metrics.csv").read_text().strip().splitlines()) == 1 + epochs
    assert json.loads((runs / complete["run"] / "trial.json").read_text())["value"] == complete["value"]
    assert list(cpu_launch.glob("clsctl-trial-*")) == []  # the trials' spec and result files are gone
    assert _processes_mentioning(str(cpu_launch)) == []  # and so are the trials' processes


@pytest.mark.slow
def test_a_killed_worker_takes_its_trial_processes_with_it(tmp_path, images, cpu_launch):
    recipe = _recipe(tmp_path, images, "killed", epochs=50, trials=1)
    runs = tmp_path / "runs"
    worker = subprocess.Popen([sys.executable, "-m", "toolkit", "sweep", "--recipe", str(recipe), "--runs", str(runs),
                               "--launch", LAUNCH], env={**os.environ, "TMPDIR": str(cpu_launch)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not list(runs.glob("*-killed-t0/metrics.csv")):
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the trial's first epoch never came"
            time.sleep(0.2)
        assert len(_processes_mentioning(str(cpu_launch))) >= 3  # the launcher and its 2 processes
    finally:
        worker.send_signal(signal.SIGKILL)  # nothing can be passed on: the trial's processes must notice
        worker.wait(timeout=60)
    deadline = time.time() + 60
    while _processes_mentioning(str(cpu_launch)) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(str(cpu_launch)) == []
    (trial_run,) = runs.glob("*-killed-t0")
    assert json.loads((trial_run / "run.json").read_text())["status"] == "interrupted"
