"""clsctl sweep: the space checked before any trial, trials as runs, resume, pruning, grid, dead workers,
and two workers on a throwaway PostgreSQL cluster."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from imagegen import make_imagefolder, write_recipe
from sweepgen import seeded_pruning_study

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe, with_overrides
from toolkit.errors import RecipeError
from toolkit.sweep import plan_sweep
from toolkit.sweep.space import trial_recipe
from toolkit.sweep.storage import describe_storage

REPO = Path(__file__).resolve().parents[1]
SPACE = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "loss.name": ["ce", "focal"]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs") / "train", per_class=12)


def _recipe(tmp_path: Path, images: Path, name: str = "r", train: dict | None = None, **sweep) -> Path:
    cfg = {"trials": 3, "sampler": "random", "pruner": "none", "seed": 0, "space": SPACE, **sweep}
    return write_recipe(tmp_path / f"{name}.toml", images, sweep=cfg, train={"epochs": 1, "batch_size": 8, "seed": 0,
                                                                             "deterministic": True, **(train or {})})


def _runs(runs: Path, kind: str) -> list[Path]:
    return sorted(p for p in runs.iterdir() if (p / "run.json").is_file()
                  and json.loads((p / "run.json").read_text())["kind"] == kind) if runs.exists() else []


def _latest_summary(runs: Path) -> dict:
    # By start time: two runs of one second have ids `<stamp>-r` and `<stamp>-2-r`, which sort the other way.
    latest = max(_runs(runs, "sweep"), key=lambda p: json.loads((p / "run.json").read_text())["started"])
    return json.loads((latest / "summary.json").read_text())


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _sweep_cmd(recipe: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", "sweep", "--recipe", str(recipe), "--runs", str(runs), *extra]


# --------------------------------------------------------------------------- checked before any trial
@pytest.mark.parametrize(("space", "sweep", "said"), [
    ({"optim.lrr": [1e-3]}, {}, "did you mean `optim.lr`"),
    ({"optim.lr": {"low": 0.0, "high": 1e-2}}, {}, "must be > 0"),
    ({"optim.lr": {"low": 1e-4, "hgh": 1e-2}}, {}, "did you mean `high`"),
    ({"loss.name": {"low": 1, "high": 3}}, {}, "numeric key"),
    ({"train.batch_size": {"low": 8.5, "high": 32}}, {}, "whole number"),
    ({"optim.lr": {"low": 1e-4, "high": 1e-2}}, {"sampler": "grid"}, "needs `step`"),
    ({"optim.lr": [1e-3, 3e-3]}, {"pruner": "wilcoxon"}, "fold by fold"),
    ({"sweep.trials": [1, 2]}, {}, "cannot be searched"),
    ({}, {}, "nothing to search"),
])
def test_a_bad_space_is_one_line_before_anything(tmp_path, images, space, sweep, said):
    recipe = load_recipe(_recipe(tmp_path, images, space=space, **sweep))
    with pytest.raises(RecipeError) as caught:
        plan_sweep(recipe)
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_space_typo_exits_2_and_leaves_nothing(tmp_path, images, capsys):
    recipe = _recipe(tmp_path, images, space={"optim.lrr": {"low": 1e-4, "high": 1e-2}})
    runs = tmp_path / "runs"
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'sweep.space."optim.lrr"' in err and "optim.lr`" in err
    assert not runs.exists()  # no study, no run folder
    unknown_loss = _recipe(tmp_path, images, space={"loss.name": ["ce", "focl"]})
    assert cli(["sweep", "--recipe", str(unknown_loss), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "focl" in err
    assert not runs.exists()


def test_machines_with_other_data_paths_join_one_study(tmp_path, images):
    recipe = load_recipe(_recipe(tmp_path, images))
    elsewhere = with_overrides(recipe, {"data.root": str(tmp_path / "mounted-elsewhere")})
    assert plan_sweep(elsewhere).signature() == plan_sweep(recipe).signature()
    assert plan_sweep(with_overrides(recipe, {"train.epochs": 2})).signature() != plan_sweep(recipe).signature()


def test_storage_urls_are_recorded_without_passwords():
    assert describe_storage("postgresql://me:s3cret@db:5432/sweeps") == "postgresql://me:***@db:5432/sweeps"
    assert describe_storage("runs/studies/a.journal") == "runs/studies/a.journal"


# --------------------------------------------------------------------------- trials as runs; resume
def test_tiny_sweep_end_to_end_then_resume_continues_counting(tmp_path, images, capsys):
    recipe_path = _recipe(tmp_path, images)
    runs = tmp_path / "runs"
    assert cli(["sweep", "--recipe", str(recipe_path), "--runs", str(runs)]) == 0
    (sweep_run,) = _runs(runs, "sweep")
    trials = _runs(runs, "train")
    assert len(trials) == 3 and (runs / "studies" / "r.journal").is_file()
    base = load_recipe(recipe_path)
    for folder in trials:
        info = json.loads((folder / "run.json").read_text())
        record = json.loads((folder / "trial.json").read_text())
        assert info["parents"] == [sweep_run.name] and info["status"] == "finished" and info["folds"] == [0]
        assert record["state"] == "complete" and record["sweep_run"] == sweep_run.name
        assert folder.name.endswith(f"-r-t{record['number']}")
        # The trial's recipe is the base with the trial's values, fully resolved, without [sweep].
        assert load_recipe(folder / "recipe.toml") == trial_recipe(plan_sweep(base).base, record["params"])
        assert "[sweep" not in (folder / "recipe.toml").read_text()
    summary = json.loads((sweep_run / "summary.json").read_text())
    assert summary["counts"]["complete"] == 3 and [t["number"] for t in summary["trials"]] == [0, 1, 2]
    # Trial 0 is the hand-written recipe's own values, so the best trial is measured against it.
    assert summary["trials"][0]["baseline"] and summary["trials"][0]["params"] == {"optim.lr": 3e-3, "loss.name": "ce"}
    best = summary["best"]
    assert best["baseline"]["number"] == 0 and best["baseline"]["gain"] >= 0
    assert best["value"] == max(t["value"] for t in summary["trials"])
    assert {c["key"] for c in best["changes"]} <= set(SPACE)
    assert set(summary["importances"]) <= set(SPACE)
    retrain = load_recipe(sweep_run / "best.toml")
    assert retrain == trial_recipe(plan_sweep(base).base, best["params"])
    page = (sweep_run / "report.html").read_text()
    assert "Study r" in page and f"Best: trial {best['number']}" in page and "<svg" in page
    assert "best: trial" in capsys.readouterr().out

    # Same study again: already done. With --trials 4: one more trial, numbered 3.
    assert cli(["sweep", "--recipe", str(recipe_path), "--runs", str(runs)]) == 0
    assert "nothing to run" in capsys.readouterr().out and len(_runs(runs, "train")) == 3
    assert cli(["sweep", "--recipe", str(recipe_path), "--runs", str(runs), "--trials", "4"]) == 0
    summary = _latest_summary(runs)
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3] and summary["ran_here"] == [3]
    assert len(_runs(runs, "train")) == 4 and len({t["params"]["optim.lr"] for t in summary["trials"]}) == 4

    # Another space under the same study name is refused before any trial.
    changed = _recipe(tmp_path, images, space={"optim.lr": [1e-3, 3e-3]})
    capsys.readouterr()
    assert cli(["sweep", "--recipe", str(changed), "--runs", str(runs), "--trials", "9"]) == 2
    assert "another search space" in capsys.readouterr().err and len(_runs(runs, "train")) == 4


def test_a_clearly_worse_trial_is_pruned(tmp_path, images):
    recipe = _recipe(tmp_path, images, name="prune", train={"epochs": 2}, trials=2, pruner="median",
                     startup_trials=1, warmup_epochs=0, space={"optim.lr": {"low": 1e-9, "high": 1e-2, "log": True}})
    runs = tmp_path / "runs"
    seeded_pruning_study(runs, "prune")
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs)]) == 0
    summary = _latest_summary(runs)
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert states == {0: "complete", 1: "pruned"}
    pruned = summary["trials"][1]
    assert pruned["pruned_at"]["fold"] == 0 and pruned["pruned_at"]["epoch"] == 0 and len(pruned["curve"]) == 1
    folder = runs / pruned["run"]
    record = json.loads((folder / "trial.json").read_text())
    assert record["state"] == "pruned" and record["pruned_at"]["epoch"] == 0
    assert len((folder / "metrics.csv").read_text().strip().splitlines()) == 2  # header + the one epoch trained
    assert summary["pruning"] == {"pruned": 1, "by": "median", "epochs_trained": 3, "epochs_saved": 1}


def test_grid_sampler_covers_the_grid(tmp_path, images):
    space = {"optim.lr": [1e-3, 3e-3], "train.batch_size": {"low": 8, "high": 16, "step": 8}}
    recipe = _recipe(tmp_path, images, name="grid", trials=10, sampler="grid", space=space)
    runs = tmp_path / "runs"
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs)]) == 0
    summary = _latest_summary(runs)
    tried = sorted((t["params"]["optim.lr"], t["params"]["train.batch_size"]) for t in summary["trials"])
    assert tried == sorted(itertools.product([1e-3, 3e-3], [8, 16]))  # each point once, then the study stops
    assert summary["counts"]["complete"] == 4


# --------------------------------------------------------------------------- a worker that dies
def _wait_for(predicate, proc: subprocess.Popen, what: str, limit: float = 240) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the worker ended before {what}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_workers_trial_is_failed_retried_and_continued(tmp_path, images):
    recipe = _recipe(tmp_path, images, name="kill", train={"epochs": 5}, trials=2)
    runs = tmp_path / "runs"
    worker = subprocess.Popen(_sweep_cmd(recipe, runs), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)

    def one_epoch_done() -> bool:
        found = list(runs.glob("*-kill-t0/metrics.csv")) if runs.exists() else []
        return bool(found) and len(found[0].read_text().strip().splitlines()) >= 2

    try:
        _wait_for(one_epoch_done, worker, "the first epoch of trial 0")
    finally:
        worker.kill()
        worker.wait(timeout=60)
    (killed,) = runs.glob("*-kill-t0")
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # kill -9: nobody recorded the end

    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs)]) == 0
    summary = _latest_summary(runs)
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert states[0] == "failed" and list(states.values()).count("complete") == 2
    (retry,) = [t for t in summary["trials"] if t["retry_of"] == 0]
    assert retry["state"] == "complete" and retry["params"] == summary["trials"][0]["params"]
    # The retry continued the dead trial's own run folder from its saved epoch: no epoch twice.
    assert retry["run"] == killed.name
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] is True
    assert len((killed / "metrics.csv").read_text().strip().splitlines()) == 6  # header + 5 epochs
    assert json.loads((killed / "trial.json").read_text())["number"] == retry["number"]


# --------------------------------------------------------------------------- many workers, a real database
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp folder); skips when PostgreSQL is absent."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL not found (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg (SQLAlchemy's PostgreSQL driver) is not installed")
    folder = Path(tempfile.mkdtemp(prefix="clsctl-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to an unprivileged user
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            pytest.skip("running as root and no unprivileged user to own the cluster")
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data, port = folder / "data", _free_port()
    try:
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "sweep", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True)
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True,
                       capture_output=True)
        yield f"postgresql://sweep@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_a_study_in_postgres(tmp_path, images, postgres_url):
    import optuna

    recipe = _recipe(tmp_path, images, name="pgone", trials=1)
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(tmp_path / "runs"), "--storage", postgres_url]) == 0
    study = optuna.load_study(study_name="pgone", storage=postgres_url)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE")]
    (trial,) = _runs(tmp_path / "runs", "train")
    assert study.trials[0].user_attrs["run"] == str(trial)
    assert json.loads((_runs(tmp_path / "runs", "sweep")[0] / "run.json").read_text())["storage"] == postgres_url


def test_two_workers_share_a_postgres_study_and_lose_no_trial(tmp_path, images, postgres_url):
    # Two epochs: worker A is killed at its first trial's start, well before that trial could end.
    recipe = _recipe(tmp_path, images, name="pg", train={"epochs": 2}, trials=4, heartbeat=1, seed="none")
    runs_a, runs_b = tmp_path / "a", tmp_path / "b"  # a runs folder per worker, as on two machines
    a = subprocess.Popen(_sweep_cmd(recipe, runs_a, "--storage", postgres_url), env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    b = subprocess.Popen(_sweep_cmd(recipe, runs_b, "--storage", postgres_url), env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            _wait_for(lambda: bool(list(runs_a.glob("*-pg-t*/trial.json"))), a, "worker A's first trial")
        finally:
            a.kill()  # mid-trial: its trial stays `running` in the database until its heartbeat is missed
            a.wait(timeout=60)
        killed_at = time.time()
        out, err = b.communicate(timeout=300)
    finally:
        b.kill()
    assert b.returncode == 0, err.decode()[-3000:]
    # B may have reached 4 trials before A's trial went silent for 2 heartbeats; the next worker then retries it.
    time.sleep(max(0.0, killed_at + 2.5 - time.time()))
    runs_c = tmp_path / "c"
    assert cli(["sweep", "--recipe", str(recipe), "--runs", str(runs_c), "--storage", postgres_url]) == 0
    summary = _latest_summary(runs_c)
    rows = summary["trials"]
    numbers = [t["number"] for t in rows]
    assert numbers == sorted(set(numbers))  # every trial distinct
    counts = summary["counts"]
    assert counts["complete"] + counts["pruned"] >= 4 and counts["running"] == counts["waiting"] == 0
    assert counts["complete"] + counts["pruned"] + counts["failed"] == len(rows)
    killed = [t for t in rows if t["state"] == "failed"]
    assert len(killed) == 1 and killed[0]["run"] in {p.name for p in runs_a.iterdir()}
    (retry,) = [t for t in rows if t["retry_of"] == killed[0]["number"]]
    assert retry["state"] == "complete" and retry["params"] == killed[0]["params"]  # no trial lost
    workers = {t["run"] for t in rows if t["state"] == "complete"}
    assert workers & {p.name for p in runs_b.iterdir()}  # B's trials are in the shared study too
