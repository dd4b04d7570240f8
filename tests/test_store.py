"""Tests for toolkit.store: atomic writes, CSV appends, runs and their status, fingerprints."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import toolkit.store.provenance as provenance
from toolkit.errors import DataError, RunError
from toolkit.store import (
    Run,
    RunStatus,
    RunStore,
    append_csv_row,
    atomic_write_bytes,
    atomic_write_json,
    atomic_writer,
    data_fingerprint,
    default_runs_root,
    is_run_dir,
    manifest_fingerprint,
    read_json,
    resolve_runs,
    slugify,
)

REPO = Path(__file__).resolve().parents[1]
FIXED = dt.datetime(2026, 11, 22, 10, 15, 0, tzinfo=dt.UTC)


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork is much faster than spawn (no re-import of pytest per child); spawn elsewhere.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _python(script: str, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[dt.datetime]:
    """A fake clock that advances one second per call, so runs get distinct, ordered ids."""
    ticks = [FIXED]

    def now() -> dt.datetime:
        ticks.append(ticks[-1] + dt.timedelta(seconds=1))
        return ticks[-1]

    monkeypatch.setattr(provenance, "utcnow", now)
    return ticks


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writer_exception_midway_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="crash"), atomic_writer(target, "w") as handle:
        handle.write("new but only half")
        raise RuntimeError("crash")
    assert target.read_text(encoding="utf-8") == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_fails_before_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_writer_keyboard_interrupt_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with pytest.raises(KeyboardInterrupt), atomic_writer(target, "wb") as handle:
        handle.write(b"partial")
        raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_real_crash_leaves_target_intact(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    target.write_text('{"status": "running"}', encoding="utf-8")
    proc = _python(f"""
        import os
        from toolkit.store.atomic import atomic_writer
        with atomic_writer({str(target)!r}, "wb") as f:
            f.write(b'{{"status": "fin')
            f.flush()
            os._exit(1)
    """, tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert json.loads(target.read_text(encoding="utf-8")) == {"status": "running"}
    # A hard crash may leave the temp file, but it is hidden and never the target.
    assert all(name.startswith(".run.json.tmp-") for name in _leftovers(tmp_path))


def test_atomic_write_json_converts_numpy_and_paths(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.json"
    atomic_write_json(target, {
        "f32": np.float32(0.5), "i64": np.int64(7), "b": np.bool_(True), "arr": np.arange(3),
        "path": Path("a/b"), "text": "größe", "nested": {"m": np.array([[1.5, 2.0]])},
    })
    raw = target.read_text(encoding="utf-8")
    assert "größe" in raw  # ensure_ascii off
    assert raw.startswith("{\n  ")  # indent 2
    data = read_json(target)
    assert data == {"f32": 0.5, "i64": 7, "b": True, "arr": [0, 1, 2], "path": "a/b", "text": "größe",
                    "nested": {"m": [[1.5, 2.0]]}}
    assert isinstance(data["i64"], int) and isinstance(data["b"], bool)
    assert list(data) == ["f32", "i64", "b", "arr", "path", "text", "nested"]  # not sorted


def test_atomic_writer_rejects_read_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_writer(tmp_path / "x", "r"):
        pass


# --------------------------------------------------------------------------- CSV appends


def test_append_csv_row_creates_header_and_appends(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    append_csv_row(target, {"fold": 0, "epoch": 1, "loss": 0.25})
    append_csv_row(target, {"fold": 0, "epoch": 2, "loss": np.float32(0.125), "note": None})
    assert target.read_text(encoding="utf-8") == "fold,epoch,loss,note\n0,1,0.25,\n0,2,0.125,\n"


def test_append_csv_row_repairs_torn_line(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    append_csv_row(target, {"a": 1, "b": 2})
    append_csv_row(target, {"a": 3, "b": 4})
    with open(target, "ab") as handle:
        handle.write(b"5,6666")  # a crash in the middle of a row: no newline
    append_csv_row(target, {"a": 7, "b": 8})
    assert target.read_text(encoding="utf-8") == "a,b\n1,2\n3,4\n7,8\n"


def test_append_csv_row_repairs_torn_header(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_bytes(b"a,")
    append_csv_row(target, {"a": 1, "b": 2})
    assert target.read_text(encoding="utf-8") == "a,b\n1,2\n"


def test_append_csv_row_new_columns_widen_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    append_csv_row(target, {"epoch": 0, "loss": 1.0})
    append_csv_row(target, {"epoch": 1, "loss": 0.5, "acc": 0.9})
    append_csv_row(target, {"epoch": 2, "acc": 0.95})
    assert target.read_text(encoding="utf-8") == "epoch,loss,acc\n0,1.0,\n1,0.5,0.9\n2,,0.95\n"
    assert _leftovers(tmp_path) == []


def test_append_csv_row_keeps_one_record_per_line(tmp_path: Path) -> None:
    target = tmp_path / "m.csv"
    append_csv_row(target, {"note": "two\nlines, and a comma"})
    assert target.read_text(encoding="utf-8").splitlines() == ["note", '"two lines, and a comma"']


def _append_many(path: str, proc: int, count: int, go: multiprocessing.synchronize.Event) -> None:
    go.wait(30)  # both start together, so their appends really interleave
    for i in range(count):
        append_csv_row(path, {"proc": proc, "i": i, "pad": "x" * (50 + i % 7)})


def test_append_csv_row_concurrent_processes(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"  # does not exist yet: both race to write the header too
    ctx = _mp_context()
    go = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(target), p, 200, go)) for p in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = target.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # ends with a newline
    lines = lines[:-1]
    assert lines[0] == "proc,i,pad"
    assert len(lines) == 1 + 400
    seen = set()
    for line in lines[1:]:
        proc, i, pad = line.split(",")
        assert pad == "x" * (50 + int(i) % 7), line
        seen.add((int(proc), int(i)))
    assert seen == {(p, i) for p in range(2) for i in range(200)}


# --------------------------------------------------------------------------- creating runs


def test_create_writes_run_json_and_recipe(tmp_path: Path, clock: list[dt.datetime]) -> None:
    class Recipe:
        def to_toml(self) -> str:
            return 'model = "resnet18"\n'

    store = RunStore(tmp_path / "runs")
    parent = store.create("train", name="base")
    run = store.create("predict", name="My Run!", recipe=Recipe(), parents=[parent, "20260101-000000-x"],
                       seed=42, data_fingerprint="sha256:abc/3", extra={"task": "cifar"})
    assert run.id == "20261122-101502-My-Run"
    assert run.path == (tmp_path / "runs" / run.id).absolute()
    assert is_run_dir(run.path)
    info = read_json(run.path / "run.json")
    assert info["id"] == run.id and info["kind"] == "predict" and info["name"] == "My Run!"
    assert info["status"] == "running" and info["ended"] is None
    assert info["started"] == "2026-11-22T10:15:02.000Z"
    assert info["parents"] == [parent.id, "20260101-000000-x"]
    assert info["seed"] == 42 and info["data_fingerprint"] == "sha256:abc/3" and info["task"] == "cifar"
    assert info["pid"] == os.getpid()
    assert info["versions"]["python"] and info["versions"]["clsctl"]
    assert info["host"]["hostname"]
    assert "git_commit" in info and "git_dirty" in info
    assert run.recipe_text == 'model = "resnet18"\n'
    assert run.kind == "predict" and run.status is RunStatus.RUNNING and run.status == "running"
    assert parent.recipe_text is None
    assert store.create("train", recipe="x = 1\n").recipe_text == "x = 1\n"


def test_create_rejects_bad_input_without_leaving_folders(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(RunError):
        store.create("train", name="///")
    with pytest.raises(RunError, match="reserved"):
        store.create("train", extra={"status": "x"})
    with pytest.raises(TypeError):
        store.create("train", recipe=123)
    assert list(tmp_path.iterdir()) == []


def test_slugify() -> None:
    assert slugify("baseline") == "baseline"
    assert slugify(" eff net/b0 (v2) ") == "eff-net-b0-v2"
    assert slugify("..x..") == "x"
    assert len(slugify("a" * 200)) == 64


def test_same_second_ids_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "utcnow", lambda: FIXED)
    store = RunStore(tmp_path)
    ids = [store.create("train", name="baseline").id for _ in range(3)]
    assert ids == ["20261122-101500-baseline", "20261122-101500-2-baseline", "20261122-101500-3-baseline"]


def _create_at_fixed_time(root: str) -> str:
    provenance.utcnow = lambda: FIXED  # every process in the same second: forces collisions
    return RunStore(root).create("train", name="baseline").id


def test_concurrent_creates_get_distinct_ids(tmp_path: Path) -> None:
    with _mp_context().Pool(6) as pool:
        ids = pool.map(_create_at_fixed_time, [str(tmp_path)] * 12)
    assert len(set(ids)) == 12
    assert all(i.startswith("20261122-101500-") and i.endswith("-baseline") for i in ids)
    for run_id in ids:
        assert read_json(tmp_path / run_id / "run.json")["id"] == run_id
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids)


# --------------------------------------------------------------------------- status handling


def test_activate_normal_exit_finishes(tmp_path: Path) -> None:
    run = RunStore(tmp_path).create("train")
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with run.activate() as active:
        assert active is run
        assert signal.getsignal(signal.SIGINT) != before[0]
        assert Run(run.path).status == "running"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    fresh = Run(run.path)
    assert fresh.status is RunStatus.FINISHED
    assert fresh.ended is not None and fresh.ended.endswith("Z")
    assert fresh.error is None and fresh.info["duration_s"] >= 0


def test_activate_exception_marks_failed(tmp_path: Path) -> None:
    run = RunStore(tmp_path).create("train")
    with pytest.raises(ValueError, match="loss is nan"), run:
        raise ValueError("loss is nan")
    fresh = Run(run.path)
    assert fresh.status is RunStatus.FAILED
    assert fresh.error == "ValueError: loss is nan"
    assert fresh.ended is not None


def test_activate_keyboard_interrupt_marks_interrupted(tmp_path: Path) -> None:
    run = RunStore(tmp_path).create("train")
    with pytest.raises(KeyboardInterrupt), run.activate():
        raise KeyboardInterrupt
    assert Run(run.path).status is RunStatus.INTERRUPTED


def test_activate_keeps_status_set_by_body(tmp_path: Path) -> None:
    run = RunStore(tmp_path).create("train")
    with run.activate():
        run.fail("diverged at epoch 3")
    fresh = Run(run.path)
    assert fresh.status is RunStatus.FAILED and fresh.error == "diverged at epoch 3"


@pytest.mark.parametrize(("signum", "status_code"), [(signal.SIGINT, None), (signal.SIGTERM, 143)])
def test_signal_in_subprocess_marks_interrupted(tmp_path: Path, signum: int, status_code: int | None) -> None:
    proc = _python(f"""
        import time
        from toolkit.store import RunStore
        run = RunStore({str(tmp_path / "runs")!r}).create("train", name="sig")
        with run.activate():
            print(run.path, flush=True)
            time.sleep(30)
    """, tmp_path)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else ""
    started = time.monotonic()
    proc.send_signal(signum)
    proc.wait(timeout=15)
    assert time.monotonic() - started < 10  # it stopped, not slept on
    assert proc.returncode != 0
    if status_code is not None:
        assert proc.returncode == status_code
    info = read_json(Path(line) / "run.json")
    assert info["status"] == "interrupted"
    assert signal.Signals(signum).name in info["error"]
    assert info["ended"] is not None


# --------------------------------------------------------------------------- run files


def test_metrics_summary_and_files(tmp_path: Path) -> None:
    run = RunStore(tmp_path).create("train")
    run.append_metrics({"fold": 0, "epoch": 0, "val_loss": 0.5})
    run.append_metrics({"fold": 0, "epoch": 1, "val_loss": 0.25, "lr": 1e-3})
    frame = run.read_metrics()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["fold", "epoch", "val_loss", "lr"]
    assert frame["val_loss"].tolist() == [0.5, 0.25]
    rows = run.read_metrics(as_frame=False)
    assert rows == [{"fold": 0, "epoch": 0, "val_loss": 0.5, "lr": None},
                    {"fold": 0, "epoch": 1, "val_loss": 0.25, "lr": 0.001}]
    assert RunStore(tmp_path).create("x").read_metrics(as_frame=False) == []

    assert run.summary == {}
    run.update_summary(cv_score=0.9)
    assert run.update_summary({"best epoch": 1}, cv_score=np.float64(0.91)) == {"cv_score": 0.91, "best epoch": 1}
    assert read_json(run.file("summary.json")) == {"cv_score": 0.91, "best epoch": 1}

    written = run.write_json("folds/0/meta.json", {"k": 0})
    assert written == run.path / "folds" / "0" / "meta.json" and read_json(written) == {"k": 0}
    assert run.write_text("notes.txt", "hi").read_text(encoding="utf-8") == "hi"
    with pytest.raises(ValueError):
        run.file("../escape.txt")

    run.update_info(best_fold=2)
    assert Run(run.path).info["best_fold"] == 2 and Run(run.path).kind == "train"


def test_run_rejects_non_run_folder(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a run folder"):
        Run(tmp_path)


def test_stale_detects_dead_process(tmp_path: Path) -> None:
    run = RunStore(tmp_path).create("train")
    assert not run.stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.update_info(pid=dead.pid)
    assert run.stale


# --------------------------------------------------------------------------- finding runs


@pytest.fixture
def populated(tmp_path: Path, clock: list[dt.datetime]) -> tuple[RunStore, dict[str, Run]]:
    store = RunStore(tmp_path / "runs")
    runs = {
        "base": store.create("train", name="baseline"),
        "other": store.create("train", name="other"),
        "pred": store.create("predict"),
    }
    runs["base"].finish()
    (store.root / "scratch").mkdir()  # not a run: no run.json
    (store.root / "20261122-999999-half").mkdir()  # being created: no run.json yet
    return store, runs


def test_open_by_id_path_and_suffix(populated: tuple[RunStore, dict[str, Run]]) -> None:
    store, runs = populated
    base = runs["base"]
    assert store.open(base.id) == base
    assert store.open(base.path) == base
    assert store.open(str(base.path)) == base
    assert store.open("baseline") == base
    assert store.open("predict") == runs["pred"]
    assert store.open(base) is base


def test_open_ambiguous_lists_candidates(populated: tuple[RunStore, dict[str, Run]]) -> None:
    store, runs = populated
    again = store.create("train", name="baseline")
    with pytest.raises(RunError) as info:
        store.open("baseline")
    assert runs["base"].id in str(info.value) and again.id in str(info.value)
    assert info.value.exit_code == 2
    assert store.open(again.id) == again


def test_open_missing_and_not_a_run(populated: tuple[RunStore, dict[str, Run]]) -> None:
    store, _ = populated
    with pytest.raises(RunError) as info:
        store.open("nope")
    assert "nope" in info.value.message and "ls" in (info.value.hint or "")
    assert "--runs" in (info.value.hint or "")
    with pytest.raises(RunError, match="not a run folder"):
        store.open(store.root / "scratch")
    with pytest.raises(RunError):
        RunStore(store.root / "missing").open("baseline")


def test_list_and_latest(populated: tuple[RunStore, dict[str, Run]]) -> None:
    store, runs = populated
    assert store.list() == [runs["base"], runs["other"], runs["pred"]]
    assert store.list(kind="train") == [runs["base"], runs["other"]]
    assert store.list(status="finished") == [runs["base"]]
    assert store.list(kind="train", status=RunStatus.RUNNING) == [runs["other"]]
    assert store.latest() == runs["pred"]
    assert store.latest(kind="train") == runs["other"]
    assert store.latest(kind="ensemble") is None
    assert RunStore(store.root / "missing").list() == []


def test_list_orders_same_second_runs_by_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path)
    moments = iter([FIXED, FIXED + dt.timedelta(milliseconds=5), FIXED + dt.timedelta(milliseconds=9)])
    monkeypatch.setattr(provenance, "utcnow", lambda: next(moments))
    made = [store.create("train", name="zeta"), store.create("train", name="alpha"),
            store.create("train", name="zeta")]
    assert [r.id for r in made] == ["20261122-101500-zeta", "20261122-101500-alpha", "20261122-101500-2-zeta"]
    assert store.list() == made


def test_resolve_runs_globs_ids_and_errors(populated: tuple[RunStore, dict[str, Run]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store, runs = populated
    everything = resolve_runs([f"{store.root}/*"])
    assert everything == [runs["base"], runs["other"], runs["pred"]]  # scratch/half skipped
    # Order of arguments kept, duplicates dropped.
    assert resolve_runs([runs["pred"].id, f"{store.root}/*"], root=store.root) == [
        runs["pred"], runs["base"], runs["other"]]
    assert resolve_runs(["baseline", str(runs["base"].path)], root=store.root) == [runs["base"]]
    # A relative glob that finds nothing in the current folder is tried under the root.
    monkeypatch.chdir(store.root.parent.parent)
    assert resolve_runs(["*-other"], root=store.root) == [runs["other"]]
    with pytest.raises(RunError, match="not a run folder"):
        resolve_runs([str(store.root / "scratch")], root=store.root)
    with pytest.raises(RunError, match="no runs found"):
        resolve_runs([f"{store.root}/*-nothing"], root=store.root)
    with pytest.raises(RunError):
        resolve_runs([], root=store.root)


def test_default_runs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLSCTL_RUNS", raising=False)
    assert default_runs_root() == Path("runs")
    monkeypatch.setenv("CLSCTL_RUNS", str(tmp_path))
    assert default_runs_root() == tmp_path
    assert RunStore().root == tmp_path


# --------------------------------------------------------------------------- fingerprints


def _make_files(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode() * 10)


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    names = ["a/1.png", "a/2.png", "b/3.png"]
    _make_files(tmp_path, names)
    first = data_fingerprint(names, tmp_path)
    assert first.startswith("sha256:") and first.endswith("/3")
    assert len(first.split(":")[1].split("/")[0]) == 16
    assert data_fingerprint(list(reversed(names)), tmp_path) == first  # order does not matter
    assert data_fingerprint([Path(n) for n in names], str(tmp_path)) == first

    # mtime change alone
    target = tmp_path / "a/2.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = data_fingerprint(names, tmp_path)
    assert touched != first
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data_fingerprint(names, tmp_path) == first

    # size change (mtime restored so only the size differs)
    target.write_bytes(b"different length")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data_fingerprint(names, tmp_path) != first

    assert data_fingerprint(names[:2], tmp_path).endswith("/2")


def test_fingerprint_content_mode(tmp_path: Path) -> None:
    names = ["x.jpg", "y.jpg"]
    _make_files(tmp_path, names)
    by_content = data_fingerprint(names, tmp_path, content=True)
    assert by_content != data_fingerprint(names, tmp_path)
    os.utime(tmp_path / "x.jpg", ns=(0, 10**9))
    assert data_fingerprint(names, tmp_path, content=True) == by_content  # mtime ignored
    (tmp_path / "x.jpg").write_bytes(b"changed")
    assert data_fingerprint(names, tmp_path, content=True) != by_content


def test_fingerprint_missing_file_is_named(tmp_path: Path) -> None:
    _make_files(tmp_path, ["ok.png"])
    with pytest.raises(DataError, match="gone.png") as info:
        data_fingerprint(["ok.png", "gone.png"], tmp_path)
    assert info.value.exit_code == 2
    with pytest.raises(DataError, match="not regular files"):
        data_fingerprint(["."], tmp_path)


def test_manifest_fingerprint(tmp_path: Path) -> None:
    names = ["c/1.png", "c/2.png"]
    _make_files(tmp_path, names)
    frame = pd.DataFrame({"path": names, "label": [0, 1]})
    assert manifest_fingerprint(frame, tmp_path) == data_fingerprint(names, tmp_path)
    with pytest.raises(DataError, match="'path' column"):
        manifest_fingerprint(frame.rename(columns={"path": "file"}), tmp_path)
    with pytest.raises(DataError, match="no path"):
        manifest_fingerprint(pd.DataFrame({"path": ["c/1.png", None]}), tmp_path)


def test_fingerprint_is_cheap_for_many_files(tmp_path: Path) -> None:
    names = [f"d{i % 10}/{i}.png" for i in range(5000)]
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    for name in names:
        (tmp_path / name).touch()
    started = time.perf_counter()
    fingerprint = data_fingerprint(names, tmp_path)
    assert time.perf_counter() - started < 2.0
    assert fingerprint.endswith("/5000")


# --------------------------------------------------------------------------- run files and format version


def test_run_json_records_the_format_version_and_refuses_a_newer_one(tmp_path: Path) -> None:
    from toolkit.store import FORMAT_VERSION

    run = RunStore(tmp_path).create("train", name="v")
    assert run.info["format_version"] == FORMAT_VERSION
    info = read_json(run.path / "run.json")
    info["format_version"] = FORMAT_VERSION + 1
    (run.path / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="newer clsctl"):
        _ = Run(run.path).info
    del info["format_version"]  # folders written before the key existed stay readable
    (run.path / "run.json").write_text(json.dumps(info))
    assert Run(run.path).kind == "train"


def test_run_files_round_trip(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from toolkit.store.tables import probability_frame

    run = RunStore(tmp_path).create("train", name="files")
    run.write_classes(["label"], {"label": ["b", "a"]})
    assert run.read_classes() == (["label"], {"label": ["b", "a"]})
    run.write_manifest(pd.DataFrame({"path": ["x/001.png", "y/002.png"], "label": ["b", "a"], "fold": [0, 1]}))
    manifest = run.read_manifest()
    assert manifest["path"].tolist() == ["x/001.png", "y/002.png"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    frame = probability_frame(["001", "002"], ["x/001.png", "y/002.png"], {"label": probs}, {"label": ["b", "a"]},
                              folds=[0, 1], labels={"label": np.array([0, 1])})
    assert list(frame.columns) == ["id", "path", "fold", "label", "pred", "b", "a"]
    assert frame["pred"].tolist() == ["b", "a"] and frame["b"].dtype == np.float32
    run.write_oof(frame)
    pd.testing.assert_frame_equal(run.read_oof(), frame)
    files = run.write_predictions("test-hflip", frame.drop(columns=["fold", "label", "pred"]), None, {"n": 2})
    assert sorted(files) == ["json", "parquet"] and list(run.prediction_sets()) == ["test-hflip"]
    assert run.read_predictions("test-hflip")["id"].tolist() == ["001", "002"]
    for bad in ("../run", "/abs/x", "a/b", ".hidden"):
        with pytest.raises(RunError, match="not a plain name"):
            run.prediction_path(bad)
    with pytest.raises(RunError, match="no prediction set 'nope'"):
        run.read_predictions("nope")


def test_probability_tables_are_written_as_the_column_by_column_layout_was(tmp_path: Path) -> None:
    """One float32 block per head and no in-memory file: the frame, its Parquet and CSV bytes stay as they were."""
    import io

    from toolkit.store.tables import probability_frame, write_table

    rng = np.random.default_rng(0)
    heads = {"mask": ["on", "off", "bad"], "age": ["young", "old"]}
    probs = {"mask": rng.random((7, 3)), "age": rng.random((7, 2)).astype(np.float32)}
    labels = {h: rng.integers(0, len(c), 7) for h, c in heads.items()}
    ids, paths = [f"{i:03d}" for i in range(7)], [f"x/{i}.png" for i in range(7)]
    frame = probability_frame(ids, paths, probs, heads, folds=np.arange(7) % 3, labels=labels)
    columns: dict[str, object] = {"id": ids, "path": paths, "fold": np.arange(7) % 3}
    for h, names in heads.items():
        columns[f"label:{h}"] = np.asarray(names, dtype=object)[labels[h]]
        columns[f"pred:{h}"] = np.asarray(names, dtype=object)[probs[h].argmax(1)]
        columns.update({f"{h}:{c}": probs[h][:, i].astype(np.float32) for i, c in enumerate(names)})
    expected = pd.DataFrame(columns)
    pd.testing.assert_frame_equal(frame, expected)
    probs["age"][:] = 0.5  # the frame holds its own copy, even of float32 input
    assert frame["age:old"].tolist() != [0.5] * 7
    expected["age:old"] = frame["age:old"]
    buffer = io.BytesIO()
    expected.to_parquet(buffer, index=False)
    assert write_table(frame, tmp_path / "t.parquet").read_bytes() == buffer.getvalue()
    odd = pd.DataFrame({"id": ["a,b", 'say "hi"', "two\nlines", "ü"], "p": [0.25, 1e-20, float("nan"), 3.0]})
    assert write_table(odd, tmp_path / "t.csv").read_bytes() == odd.to_csv(index=False,
                                                                            lineterminator="\n").encode()
