"""clsctl ensemble: voting rules, weight fitting, greedy selection, alignment checks, the ensemble run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder, write_recipe
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.ensemble import (
    bagged_greedy,
    combine,
    crossfit_labels,
    ensemble,
    fast_score,
    fit_weights,
    greedy_select,
    hard_vote,
    rank_average,
    soft_vote,
)
from toolkit.errors import DataError, UsageError

CLASSES = ["blue", "green", "red"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three 3-fold runs with different settings, each with a prediction set `test` on the same images."""
    from toolkit.predict import predict
    from toolkit.train.trainer import Trainer

    base = tmp_path_factory.mktemp("ens")
    images = make_imagefolder(base / "train", per_class=12)
    test = base / "test"
    test.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)).save(test / f"t{i}.png")
    settings = {
        "ce": {"train": {"epochs": 2}},
        "focal": {"loss": {"name": "focal"}, "aug": {"preset": "none"}, "train": {"epochs": 1}},
        "resnet": {"model": {"name": "test_resnet"}, "train": {"epochs": 1, "seed": 3}},
    }
    out = {}
    for name, extra in settings.items():
        recipe = load_recipe(write_recipe(base / f"{name}.toml", images, **extra))
        run = Trainer(recipe, runs_root=base / "runs", name=name, progress=False).run()
        predict(run, test, name="test", workers=0, progress=False)
        out[name] = run
    return {"base": base, "root": base / "runs", **out}


# --------------------------------------------------------------------------- voting rules by hand
def test_soft_vote_by_hand():
    p1 = np.array([[0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.2, 0.8], [0.6, 0.4]])
    np.testing.assert_allclose(soft_vote([p1, p2], [3, 1]), [[0.5, 0.5], [0.3, 0.7]])
    np.testing.assert_allclose(soft_vote([p1, p2]), [[0.4, 0.6], [0.4, 0.6]])


def test_hard_vote_by_hand_with_ties_and_label_members():
    m1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5]])  # votes 0, 1, 2
    m2 = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]])  # votes 1, 2, 2
    m3 = np.array([1, 0, 0])  # a submission CSV: labels only
    # row 1 is a three-way tie: the mean probability of m1, m2 is [.15, .40, .45] → class 2
    assert hard_vote([m1, m2, m3]).tolist() == [1, 2, 2]
    scores, labels = combine("hard", [m1, m2, m3])
    np.testing.assert_allclose(scores[0], [1 / 3, 2 / 3, 0])
    assert (scores.argmax(axis=1) == labels).all()  # the tie winner carries the argmax too
    # weights 1,1,2: row 1 → class 0 (half the weight); row 2 ties 0 vs 2 → mean probability picks 2
    assert hard_vote([m1, m2, m3], [1, 1, 2]).tolist() == [1, 0, 2]
    # only labels: a tie goes to the earlier class
    assert hard_vote([np.array([2, 1]), np.array([1, 2])], n_classes=3).tolist() == [1, 1]


def test_rank_average_by_hand():
    p1 = np.array([[0.1, 0.9], [0.5, 0.5], [0.5, 0.5]])
    p2 = np.array([[0.2, 0.8], [0.1, 0.9], [0.9, 0.1]])
    # p1 ranks: column 0 [0, .75, .75] (tied values share the average rank), column 1 [1, .25, .25]
    # p2 ranks: column 0 [.5, 0, 1], column 1 [.5, 1, 0]
    np.testing.assert_allclose(rank_average([p1, p2]), [[0.25, 0.75], [0.375, 0.625], [0.875, 0.125]])
    np.testing.assert_allclose(rank_average([p1, p2], [1, 0]), [[0, 1], [0.75, 0.25], [0.75, 0.25]])
    scores, labels = combine("rank", [p1, p2])
    assert labels.tolist() == [1, 1, 0]
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    with pytest.raises(UsageError, match="hard voting"):
        combine("rank", [p1, np.array([0, 1, 1])])


def test_fast_score_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 200), rng.integers(0, 3, 200)  # class 3 is never predicted
    assert fast_score(y, pred, 5, "macro_f1") == pytest.approx(
        f1_score(y, pred, labels=list(range(5)), average="macro", zero_division=0))
    assert fast_score(y, pred, 5, "accuracy") == pytest.approx((y == pred).mean())


# --------------------------------------------------------------------------- selection on constructed OOF
def _complementary():
    """A is right on classes 0 and 1 but calls class 2 class 0; B is A again; C only knows class 2."""
    y = np.repeat([0, 1, 2], 10)
    rows_a = {0: [0.8, 0.1, 0.1], 1: [0.1, 0.8, 0.1], 2: [0.6, 0.1, 0.3]}
    rows_c = {0: [0.4, 0.1, 0.5], 1: [0.1, 0.4, 0.5], 2: [0.05, 0.05, 0.9]}
    a = np.array([rows_a[c] for c in y])
    c = np.array([rows_c[c] for c in y])
    b = a.copy()
    return y, [a, b, c]


def test_greedy_picks_the_complementary_member():
    y, members = _complementary()
    scores = [fast_score(y, m.argmax(1), 3, "macro_f1") for m in members]
    assert scores[2] < scores[0] == scores[1]  # C alone is the weakest member
    counts, path, best = greedy_select(members, y, 3)
    assert [p["member"] for p in path[:2]] == [0, 2]  # A, then C — not A's twin B
    assert path[0]["score"] == pytest.approx(scores[0]) and best == pytest.approx(1.0)
    assert counts.tolist() == [1, 0, 1]
    weights, bags = bagged_greedy(members, y, 3, bags=6, seed=1)
    assert len(bags) == 6 and all(len(b["members"]) == 2 for b in bags)
    assert weights.sum() == pytest.approx(1.0) and weights[2] > 0


def test_fitted_weights_beat_every_member_and_crossfit_is_honest():
    y, members = _complementary()
    w = fit_weights(members, y, 3)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    _, labels = combine("soft", members, w)
    best_member = max(fast_score(y, m.argmax(1), 3, "macro_f1") for m in members)
    assert fast_score(y, labels, 3, "macro_f1") == pytest.approx(1.0)
    assert best_member < 0.6
    folds = np.tile([0, 1], 15)
    honest = crossfit_labels(lambda xs, ys: fit_weights(xs, ys, 3), members, y, folds, "soft", 3)
    assert honest.shape == y.shape and fast_score(y, honest, 3, "macro_f1") == pytest.approx(1.0)


# --------------------------------------------------------------------------- on the tiny runs
def test_greedy_ensemble_run_on_real_runs(runs):
    refs = [runs["ce"].path, runs["focal"].path, runs["resnet"].path]
    result = ensemble(refs, select="greedy", runs_root=runs["root"], name="greedy")
    member_best = max(s["macro_f1"] for s in result.member_scores.values())
    assert result.oof_score >= member_best  # greedy starts from the best member
    assert result.crossfit_score is not None and 0.0 <= result.crossfit_score <= 1.0

    run = result.run
    info = json.loads(run.file("run.json").read_text())
    assert info["kind"] == "ensemble" and info["status"] == "finished"
    assert info["parents"] == [r.id for r in (runs["ce"], runs["focal"], runs["resnet"])]
    oof = pd.read_parquet(run.file("oof.parquet"))
    assert list(oof.columns) == ["id", "path", "fold", "label", "pred", *CLASSES] and len(oof) == 36
    # rows follow the first member's order, which is the manifest's
    assert oof["id"].tolist() == pd.read_parquet(runs["ce"].file("oof.parquet"))["id"].tolist()
    summary = json.loads(run.file("summary.json").read_text())
    assert summary["classes"] == {"label": CLASSES} and summary["weights_from"] == "greedy"
    assert sum(m["weight"] for m in summary["members"]) == pytest.approx(1.0)
    assert summary["oof"]["macro_f1"] == pytest.approx(result.oof_score)
    assert set(summary["per_class"]["best"]) == set(CLASSES)
    assert summary["selection"][0]["path"][0]["member"] in {"ce", "focal", "resnet"}
    preds = pd.read_parquet(run.file("predictions/test.parquet"))
    assert list(preds.columns) == ["id", "path", *CLASSES] and len(preds) == 6
    sub = pd.read_csv(run.file("predictions/test.csv"))
    assert sub["label"].tolist() == [CLASSES[i] for i in preds[CLASSES].to_numpy().argmax(1)]


def test_soft_vote_matches_the_members_predictions(runs):
    refs = [runs["ce"].path, runs["focal"].path]
    result = ensemble(refs, weights="3,1", write=False, runs_root=runs["root"])
    a = pd.read_parquet(runs["ce"].file("predictions/test.parquet")).set_index("id")
    b = pd.read_parquet(runs["focal"].file("predictions/test.parquet")).set_index("id")
    expected = 0.75 * a.loc[result.test_ids, CLASSES].to_numpy() + 0.25 * b.loc[result.test_ids, CLASSES].to_numpy()
    np.testing.assert_allclose(result.test_scores, expected, rtol=1e-6)
    assert result.method == "given" and result.weights.tolist() == [0.75, 0.25]


def test_cli_ensemble_prints_members_path_and_per_class(runs, capsys):
    code = cli(["ensemble", str(runs["ce"].path), str(runs["focal"].path), str(runs["resnet"].path),
                "--select", "greedy", "--bags", "3", "--metric", "accuracy", "--runs", str(runs["root"]),
                "--name", "cli-ens"])
    assert code == 0
    out = capsys.readouterr().out
    for text in ("OOF accuracy", "bag 3: greedy path", "OOF recall per class", "cross-fitted accuracy", "run:"):
        assert text in out, text
    # a glob takes the finished train runs and leaves the ensemble runs made above out
    code = cli(["ensemble", str(runs["root"] / "*"), "--weights", "fit", "--runs", str(runs["root"]), "-n", "glob"])
    assert code == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "a `ensemble` run" in out
    summary = json.loads(next(runs["root"].glob("*-glob")).joinpath("summary.json").read_text())
    assert sorted(m["name"] for m in summary["members"]) == ["ce", "focal", "resnet"]
    assert cli(["ensemble", str(runs["ce"].path), "--vote", "median", "--runs", str(runs["root"])]) == 2
    assert cli(["ensemble", str(runs["ce"].path), "--select", "greedy", "--weights", "1",
                "--runs", str(runs["root"])]) == 2


def _copy_run(run, root: Path, suffix: str) -> Path:
    target = root / f"{run.id}-{suffix}"
    shutil.copytree(run.path, target, ignore=shutil.ignore_patterns("state"))
    return target


def test_misaligned_rows_are_refused_naming_the_ids(runs, tmp_path):
    copy = _copy_run(runs["focal"], tmp_path, "cut")
    oof = pd.read_parquet(copy / "oof.parquet")
    dropped = oof["id"].iloc[5]
    oof.iloc[[i for i in range(len(oof)) if i != 5]].iloc[::-1].to_parquet(copy / "oof.parquet", index=False)
    with pytest.raises(DataError, match=f"lacks 1 id.*{dropped}"):
        ensemble([runs["ce"].path, copy], write=False)
    # reversed row order alone is fine: rows are matched by id
    full = pd.read_parquet(runs["focal"].file("oof.parquet"))
    full.iloc[::-1].to_parquet(copy / "oof.parquet", index=False)
    shuffled = ensemble([runs["ce"].path, copy], write=False)
    straight = ensemble([runs["ce"].path, runs["focal"].path], write=False)
    assert shuffled.oof_score == straight.oof_score
    np.testing.assert_allclose(shuffled.test_scores, straight.test_scores)
    # labels that disagree
    flipped = full.copy()
    flipped.loc[0, "label"] = "red" if flipped.loc[0, "label"] != "red" else "blue"
    flipped.to_parquet(copy / "oof.parquet", index=False)
    with pytest.raises(DataError, match=f"labels differ.*{flipped.loc[0, 'id']}"):
        ensemble([runs["ce"].path, copy], write=False)


def test_members_are_voted_from_float32_matrices_their_tables_share(runs, tmp_path):
    """The store's float32 probabilities are not widened into a second copy, and results stay bit for bit."""
    copy = _copy_run(runs["focal"], tmp_path, "mixed")
    full = pd.read_parquet(copy / "oof.parquet")
    # another row and class-column order: matched by id and name
    full.iloc[::-1][["id", "path", "fold", "label", "pred", *reversed(CLASSES)]].to_parquet(copy / "oof.parquet",
                                                                                              index=False)
    result = ensemble([runs["ce"].path, copy], select="greedy", write=False)
    ce = pd.read_parquet(runs["ce"].file("oof.parquet"))
    for member in result.members:
        table = member.oof
        assert table["id"].tolist() == ce["id"].tolist() and list(table.columns[-3:]) == CLASSES
        assert all(table[c].dtype == np.float32 for c in CLASSES)
        # the columns interleave in one matrix (the voted one), not one array per column
        assert np.may_share_memory(table[CLASSES[0]].to_numpy(), table[CLASSES[-1]].to_numpy())
    focal = full.set_index("id").loc[ce["id"], CLASSES].to_numpy()
    np.testing.assert_array_equal(result.members[1].oof[CLASSES].to_numpy(), focal)
    # what voting the widened float64 numbers gives, exactly
    x = [ce[CLASSES].to_numpy(dtype=np.float64), focal.astype(np.float64)]
    y = np.array([CLASSES.index(v) for v in ce["label"]])
    weights, _ = bagged_greedy(x, y, 3)
    np.testing.assert_array_equal(result.weights, weights)
    assert result.oof_metrics["log_loss"] == ensemble([runs["ce"].path, runs["focal"].path], weights=list(weights),
                                                      write=False).oof_metrics["log_loss"]


def test_class_list_mismatch_is_refused(runs, tmp_path):
    copy = _copy_run(runs["focal"], tmp_path, "pink")
    oof = pd.read_parquet(copy / "oof.parquet").rename(columns={"red": "pink"})
    oof.to_parquet(copy / "oof.parquet", index=False)
    summary = json.loads((copy / "summary.json").read_text())
    summary["classes"] = {"label": ["blue", "green", "pink"]}
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataError, match=r"different class lists: .* has \['pink'\] .* lacks \['red'\]"):
        ensemble([runs["ce"].path, copy], write=False)


def test_prediction_files_as_members(runs, tmp_path):
    probs = runs["ce"].file("predictions/test.parquet")
    table = pd.read_parquet(runs["focal"].file("predictions/test.parquet"))
    labels = pd.DataFrame({"id": table["id"], "label": np.array(CLASSES)[table[CLASSES].to_numpy().argmax(1)]})
    labels.iloc[::-1].to_csv(tmp_path / "mate.csv", index=False)  # a teammate's submission, other order
    result = ensemble([probs, tmp_path / "mate.csv", runs["resnet"].path], vote="hard", write=False,
                      runs_root=runs["root"])
    assert result.oof_metrics is None and any("no out-of-fold" in n for n in result.notes)
    assert len(result.test_labels) == 6
    with pytest.raises(UsageError, match="hard voting"):
        ensemble([probs, tmp_path / "mate.csv"], vote="soft", write=False)
    with pytest.raises(UsageError, match="out-of-fold"):
        ensemble([probs, runs["resnet"].path], weights="fit", write=False, runs_root=runs["root"])
    with pytest.raises(DataError, match="prediction set 'nope' is missing"):
        ensemble([runs["ce"].path, runs["focal"].path], predictions="nope", write=False)


def test_training_records_calibration_and_the_ensemble_calibrates_members(runs):
    from toolkit.calibration import apply_crossfit

    summary = runs["ce"].summary
    record = summary["calibration"]["label"]  # fitted when training finished
    assert record["crossfit"] and record["folds"] == 3 and record["rows"] == summary["oof_rows"]
    assert record["temperature"]["temperature"] > 0 and len(record["temperature"]["per_fold"]) == 3
    result = ensemble([runs["ce"].path, runs["focal"].path], calibrate="temperature", runs_root=runs["root"],
                      write=False)
    oof = runs["ce"].read_oof()
    member = result.members[0]
    # out-of-fold rows: each fold rescaled with the parameters fitted without it
    np.testing.assert_allclose(member.oof[CLASSES].to_numpy(),
                               apply_crossfit(oof[CLASSES].to_numpy(dtype=np.float64), oof["fold"].to_numpy(), record),
                               rtol=1e-5)
    assert result.summary()["calibration"]["members"]["ce"]["temperature"] == record["temperature"]["temperature"]
    assert result.summary()["decision"]["applied"] == "argmax of the soft vote"
