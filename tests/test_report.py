"""`clsctl report`: the significance column on constructed OOF rows, baselines and diffs, and the page in a browser."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, chromium_playwright, watch
from PIL import Image
from rungen import BASE_RECIPE, merged, probabilities, train_run

from toolkit.cli.main import run as cli
from toolkit.errors import RunError, UsageError
from toolkit.metrics import classification_metrics
from toolkit.report.compare import Paired, compare_paired, score
from toolkit.report.experiment import build_report
from toolkit.report.experiment_html import write_report
from toolkit.store import RunStore

HOSTILE = "<img src=x onerror=alert(1)>"
N, FOLDS = 2000, 5


def _rows(n: int = N, n_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_classes, n), np.arange(n) % FOLDS


def _fix(labels: np.ndarray, probs: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    """A copy of ``probs`` with ``share`` of all rows, all of them wrong before, made right."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    chosen = rng.choice(wrong, int(share * labels.shape[0]), replace=False)
    fixed = probs.copy()
    fixed[chosen] = 0.05 / (probs.shape[1] - 1)
    fixed[chosen, labels[chosen]] = 0.95
    return fixed


# --------------------------------------------------------------------------- the statistics
@pytest.mark.parametrize("metric", ["macro_f1", "accuracy", "balanced_accuracy", "log_loss"])
def test_resample_scores_match_the_metrics_module(metric):
    labels, _ = _rows(500, 6)
    labels[labels == 5] = 4  # a class with no true row: macro-F1 still divides by every class
    probs = probabilities(labels, 6, 0.6, seed=3)
    expected = classification_metrics(labels, probs, [str(c) for c in range(6)])[metric]
    assert score(metric, labels, probs) == pytest.approx(expected, abs=1e-9)


def test_identical_runs_are_within_noise():
    labels, folds = _rows()
    probs = probabilities(labels, 4, 0.7, seed=2)
    sig = compare_paired("macro_f1", Paired(labels, probs, probs.copy(), folds))
    assert sig.verdict == "within noise"
    assert sig.bootstrap.delta == 0 and sig.bootstrap.low == 0 and sig.bootstrap.high == 0
    assert sig.folds.delta == 0 and sig.folds.n == FOLDS


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy", "log_loss"])
def test_fixing_five_percent_of_rows_is_better_and_breaking_them_is_worse(metric):
    labels, folds = _rows()
    base = probabilities(labels, 4, 0.7, seed=2)
    fixed = _fix(labels, base, 0.05)
    better = compare_paired(metric, Paired(labels, base, fixed, folds))
    assert better.verdict == "better"
    sign = 1 if metric != "log_loss" else -1
    assert sign * better.bootstrap.low > 0 and sign * better.folds.low > 0
    assert better.bootstrap.low <= better.bootstrap.delta <= better.bootstrap.high
    worse = compare_paired(metric, Paired(labels, fixed, base, folds))
    assert worse.verdict == "worse"
    assert worse.bootstrap.delta == pytest.approx(-better.bootstrap.delta)


def test_a_tiny_change_is_within_noise_and_the_seed_fixes_the_interval():
    labels, folds = _rows()
    base = probabilities(labels, 4, 0.7, seed=2)
    nudged = _fix(labels, base, 0.002)
    a = compare_paired("macro_f1", Paired(labels, base, nudged, folds), seed=7)
    b = compare_paired("macro_f1", Paired(labels, base, nudged, folds), seed=7)
    assert a.verdict == "within noise" and a.bootstrap.delta > 0
    assert a == b


def test_different_splits_give_only_the_bootstrap():
    labels, folds = _rows()
    base = probabilities(labels, 4, 0.7, seed=2)
    sig = compare_paired("macro_f1", Paired(labels, base, _fix(labels, base, 0.05), None))
    assert sig.folds is None and sig.verdict == "better" and "differently" in sig.note


# --------------------------------------------------------------------------- baselines, diffs, the table
@pytest.fixture
def runs(tmp_path):
    """A baseline, a one-key change that fixes 5% of rows, a two-key change, and an ensemble of them."""
    root = tmp_path / "runs"
    classes = ["cat", "dog", HOSTILE, "bird"]
    labels, folds = _rows()
    base_p = probabilities(labels, 4, 0.7, seed=2)
    base = train_run(root, "base", classes=classes, labels=labels, probs=base_p, folds=folds)
    focal = train_run(root, "focal", classes=classes, labels=labels, probs=_fix(labels, base_p, 0.05), folds=folds,
                      recipe=merged(BASE_RECIPE, {"loss.name": "focal"}))
    both = train_run(root, "two-keys", classes=classes, labels=labels, probs=probabilities(labels, 4, 0.7, seed=9),
                     folds=folds, recipe=merged(BASE_RECIPE, {"optim.lr": 3e-4, "data.image_size": 64}))
    ens = RunStore(root).create("ensemble", name="ens", parents=[base, focal], extra={"vote": "soft"})
    avg = base_p  # no better than its best member: the focal run stays on top
    from toolkit.store.tables import probability_frame

    ids = [f"img/{i:06d}.png" for i in range(N)]
    ens.write_oof(probability_frame(ids, ids, {"label": avg}, {"label": classes}, folds=folds,
                                    labels={"label": labels}))
    ens.update_summary({"kind": "ensemble", "metric": "macro_f1", "vote": "soft", "heads": ["label"],
                        "classes": {"label": classes}, "oof": classification_metrics(labels, avg, classes),
                        "members": [{"name": "base", "source": base.id, "weight": 0.5, "oof": {"macro_f1": 0.5}},
                                    {"name": "focal", "source": focal.id, "weight": 0.5, "oof": {"macro_f1": 0.6}}],
                        "per_class": {"classes": classes, "members": {"focal": {c: 0.5 for c in classes}},
                                      "ensemble": {c: 0.6 for c in classes}}})
    ens.finish()
    return root, {"base": base, "focal": focal, "both": both, "ens": ens}


def test_baselines_diffs_and_verdicts(runs):
    root, r = runs
    report = build_report([str(root / "*")], runs_root=root, resamples=300)
    changes = report.changes
    assert report.metric == "macro_f1"
    assert report.entries[0].id == r["focal"].id  # the best CV macro-F1 leads
    assert changes[r["focal"].id].baseline is None  # the best run is its own baseline
    base_change = changes[r["base"].id]
    assert base_change.reason == "best" and base_change.baseline == r["focal"].id
    assert [k for k, _, _ in base_change.keys] == ["loss.name"] and not base_change.flagged
    assert base_change.significance.verdict == "worse"
    two = changes[r["both"].id]
    assert {k for k, _, _ in two.keys} == {"loss.name", "optim.lr", "data.image_size"} and two.flagged
    ens = changes[r["ens"].id]
    assert ens.reason == "parent" and ens.baseline == r["focal"].id and not ens.comparable

    given = build_report([r["focal"].id, r["both"].id], runs_root=root, baseline="base", resamples=300)
    focal = given.changes[r["focal"].id]
    assert focal.reason == "given" and focal.baseline == r["base"].id
    assert [(k, a, b) for k, a, b in focal.keys] == [("loss.name", "ce", "focal")]
    assert focal.significance.verdict == "better" and focal.delta > 0
    assert given.changes[r["both"].id].flagged
    assert {e.id for e in given.entries} == {r["focal"].id, r["both"].id, r["base"].id}


def test_a_retrained_run_is_set_against_the_run_it_cleaned(runs):
    root, r = runs
    clean = RunStore(root).create("clean", name="c", parents=[r["base"]])
    clean.update_summary({"heads": {"label": {"issues": 3, "rows": N, "score": 0.9, "filter_by": "x"}}, "conflicts": 0})
    clean.finish()
    labels, folds = _rows()
    retrained = train_run(root, "retrained", classes=["cat", "dog", HOSTILE, "bird"], labels=labels,
                          probs=probabilities(labels, 4, 0.72, seed=5), folds=folds, parents=[clean.id],
                          recipe=merged(BASE_RECIPE, {"data.manifest": "clean_manifest.csv"}))
    report = build_report([str(root / "*")], runs_root=root, resamples=200)
    change = report.changes[retrained.id]
    assert change.reason == "parent" and change.baseline == r["base"].id
    assert [k for k, _, _ in change.keys] == ["data.manifest"]


def test_bad_options_and_missing_runs_fail_in_one_line(runs, tmp_path, capsys):
    root, _ = runs
    with pytest.raises(UsageError, match="metric"):
        build_report([str(root / "*")], runs_root=root, metric="f2")
    with pytest.raises(UsageError, match="top-classes"):
        build_report([str(root / "*")], runs_root=root, top_classes=0)
    with pytest.raises(RunError, match="no run"):
        build_report(["nothing-like-this"], runs_root=root)
    report = build_report([str(root / "*")], runs_root=root, resamples=50)
    for bad, words in ((tmp_path, "is a folder"), (tmp_path / "r.txt", ".html"), (tmp_path / "no" / "r.html", "exist")):
        with pytest.raises(UsageError, match=words):
            write_report(report, bad)
    assert not list(tmp_path.glob("*.html"))
    code = cli(["report", str(root / "*"), "--runs", str(root), "--metric", "f2", "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "f2" in err[0]
    assert not (tmp_path / "x.html").exists()


# --------------------------------------------------------------------------- the page
def _image_runs(tmp_path):
    """Two real-image train runs (one image missing from disk), a failed run, a stale one, an EDA folder."""
    data = tmp_path / "data"
    classes = ["red", HOSTILE]
    paths = []
    for i in range(40):
        folder = data / ("red" if i % 2 == 0 else "other")
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(f"{folder.name}/{i:03d}.png")
        Image.new("RGB", (20, 16), (200, 20, 20) if i % 2 == 0 else (20, 20, 200)).save(data / paths[-1])
    os.remove(data / paths[1])  # recorded in the manifest, gone from disk
    labels = np.arange(40) % 2
    folds = np.arange(40) % 2
    root = tmp_path / "runs"
    a = train_run(root, "a", classes=classes, labels=labels, probs=probabilities(labels, 2, 0.5, seed=1),
                  folds=folds, paths=paths, data_root=str(data))
    train_run(root, "b", classes=classes, labels=labels, probs=probabilities(labels, 2, 0.6, seed=2), folds=folds,
              paths=paths, data_root=str(data), recipe=merged(BASE_RECIPE, {"optim.lr": 0.01}))
    failed = RunStore(root).create("train", name="failed", recipe="[train]\nepochs = 3\n")
    failed.fail("CUDA out of memory")
    stale = RunStore(root).create("train", name="stale", recipe="[train]\nepochs = 3\n")
    stale.update_info(pid=2**22 + 12345)  # no such process: killed without a trace
    stale.append_metrics({"fold": 0, "epoch": 0, "train_loss": 1.0, "val_loss": 1.1, "macro_f1": 0.4, "lr": 1e-3})
    eda = tmp_path / "eda"
    eda.mkdir()
    (eda / "eda.json").write_text(json.dumps({"images": {"total": 40, "unreadable": 1}, "label_column": "label",
                                              "targets": {"label": {"red": 20, HOSTILE: 20}}}))
    (eda / "eda.html").write_text("<html><body>eda</body></html>")
    return root, a, eda


def test_cli_writes_the_page_and_escapes_every_name(tmp_path, capsys):
    root, a, eda = _image_runs(tmp_path)
    out = tmp_path / "report.html"
    code = cli(["report", str(root / "*"), str(eda), "--runs", str(root), "--out", str(out), "--resamples", "100"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "leaderboard by macro_f1" in printed and "what changed" in printed and "optim.lr" in printed
    assert re.search(r"failed\s", printed) and "stopped" in printed and "CUDA out of memory" in printed
    page = out.read_text()
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<script>") == 1  # the charts' zoom handler, nothing else
    assert 'href="eda/eda.html"' in page
    assert "missing:" in page  # the deleted image is named, not drawn broken



def test_page_in_headless_chromium(tmp_path, runs):
    sync_playwright = chromium_playwright()
    root, a, eda = _image_runs(tmp_path / "img")
    synth_root, _ = runs
    report = build_report([str(root / "*"), str(eda), str(synth_root / "*")], resamples=100)
    out = write_report(report, tmp_path / "report.html")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            seen = watch(page)
            page.goto(out.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth])")
            charts = page.evaluate("document.querySelectorAll('svg.chart').length")
            text = page.inner_text("body")
            chart = page.locator("svg[data-zoom]").first
            before = chart.get_attribute("viewBox")
            chart.hover()
            page.mouse.wheel(0, -300)
            zoomed = chart.get_attribute("viewBox")
            chart.dblclick()
            reset = chart.get_attribute("viewBox")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert seen["console"] == [] and seen["errors"] == [] and seen["dialogs"] == []
    assert images and all(done and width > 0 for done, width in images)
    assert all(url.startswith(("file://", "data:")) for url in seen["requests"]), seen["requests"]
    assert charts >= 6
    assert HOSTILE in text  # shown as text, not run as markup
    box = [float(x) for x in before.split()]
    assert [float(x) for x in zoomed.split()] != box and [float(x) for x in reset.split()] == box
    assert (tmp_path / "report.png").stat().st_size > 10_000
    shots = os.environ.get("CLSCTL_SCREENSHOTS")
    if shots:  # keep the picture for a person to look at
        Path(shots).mkdir(parents=True, exist_ok=True)
        (Path(shots) / "report.png").write_bytes((tmp_path / "report.png").read_bytes())


def test_aligning_shuffled_rows_gives_the_same_answer_as_aligned_ones():
    import pandas as pd

    from toolkit.report.compare import align
    from toolkit.store.tables import probability_frame

    labels, folds = _rows(300)
    classes = ["a", "b", "c", "d"]
    a_p, b_p = probabilities(labels, 4, 0.7, seed=1), probabilities(labels, 4, 0.8, seed=2)
    ids = [f"{i}.png" for i in range(300)]
    a = probability_frame(ids, ids, {"label": a_p}, {"label": classes}, folds=folds, labels={"label": labels})
    b = probability_frame(ids, ids, {"label": b_p}, {"label": classes}, folds=folds, labels={"label": labels})
    b.loc[5, "label"] = "b" if b.loc[5, "label"] != "b" else "c"  # relabelled since: not a shared row
    fast = align(a, b, classes)
    shuffled = align(a, pd.concat([b.iloc[150:], b.iloc[:150]]), classes)
    assert fast.rows == shuffled.rows == 299
    # An inner join keeps the baseline's row order, so both ways give the same rows in the same order.
    assert np.array_equal(fast.labels, shuffled.labels) and np.array_equal(fast.folds, shuffled.folds)
    assert np.allclose(fast.new, shuffled.new) and np.allclose(fast.base, shuffled.base)


# --------------------------------------------------------------------------- odd folders
def test_damaged_folders_killed_runs_and_eda_globs(runs, tmp_path, capsys):
    root, r = runs
    broken = root / "20990101-000000-broken"
    broken.mkdir()
    (broken / "run.json").write_text("{ not json")
    binary = RunStore(root).create("train", name="binary-recipe")
    (binary.path / "recipe.toml").write_bytes(b"\xff\xfe\x00 not text")
    binary.finish()
    # killed in fold 0: its best-marked epoch scored 0.31, a later epoch 0.99 under the ranking metric
    killed = RunStore(root).create("train", name="killed", recipe="[train]\nepochs = 3\n")
    killed.update_info(pid=2**22 + 4242)
    for epoch, (f1, best) in enumerate([(0.31, True), (0.99, False)]):
        killed.append_metrics({"fold": 0, "epoch": epoch, "macro_f1": f1, "val_loss": 1.0 - f1 / 2, "best": best})
    eda_dir = tmp_path / "eda" / "train"
    eda_dir.mkdir(parents=True)
    (eda_dir / "eda.json").write_text(json.dumps({
        "images": {"total": 10, "readable": 10, "unreadable": 0}, "label_column": "label",
        "targets": {"label": {"a": 5, "b": 5}},
        "duplicates": {"pairs": {"exact": 2, "near": 3}, "label_conflicts": {"count": 1, "items": [["x", "y"]]}},
        "shortcuts": {"findings": [{"feature": "format", "strength": 1.0}], "metadata_model": {}}}))
    report = build_report([str(root / "*"), str(tmp_path / "eda" / "*")], runs_root=root, resamples=50)
    by_id = {e.id: e for e in report.entries}
    assert by_id[broken.name].status == "unreadable"
    assert any("recipe.toml unreadable" in n for n in by_id[binary.id].notes)
    assert by_id[killed.id].status == "stopped" and by_id[killed.id].cv("macro_f1")[0] == pytest.approx(0.31)
    assert by_id[killed.id].seconds is None  # no end time: the wall time is unknown, not still growing
    assert report.best().id == r["focal"].id and report.changes[r["base"].id].baseline == r["focal"].id
    ranked = [e.id for e in report.entries]
    assert ranked.index(killed.id) > ranked.index(r["base"].id)  # partial numbers rank below finished runs
    assert "train" in by_id and by_id["train"].kind == "eda"
    from toolkit.report.experiment_views import headline

    assert dict(headline(by_id["train"]))["duplicate pairs"] == "5"
    assert dict(headline(by_id["train"]))["label conflicts"] == "1"
    assert dict(headline(by_id["train"]))["shortcuts"] == "1 flagged; strongest: format (strength 1)"
    out = tmp_path / "r.html"
    assert cli(["report", str(root / "*"), str(tmp_path / "eda" / "*"), "--runs", str(root), "--out", str(out),
                "--resamples", "50"]) == 0
    assert "unreadable" in capsys.readouterr().out and out.is_file()


def test_a_named_single_head_is_compared_with_an_ensemble_and_resamples_must_be_positive(tmp_path):
    root = tmp_path / "runs"
    labels, folds = _rows(500)
    classes = ["a", "b", "c", "d"]
    probs = probabilities(labels, 4, 0.7, seed=2)
    species = train_run(root, "species", classes=classes, labels=labels, probs=probs, folds=folds)
    species.update_summary({"heads": ["species"], "classes": {"species": classes}})
    ens = RunStore(root).create("ensemble", name="ens", parents=[species])
    from toolkit.store.tables import probability_frame

    ids = [f"img/{i:06d}.png" for i in range(500)]
    better = _fix(labels, probs, 0.05)
    ens.write_oof(probability_frame(ids, ids, {"label": better}, {"label": classes}, folds=folds,
                                    labels={"label": labels}))
    ens.update_summary({"metric": "macro_f1", "heads": ["label"], "classes": {"label": classes},
                        "oof": classification_metrics(labels, better, classes)})
    ens.finish()
    report = build_report([str(root / "*")], runs_root=root, resamples=200)
    sig = report.changes[ens.id].significance
    assert report.changes[ens.id].baseline == species.id and sig is not None and sig.verdict == "better"
    with pytest.raises(UsageError, match="resamples"):
        build_report([str(root / "*")], runs_root=root, resamples=0)


def test_top_loss_explanations_are_embedded_and_only_from_their_folder(tmp_path, runs):
    from toolkit.report.experiment_views import explanation_cards
    from toolkit.store.exports import write_explanations

    root, r = runs
    folder = r["focal"].explain_dir()
    folder.mkdir(parents=True)
    Image.new("RGB", (30, 20), (200, 30, 30)).save(folder / "0000.png")
    (folder / "fake.png").write_text("<script>alert(1)</script>")  # not a PNG: never embedded
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    item = {"label": HOSTILE, "pred": "cat", "prob_label": 0.01, "prob_pred": 0.97, "path": "img/000001.png"}
    write_explanations(folder, {"method": "gradcam", "items": [
        {**item, "png": "0000.png"}, {**item, "png": "fake.png"}, {**item, "png": "../../../outside.png"},
        {**item, "png": str(outside)}]})
    report = build_report([str(root / "*")], runs_root=root, resamples=50)
    entry = next(e for e in report.entries if e.id == r["focal"].id)
    cards = explanation_cards(entry)
    assert len(cards) == 1 and cards[0]["uri"].startswith("data:image/png;base64,")
    page = write_report(report, tmp_path / "r.html").read_text()
    assert "Grad-CAM of the top losses" in page and HOSTILE not in page
