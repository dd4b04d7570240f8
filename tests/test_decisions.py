"""Decisions tuned for macro-F1 (cross-fitted, refused without gain) and per-attribute runs composed into one label."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from attrgen import COMBINED, PARTS, attribute_rows, attribute_run, attribute_runs
from rungen import imbalanced, train_run

from toolkit.calibration import log_probs
from toolkit.cli.main import run as cli
from toolkit.decisions import (
    OFFSET_GRID,
    _macro_f1_many,
    _Top2,
    apply_offsets,
    crossfit_offsets,
    fit_offsets,
    macro_f1,
    tune_decisions,
)
from toolkit.ensemble import ensemble
from toolkit.errors import DataError, UsageError
from toolkit.metrics import classification_metrics
from toolkit.store.tables import probability_frame


# --------------------------------------------------------------------------- decisions
def test_macro_f1_counts_every_class():
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    expected = classification_metrics(y, pred, ["a", "b", "c"])["macro_f1"]
    assert macro_f1(y, pred, 3) == pytest.approx(expected)


def test_offsets_raise_crossfitted_macro_f1_on_an_imbalanced_problem():
    z, y = imbalanced(3000, seed=0)
    folds = np.arange(len(y)) % 5
    decision = tune_decisions(z, y, folds, ["common", "rare", "rarer"])
    assert decision.rule == "f1_offsets"
    assert decision.crossfit_tuned > decision.crossfit_argmax + 0.03
    assert decision.gain == pytest.approx(decision.crossfit_tuned - decision.crossfit_argmax)
    assert decision.offsets[0] < min(decision.offsets[1:])  # the common class gives way
    # The cross-fitted score is the one of decisions made without each fold, rebuilt by hand:
    tuned = np.empty_like(y)
    for f in range(5):
        held = folds == f
        tuned[held] = apply_offsets(z[held], fit_offsets(z[~held], y[~held]))
    assert decision.crossfit_tuned == pytest.approx(macro_f1(y, tuned, 3))
    # ... and it carries to rows never seen at all.
    z_new, y_new = imbalanced(20000, seed=1)
    assert macro_f1(y_new, decision.decide(z_new), 3) > macro_f1(y_new, z_new.argmax(axis=1), 3) + 0.03
    summary = decision.summary()
    assert summary["crossfit_gain"] == pytest.approx(decision.gain) and summary["rule"] == "f1_offsets"
    assert summary["in_sample_gain"] >= summary["crossfit_gain"] - 1e-9  # in-sample is the optimistic one
    assert set(summary["offsets"]) == {"common", "rare", "rarer"}


def reference_fit_offsets(log_p, y, *, grid=OFFSET_GRID, sweeps=4):
    """The plain coordinate ascent: every class's competitors found by masking its column of the whole matrix."""
    z, y = np.asarray(log_p, dtype=np.float64), np.asarray(y, dtype=np.int64)
    n, c = z.shape
    values = np.asarray(sorted(set(grid) | {0.0}), dtype=np.float64)
    nearest_zero = np.argsort(np.abs(values), kind="stable")
    b = np.zeros(c)
    if n == 0:
        return b
    best = macro_f1(y, apply_offsets(z, b), c)
    for _ in range(sweeps):
        changed = False
        for k in range(c):
            others = z + b
            others[:, k] = -np.inf
            wins = (z[None, :, k] + values[:, None]) > others.max(axis=1)[None, :]
            scores = _macro_f1_many(y, np.where(wins, k, others.argmax(axis=1)[None, :]), c)
            top = scores[nearest_zero].max()
            if top > best + 1e-12:
                pick = nearest_zero[np.flatnonzero(scores[nearest_zero] >= top - 1e-12)[0]]
                b[k], best, changed = values[pick], float(top), True
        if not changed:
            break
    return b


@pytest.mark.parametrize("seed", range(12))
def test_fit_offsets_matches_the_plain_coordinate_ascent(seed):
    rng = np.random.default_rng(seed)
    c = [1, 2, 3, 5, 8, 40][seed % 6]
    n = int(rng.integers(2, 400))
    p = rng.dirichlet(np.full(c, [0.3, 1.0, 4.0][seed % 3]), size=n)
    if seed % 4 != 3:
        p = np.round(p, [2, 1, 2][seed % 4])  # ties between classes, and zeros (log -inf)
    with np.errstate(divide="ignore"):
        z = np.log(p)
    if seed % 4 == 3:  # rows with a single finite class, and a row with none
        z[0, :] = -np.inf
        z[1, :], z[1, c - 1] = -np.inf, -0.1
    prior = rng.dirichlet(np.ones(c))
    y = np.where(rng.random(n) < 0.5, rng.choice(c, size=n, p=prior), p.argmax(axis=1))
    grid = OFFSET_GRID if seed % 2 else (-1.0, -0.5, 0.5, 1.0)
    got, expected = fit_offsets(z, y, grid=grid, sweeps=6), reference_fit_offsets(z, y, grid=grid, sweeps=6)
    assert np.array_equal(got, expected)


def test_fit_offsets_matches_the_plain_coordinate_ascent_with_many_moves():
    rng = np.random.default_rng(7)
    prior = np.geomspace(1, 30, 12)[::-1] / np.geomspace(1, 30, 12).sum()  # skewed: offsets move
    y = rng.choice(12, size=3000, p=prior)
    logits = np.log(prior) + 1.5 * np.eye(12)[y] + rng.normal(size=(3000, 12))
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2) + 1e-3  # ties
    z = np.log(p)
    got = fit_offsets(z, y)
    assert (got != 0).sum() >= 6 and np.array_equal(got, reference_fit_offsets(z, y))


def test_top2_follows_column_changes_like_masking_the_column():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, c = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        s = rng.integers(-3, 3, size=(n, c)).astype(float)  # many ties
        s[rng.random((n, c)) < 0.15] = -np.inf
        top = _Top2(s)
        for _ in range(20):
            k = int(rng.integers(c))
            top.set_column(k, top.scores[:, k] + rng.integers(-2, 3))  # up, down or unchanged
            for j in range(c):
                masked = top.scores.copy()
                masked[:, j] = -np.inf
                best, label = top.without(j)
                assert np.array_equal(best, masked.max(axis=1)) and np.array_equal(label, masked.argmax(axis=1))


def test_offsets_without_crossfitted_gain_are_refused_with_a_note():
    y = np.arange(90) % 3
    z = log_probs(np.eye(3)[y] * 0.9 + 0.05)  # already perfect: nothing to gain
    decision = tune_decisions(z, y, np.arange(90) % 3, ["a", "b", "c"])
    assert decision.rule == "argmax" and decision.offsets is None
    assert "refused" in decision.note and decision.gain == pytest.approx(0.0)
    assert (decision.decide(z) == z.argmax(axis=1)).all()
    one_fold = tune_decisions(*imbalanced(600, seed=2), np.zeros(600, dtype=int), ["a", "b", "c"])
    assert one_fold.rule == "argmax" and "fewer than two folds" in one_fold.note


def test_fold_scores_let_the_scores_depend_on_the_held_fold():
    z, y = imbalanced(900, seed=3)
    folds = np.arange(900) % 3
    seen = []

    def fold_scores(held):
        seen.append(int(held.sum()))
        return z[~held], z[held]

    tuned, plain, per_fold = crossfit_offsets(z, y, folds, fold_scores=fold_scores)
    assert seen == [300, 300, 300] and len(per_fold) == 3
    assert (plain == z.argmax(axis=1)).all()
    with pytest.raises(UsageError, match="--decide"):
        tune_decisions(z, y, folds, ["a", "b", "c"], "recall")


def test_ensemble_of_one_run_decides_for_f1_and_records_the_rule(tmp_path, capsys):
    z, y = imbalanced(1500, seed=4)
    classes = ["common", "rare", "rarer"]
    run = train_run(tmp_path, "imb", classes=classes, labels=y, probs=np.exp(z), folds=np.arange(1500) % 5)
    zt, _ = imbalanced(200, seed=5)
    test = probability_frame([f"t{i}" for i in range(200)], None, {"label": np.exp(zt)}, {"label": classes})
    run.write_predictions("test", test, None, None)

    code = cli(["ensemble", run.path.as_posix(), "--decide", "f1", "--calibrate", "--runs", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "f1 offsets kept: cross-fitted macro_f1" in out and "decision: macro-F1 offsets" in out
    ens = sorted(p for p in tmp_path.iterdir() if p.name.endswith("-ensemble"))[-1]
    summary = json.loads((ens / "summary.json").read_text())
    assert summary["decision"]["rule"] == "f1_offsets" and summary["decision"]["crossfit_gain"] > 0
    assert summary["calibration"]["members"]["imb"]["method"] == "temperature"
    info = json.loads((ens / "predictions" / "test.json").read_text())
    assert info["decision"] == "macro-F1 offsets on the log soft vote" and info["calibration"] == "temperature"
    sub = pd.read_csv(ens / "predictions" / "test.csv")
    probs = pd.read_parquet(ens / "predictions" / "test.parquet")[classes].to_numpy()
    offsets = np.array([summary["decision"]["offsets"][c] for c in classes])
    assert sub["label"].tolist() == [classes[i] for i in apply_offsets(log_probs(probs), offsets)]
    assert (sub["label"] != np.array(classes)[probs.argmax(axis=1)]).any()  # the rule changed some labels

    with pytest.raises(UsageError, match="hard-vote"):
        ensemble([run.path], vote="hard", decide="f1", runs_root=tmp_path, write=False)


# --------------------------------------------------------------------------- composition
@pytest.fixture
def parts(tmp_path):
    rows = attribute_rows(people=45)
    return {"root": tmp_path, "rows": rows, "runs": attribute_runs(tmp_path, rows)}


def _args(runs) -> list[str]:
    return [f"{part}={run.path}" for part, run in runs.items()]


def test_composition_is_the_product_of_the_parts(parts):
    runs, rows = parts["runs"], parts["rows"]
    result = ensemble(list(reversed(_args(runs))), compose=True, runs_root=parts["root"], write=False)
    assert result.composed["into"] == COMBINED and result.composed["columns"] == list(PARTS)
    expected_classes = ["_".join(c) for c in itertools.product(*PARTS.values())]
    assert result.classes == expected_classes and len(expected_classes) == 18
    oof = result.members[0].oof
    p = {part: run.read_oof()[PARTS[part]].to_numpy(dtype=np.float64) for part, run in runs.items()}
    product = np.einsum("ni,nj,nk->nijk", p["mask"], p["gender"], p["age"]).reshape(len(rows), 18)
    np.testing.assert_allclose(oof[expected_classes].to_numpy(), product, rtol=1e-5)
    truth = rows["mask"] + "_" + rows["gender"] + "_" + rows["age"]
    assert oof["label"].tolist() == truth.tolist()
    y = np.array([expected_classes.index(t) for t in truth])
    assert result.oof_metrics["macro_f1"] == pytest.approx(classification_metrics(y, product, expected_classes)["macro_f1"],
                                                           rel=1e-5)
    assert [p["part"] for p in result.composed["parts"]] == list(PARTS)


def test_composition_refuses_mismatched_folds_and_rows(parts, tmp_path):
    runs, rows = dict(parts["runs"]), parts["rows"]
    shifted = (rows["fold"].to_numpy() + 1) % 3
    runs["age"] = attribute_run(tmp_path / "other", rows, "age", 0.7, seed=9, folds=shifted)
    with pytest.raises(DataError, match=r"folds differ between mask .* and age .* on \d+ of 315 row\(s\)"):
        ensemble(_args(runs), compose=True, runs_root=parts["root"], write=False)

    fewer = rows.iloc[7:].reset_index(drop=True)
    runs["age"] = attribute_run(tmp_path / "fewer", fewer, "age", 0.7, seed=9)
    with pytest.raises(DataError, match="rows do not align: age .* lacks 7 id"):
        ensemble(_args(runs), compose=True, runs_root=parts["root"], write=False)


def test_composition_names_what_is_wrong_with_the_parts(parts):
    runs = parts["runs"]
    args = _args(runs)
    with pytest.raises(UsageError, match="missing part.* age"):
        ensemble(args[:2], compose=True, into=COMBINED, runs_root=parts["root"], write=False)
    with pytest.raises(UsageError, match="no \\[targets.combine\\] definition"):
        ensemble(args[:2], compose=True, runs_root=parts["root"], write=False)
    with pytest.raises(UsageError, match="no run's recipe defines \\[targets.combine.label6\\].*"):
        ensemble(args, compose=True, into="label6", runs_root=parts["root"], write=False)
    with pytest.raises(UsageError, match="is not PART=RUN"):
        ensemble([runs["mask"].path], compose=True, runs_root=parts["root"], write=False)
    with pytest.raises(UsageError, match="--into names"):
        ensemble(args, into=COMBINED, runs_root=parts["root"], write=False)


def test_a_multihead_runs_heads_compose_the_same_way(parts, tmp_path):
    from toolkit.store import RunStore

    runs, rows = parts["runs"], parts["rows"]
    oofs = {part: run.read_oof() for part, run in runs.items()}
    heads = list(PARTS)
    frame = probability_frame(rows["path"], rows["path"], {h: oofs[h][PARTS[h]].to_numpy() for h in heads}, PARTS,
                              folds=rows["fold"].to_numpy(),
                              labels={h: np.array([PARTS[h].index(v) for v in rows[h]]) for h in heads})
    recipe = runs["mask"].recipe_text.replace('label = "mask"', 'heads = ["mask", "gender", "age"]')
    multi = RunStore(tmp_path / "mh").create("train", name="multi", recipe=recipe)
    multi.write_oof(frame)
    multi.update_summary({"heads": heads, "classes": PARTS})
    multi.finish()
    composed = ensemble([f"{h}={multi.path}" for h in heads], compose=True, runs_root=tmp_path / "mh", write=False)
    separate = ensemble(_args(runs), compose=True, runs_root=parts["root"], write=False)
    np.testing.assert_allclose(composed.members[0].oof[composed.classes].to_numpy(),
                               separate.members[0].oof[separate.classes].to_numpy(), rtol=1e-6)


def test_cli_compose_predicts_and_submits_like_an_ensemble(parts, capsys):
    runs, rows = parts["runs"], parts["rows"]
    test_ids = [f"t{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    test_parts = {part: rng.dirichlet(np.ones(len(c)), size=12) for part, c in PARTS.items()}
    for part, run in runs.items():
        run.write_predictions("test", probability_frame(test_ids, None, {"label": test_parts[part]},
                                                        {"label": PARTS[part]}), None, None)
    code = cli(["ensemble", "--compose", *_args(runs), "--into", COMBINED, "--decide", "f1", "--calibrate",
                "--name", "composed", "--runs", str(parts["root"])])
    assert code == 0
    out = capsys.readouterr().out
    assert f"composed {COMBINED} (18 classes) from mask=" in out and "decision:" in out
    ens = sorted(parts["root"].glob("*-composed"))[-1]
    summary = json.loads((ens / "summary.json").read_text())
    assert summary["composed"]["into"] == COMBINED and summary["oof_rows"] == len(rows)
    assert summary["decision"]["requested"] == "f1" and summary["decision"]["crossfit_gain"] is not None
    assert set(json.loads((ens / "run.json").read_text())["parents"]) == {r.id for r in runs.values()}
    sub = pd.read_csv(ens / "predictions" / "test.csv")
    assert len(sub) == 12 and set(sub["label"]) <= {"_".join(c) for c in itertools.product(*PARTS.values())}
    info = json.loads((ens / "predictions" / "test.json").read_text())
    assert info["composed"] == COMBINED and info["decision"] == summary["decision"]["applied"]

    assert cli(["ensemble", "--compose", "mask", "--runs", str(parts["root"])]) != 0
    assert "is not PART=RUN" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict
def test_predict_calibrates_and_decides_with_the_runs_out_of_fold_rows(tmp_path, one_thread):
    from imagegen import make_imagefolder
    from modelruns import model_run, write_oof

    from toolkit.calibration import apply_calibration
    from toolkit.predict import predict

    classes = ["blue", "green", "red"]
    data = make_imagefolder(tmp_path / "data", per_class=4, size=32)
    rows = pd.DataFrame({"path": sorted(str(p.relative_to(data)) for p in data.rglob("*.png"))})
    rows["label"] = [p.split("/")[0] for p in rows["path"]]
    rows["fold"] = np.arange(len(rows)) % 2
    run = model_run(tmp_path / "runs", data, rows, arch="test_efficientnet", classes={"label": classes})
    # The out-of-fold rows the rule is tuned on: an imbalanced problem (the images only need paths).
    z, y = imbalanced(1200, seed=6)
    oof = pd.DataFrame({"path": [f"o{i}.png" for i in range(1200)], "label": np.array(classes)[y],
                        "fold": np.arange(1200) % 2})
    write_oof(run, oof, np.exp(z), classes)

    plain = predict(run, data, tta="none", workers=0, progress=False, write=False)
    assert plain.decision is None and plain.decision_rule == "argmax"
    before = (run.path / "summary.json").read_bytes()
    dry = predict(run, data, tta="none", workers=0, progress=False, calibrate="temperature", write=False)
    assert (run.path / "summary.json").read_bytes() == before  # write=False records nothing in the run
    result = predict(run, data, tta="none", workers=0, progress=False, name="tuned", calibrate="temperature",
                     decide="f1")
    calibration = run.summary["calibration"]["label"]  # fitted on first use, recorded in the run
    np.testing.assert_allclose(result.probs["label"], apply_calibration(plain.probs["label"], calibration), rtol=1e-6)
    np.testing.assert_allclose(dry.probs["label"], result.probs["label"], rtol=1e-6)  # the same fit, unsaved
    assert result.decision.rule == "f1_offsets" and result.decision.gain > 0
    expected = apply_offsets(log_probs(result.probs["label"]), result.decision.offsets)
    sub = pd.read_csv(result.files["csv"])
    assert sub["label"].tolist() == [classes[i] for i in expected]
    info = json.loads(result.files["json"].read_text())
    assert info["decision"] == "macro-F1 offsets on the log-probabilities"
    assert info["calibration"]["method"] == "temperature"
    assert info["calibration"]["label"]["temperature"] == pytest.approx(calibration["temperature"]["temperature"])
    assert info["scores"]["n"] == 12  # the decided labels are what is scored
    with pytest.raises(UsageError, match="--decide"):
        predict(run, data, decide="top1", workers=0, progress=False, write=False)


def test_predict_refuses_a_tuned_decision_on_a_multihead_run_pointing_to_compose(parts, tmp_path):
    from toolkit.predict.decided import run_decision
    from toolkit.store import RunStore

    multi = RunStore(tmp_path / "mh").create("train", name="multi")
    multi.update_summary({"heads": list(PARTS), "classes": PARTS})
    with pytest.raises(UsageError, match="several heads") as err:
        run_decision(multi, "f1", None, None)
    assert f"--compose mask={multi.id} gender={multi.id} age={multi.id}" in err.value.hint
    assert run_decision(multi, "argmax", None, None) is None
