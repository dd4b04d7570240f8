"""`clsctl report` shows each run's calibration, an ensemble's decision rule and composition, and leaves older runs as they were."""

from __future__ import annotations

import re

import numpy as np
import pytest
from attrgen import attribute_rows, attribute_runs
from rungen import imbalanced, probabilities, train_run

from toolkit.calibration import log_probs
from toolkit.cli.main import run as cli
from toolkit.ensemble import ensemble
from toolkit.report.experiment import build_report
from toolkit.report.experiment_html import write_report
from toolkit.report.records import calibration_blocks, composition_view, decision_marker, decision_view
from toolkit.store.atomic import atomic_write_json
from toolkit.train.results import run_calibration

HOSTILE = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
CLASSES = ["common", HOSTILE, "rarer"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A calibrated train run, an old one without a record, tuned / refused / composed ensembles, an old ensemble."""
    root = tmp_path_factory.mktemp("runs")
    z, y = imbalanced(1500, seed=4)
    folds = np.arange(y.size) % 5
    tuned_run = train_run(root, "imb", classes=CLASSES, labels=y, probs=np.exp(z), folds=folds)
    run_calibration(tuned_run)  # what training records when it finishes
    perfect = log_probs(np.eye(3)[y] * 0.9 + 0.05)  # nothing left to gain: offsets are refused
    sure = train_run(root, "sure", classes=CLASSES, labels=y, probs=np.exp(perfect), folds=folds)
    old = train_run(root, "old", classes=CLASSES, labels=y, probs=probabilities(y, 3, 0.7, seed=1), folds=folds)
    tuned = ensemble([tuned_run.path], decide="f1", calibrate="temperature", runs_root=root, name="tuned").run
    refused = ensemble([sure.path], decide="f1", runs_root=root, name="refused").run
    plain = ensemble([old.path, sure.path], runs_root=root, name="plain").run
    # As written before ensembles recorded decisions: the records taken out again.
    atomic_write_json(plain.summary_path, {k: v for k, v in plain.summary.items()
                                           if k not in ("decision", "calibration", "composed")})
    rows = attribute_rows(people=30)
    parts = attribute_runs(root, rows)
    composed = ensemble([f"{p}={r.path}" for p, r in parts.items()], compose=True, calibrate="temperature",
                        runs_root=root, name="composed").run
    return root, {"imb": tuned_run, "sure": sure, "old": old, "tuned": tuned, "refused": refused, "plain": plain,
                  "composed": composed, **parts}


def _entries(root):
    report = build_report([str(root / "*")], runs_root=root, resamples=50)
    return report, {e.id: e for e in report.entries}


def _section(page: str, run_id: str) -> str:
    """The page's section of one run."""
    for part in page.split('<section class="run"')[1:]:
        if re.search(rf"<h3>{re.escape(run_id)} ", part):
            return part.split("</section>")[0]
    raise AssertionError(f"no section for {run_id}")


def test_records_read_from_runs_with_and_without_them(runs):
    root, r = runs
    _, by_id = _entries(root)
    imb, old = by_id[r["imb"].id], by_id[r["old"].id]
    [block] = calibration_blocks(imb)
    record = r["imb"].summary["calibration"]["label"]
    methods = {row[0]: row for row in block["rows"]}
    assert set(methods) == {"temperature", "vector"} and block["head"] == "label"
    assert methods["temperature"][1] == f"T = {record['temperature']['temperature']:.3f}"
    assert methods["temperature"][3] == (f"{record['before']['ece']:.4f} → "
                                         f"{record['temperature']['after']['ece']:.4f}")
    assert methods["temperature"][4] == "cross-fitted over 5 folds"
    assert calibration_blocks(old) == [] and decision_view(old) is None and decision_marker(old) == ""

    tuned = by_id[r["tuned"].id]
    view = decision_view(tuned)
    assert view["tuned"] and not view["refused"] and view["offsets"]
    gain = r["tuned"].summary["decision"]["crossfit_gain"]
    assert gain > 0 and decision_marker(tuned) == f"f1 offsets {gain:+.4f} cross-fitted; temperature calibrated"
    assert [row[0].split(" ")[0] for row in view["scores"]] == ["cross-fitted", "in-sample"]
    [members] = calibration_blocks(tuned)
    assert [row[0] for row in members["rows"]] == ["imb"] and "→" in members["rows"][0][3]

    refused = by_id[r["refused"].id]
    assert decision_view(refused)["refused"] and "refused" in decision_view(refused)["note"]
    assert decision_marker(refused) == "argmax (offsets refused)"
    plain = by_id[r["plain"].id]
    assert decision_view(plain) is None and calibration_blocks(plain) == [] and decision_marker(plain) == ""

    composed = composition_view(by_id[r["composed"].id])
    assert composed["formula"] == "mask × gender × age"
    assert composed["calibrated"] == "calibrated (temperature) before the product"
    assert [row[0] for row in composed["rows"]] == ["mask", "gender", "age", f"combined: {composed['into']}"]
    assert composed["rows"][-1][3] == "18"
    assert composition_view(by_id[r["tuned"].id]) is None


def test_page_shows_the_records_next_to_the_reliability_chart_and_escapes_them(runs, tmp_path):
    root, r = runs
    # A hostile note and method, as a damaged or hand-edited record could hold.
    hostile = ensemble([r["sure"].path], decide="f1", runs_root=root, name="hostile").run
    hostile.update_summary(decision={**hostile.summary["decision"], "note": HOSTILE},
                           calibration={"method": HOSTILE, "where": HOSTILE, "members": {"sure": None}})
    try:
        report, by_id = _entries(root)
        page = write_report(report, tmp_path / "report.html").read_text()
    finally:
        import shutil

        shutil.rmtree(hostile.path)
    assert HOSTILE not in page and ESCAPED in page

    imb = _section(page, r["imb"].id)
    before_ece = r["imb"].summary["calibration"]["label"]["before"]["ece"]
    # The recorded "before" is the reliability diagram's ECE: one definition, the same rows.
    assert f"Calibration: ECE {before_ece:.4f}</h4>" in imb
    assert imb.index("Recorded calibration") > imb.index("reliability, label")
    assert "T = " in imb and "cross-fitted over 5 folds" in imb

    tuned = _section(page, r["tuned"].id)
    assert "Decision: macro-F1 offsets on the log soft vote" in tuned and "in-sample (optimistic" in tuned
    assert ESCAPED in tuned  # the class name in the offsets table
    assert "temperature calibration, each run member, before voting" in tuned
    refused = _section(page, r["refused"].id)
    assert "Offsets for macro_f1 were asked for and refused" in refused and "f1 offsets refused: cross-fitted" in refused
    comp = _section(page, r["composed"].id)
    assert "Composed: " in comp and "mask × gender × age" in comp and "combined: " in comp
    assert "temperature calibration, each part, before the product; each part run" in comp
    assert "Recorded calibration" in _section(page, r["age"].id)  # the part's own numbers

    for old in ("old", "plain"):
        section = _section(page, r[old].id)
        assert "Recorded calibration" not in section and "Decision:" not in section and "Composed:" not in section
    board = page.split('id="leaderboard"')[1].split("</table>")[0]
    assert "<th>decision</th>" in board
    rows = {m.group(1): m.group(2) for m in re.finditer(r'>([^<>]+)</a></td>.*?<td class="decision">(.*?)</td>',
                                                        board, re.S)}
    assert rows[r["old"].id] == "" and rows[r["plain"].id] == "" and rows[r["imb"].id] == ""
    assert rows[r["tuned"].id].startswith("f1 offsets +") and rows[r["refused"].id] == "argmax (offsets refused)"


def test_terminal_leaderboard_marks_tuned_decisions(runs, tmp_path, capsys):
    root, r = runs
    assert cli(["report", r["tuned"].id, r["old"].id, "--runs", str(root), "--out", str(tmp_path / "r.html"),
                "--resamples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "decision" in printed and "f1 offsets +" in printed
