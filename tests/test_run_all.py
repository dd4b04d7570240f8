"""benchmarks/run_all.py: one table from many benchmark processes, failures reported, not fatal."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202 - the module
    spec = importlib.util.spec_from_file_location("run_all_under_test", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def run_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201 - the module
    module = _load(monkeypatch)
    # a stand-in for the shared data, so the script's own check passes
    data = tmp_path / "data"
    (data / "facemask-3class").mkdir(parents=True)
    (data / "facemask-3class" / "manifest.csv").write_text("path,label\n")
    monkeypatch.setattr(module, "DATA", data)
    return module


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_markdown_tables_reads_every_table_and_skips_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(monkeypatch)
    text = ("progress line\n| a | b |\n|---|---:|\n| 1 | x |\n| 2 | y |\n\nmore\n"
            "| views | ratio |\n|---|---|\n| none | 1.05 |\n")
    tables = module.markdown_tables(text)
    assert tables == [[{"a": "1", "b": "x"}, {"a": "2", "b": "y"}], [{"views": "none", "ratio": "1.05"}]]
    assert module.table_with(text, "ratio") == [{"views": "none", "ratio": "1.05"}]
    with pytest.raises(module.StepFailed, match="no table with a 'missing' column"):
        module.table_with(text, "missing")


def test_a_failing_step_is_reported_and_the_others_still_run(run_all, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def good(ctx):  # noqa: ANN001, ANN202
        out = ctx.run("good", _python("print('| k | v |'); print('|---|---|'); print('| speed | 1.5 |')"),
                      "python good.py")
        value = run_all.table_with(out, "v")[0]["v"]
        return [run_all.Row("good bench", "quick" if ctx.quick else "full", f"ratio {value}")]

    def bad(ctx):  # noqa: ANN001, ANN202
        ctx.run("bad", _python("import sys; print('working'); sys.stderr.write('ValueError: no such image\\n');"
                               "sys.exit(3)"), "python bad.py --flag")
        return []

    monkeypatch.setattr(run_all, "STEPS", {"good": good, "bad": bad, "after": good})
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        run_all.main()
    assert exc.value.code == 1
    printed = capsys.readouterr().out
    assert "| good bench | quick | ratio 1.5 |" in printed
    assert "**FAILED**: `python bad.py --flag` exited 3: ValueError: no such image" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == ["good", "bad", "after"]  # the step after the failure ran
    assert summary["steps"][2]["rows"][0]["result"] == "ratio 1.5"
    assert summary["quick"] is True and summary["machine"]["cores"] >= 1
    assert "torch" in summary["machine"]["packages"]
    assert "working" in (out / "logs" / "bad.log").read_text()
    assert (out / "summary.md").read_text().count("python good.py") == 2  # every command is listed


def test_all_steps_passing_exits_zero_and_a_rerun_empties_its_own_folder(run_all, monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(run_all, "STEPS", {"only": lambda ctx: [run_all.Row("b", "s", "r | with a bar")]})
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        run_all.main()
    assert exc.value.code == 0
    (out / "stale").mkdir()  # what the next run must remove
    with pytest.raises(SystemExit) as exc:
        run_all.main()
    assert exc.value.code == 0
    assert not (out / "stale").exists()
    assert "| b | s | r \\| with a bar |" in (out / "summary.md").read_text()


def test_a_folder_it_did_not_write_is_never_emptied(run_all, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "checkout"
    out.mkdir()
    (out / "README.md").write_text("precious")
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        run_all.main()
    assert exc.value.code == 2
    assert "holds files this script did not write" in capsys.readouterr().err
    assert (out / "README.md").read_text() == "precious"


@pytest.mark.parametrize(("only", "message"), [
    ("decode,nonsense", "unknown step(s) nonsense"),
    ("ensemble", "add facemask to --only"),
])
def test_bad_step_lists_are_refused_before_anything_runs(run_all, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture, only: str,
                                                         message: str) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", only, "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        run_all.main()
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_shared_data_is_one_line(run_all, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(run_all, "DATA", tmp_path / "nowhere")
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exc:
        run_all.main()
    assert exc.value.code == 2
    assert "set CLSCTL_DATA" in capsys.readouterr().err
