"""``clsctl predict``: a run's fold models × TTA views over new images → probabilities and a submission.

Written into the run folder (main process only, atomically)::

    predictions/<name>.parquet    id, path, one float32 probability column per class (run's class order)
    predictions/<name>.csv        the submission (id,label, or the sample submission's layout)
    predictions/<name>.json       what was predicted how: data, folds, views, combine, scores, timing
    predictions/<name>.tta.json   with --tta auto: every policy's out-of-fold score and per-class gain

Preprocessing is never re-typed: each fold's eval pipeline, image loader and normalization are built from
the preprocessing record in its ``model.json`` alone (``trainaug`` views add the run's ``[aug]`` section).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toolkit.calibration import apply_calibration, log_probs
from toolkit.config.schema import Recipe
from toolkit.data.training import run_image_root
from toolkit.decisions import Decision
from toolkit.errors import DataError, RunError, UsageError, examples
from toolkit.metrics import classification_metrics, is_better, metric_direction, multihead_metrics
from toolkit.models.checkpoint import FoldModel, load_fold_model
from toolkit.predict.decided import run_calibration_for, run_decision
from toolkit.predict.engine import (
    FoldStatus,
    Inference,
    check_input_sizes,
    combine_views,
    fold_status,
    select_folds,
)
from toolkit.predict.exported import ExportedGraphs, OnnxInference, open_export
from toolkit.predict.inputs import PredictionInput, check_input_images, read_input
from toolkit.predict.tta import AUTO_POLICIES, build_views, parse_tta, spec_slug, view_sizes
from toolkit.progress import Progress
from toolkit.store import Run, RunStore, slugify
from toolkit.store.tables import probability_frame

COMBINES = ("mean_prob", "mean_logit")
ENGINES = ("torch", "onnx")


@dataclass
class PredictResult:
    """What :func:`predict` produced.

    Attributes:
        run: the run predicted with.
        name: the prediction set's name (``predictions/<name>.*``).
        ids, paths: one per image, in output order.
        classes: class list per head; ``probs``: probabilities per head ``[N, C]``.
        folds, views, combine, engine: how it was predicted (``torch`` or ``onnx``).
        scores: metrics of the labeled rows, when there are any (single head: ``classification_metrics``;
            multi-head: ``multihead_metrics`` with the combined label); ``scores["n"]`` rows were scored.
        unscored: rows predicted but not scored, by reason (``unlabeled``, ``unknown_class``).
        notes: warnings about the input, one line each.
        files: written files by kind (``parquet``, ``csv``, ``json``, ``tta``).
        seconds, img_s: time of the inference loop (decode + transforms + forward), images per second.
        tta_auto: the ``--tta auto`` comparison, when asked for.
        main: False on the non-main processes of a multi-process launch (they write nothing).
    """

    run: Any
    name: str
    ids: list[str]
    paths: list[str]
    classes: dict[str, list[str]]
    probs: dict[str, np.ndarray]
    folds: list[int]
    views: list[str]
    combine: str
    scores: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    img_s: float = 0.0
    tta_auto: dict[str, Any] | None = None
    source: str = ""
    engine: str = "torch"
    main: bool = True
    unscored: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # --calibrate: the method and each head's parameters
    decision: Decision | None = None  # --decide f1: the rule tuned on the run's out-of-fold rows
    labels: np.ndarray | None = None  # the decided class per row, where it is not the argmax

    @property
    def decision_rule(self) -> str:
        """What turned the probabilities into the submitted labels."""
        if self.decision is not None and self.decision.offsets is not None:
            return "macro-F1 offsets on the log-probabilities"
        return "argmax of the combined heads' product" if len(self.classes) > 1 else "argmax"

    @property
    def n(self) -> int:
        return len(self.ids)


def _open_run(run: Run | str | Path, runs_root: str | Path | None) -> Run:
    run = run if isinstance(run, Run) else RunStore(runs_root).open(run)
    if run.kind != "train":
        raise RunError(f"run {run.id} is a `{run.kind}` run, which has no models",
                       "predict with a train run; `clsctl ensemble` combines prediction sets")
    return run


def _combined_classes(recipe, heads: list[str], classes: dict[str, list[str]]) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """Heads in combine order (most significant first) and the combined class names.

    A ``[targets.combine]`` spec over exactly the heads (the recipe's label) gives the order and the
    separator, so class names and indices are the competition's (``((mask·2)+gender)·3+age``); otherwise
    the heads combine in head order with ``_``, as the trainer's combined metrics do.
    """
    import itertools

    spec = recipe.targets.combine.get(recipe.targets.label)
    order, separator = list(heads), "_"
    if spec is not None and sorted(spec.columns) == sorted(heads):
        order, separator = list(spec.columns), spec.separator
    names = [separator.join(parts) for parts in itertools.product(*(classes[h] for h in order))]
    return order, names


def _combined_probs(probs: Sequence[np.ndarray]) -> np.ndarray:
    out = np.asarray(probs[0], dtype=np.float64)
    for p in probs[1:]:
        out = (out[:, :, None] * np.asarray(p, dtype=np.float64)[:, None, :]).reshape(out.shape[0], -1)
    return out


def score_predictions(targets: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                      classes: dict[str, list[str]], heads: list[str]) -> dict[str, Any]:
    """Metrics of predictions against known labels (the combined label drives multi-head runs)."""
    if len(heads) == 1:
        h = heads[0]
        return classification_metrics(targets[h], probs[h], classes[h])
    out = multihead_metrics({h: targets[h] for h in heads}, {h: probs[h] for h in heads},
                            {h: classes[h] for h in heads}, combine=heads)
    return {**out["combined"], "heads": out["heads"]}


def _metric_name(run, recipe) -> str:  # noqa: ANN001
    metric = run.summary.get("metric") or recipe.train.metric
    # val_loss needs the training criterion; log loss is its criterion-free stand-in.
    return "log_loss" if metric == "val_loss" else metric


def _policy_recall(scores: dict[str, Any], heads: list[str]) -> dict[str, float]:
    if len(heads) == 1:
        return dict(scores["per_class_recall"])
    return {f"{h}:{c}": v for h in heads for c, v in scores["heads"][h]["per_class_recall"].items()}


def choose_tta(run: Run, recipe: Recipe, models: Sequence[FoldModel], engine: Inference, heads: list[str],
               classes: dict[str, list[str]], combine: str = "mean_prob",
               policies: Sequence[tuple[str, Sequence[str]]] = AUTO_POLICIES) -> dict[str, Any]:
    """Score TTA policies on the run's out-of-fold rows and pick the best.

    The rows, their folds and labels come from the run's own ``manifest.csv``, so nothing about the
    training data is re-derived. Each fold model predicts only the rows it was validated on (never rows
    it trained on), with every view any policy uses; each policy's out-of-fold predictions are then
    scored with the run's selection metric. The first policy is the baseline (``none``); ties go to the
    earlier (cheaper) policy, so the baseline wins unless a policy is strictly better.

    Returns:
        ``{"metric", "direction", "rows", "folds", "policies": [{"name", "views", "score", "per_class_recall"}],
        "skipped": {name: reason}, "chosen", "chosen_views", "gain_per_class", "gain"}``.
    """
    metric = _metric_name(run, recipe)
    direction = metric_direction(metric)
    manifest, root = _training_rows(run, recipe, heads, classes)
    folds = manifest["fold"].to_numpy()
    all_views: list[str] = ["identity"]
    for _, extra in policies:
        for v in parse_tta(list(extra))[1:]:
            if v not in all_views:
                all_views.append(v)
    prep = models[0].record.preprocessing
    size, trained = prep.eval_size, prep.image_size
    usable = list(all_views)
    skipped: dict[str, str] = {}
    for v in all_views:  # fixed-size models (ViTs) cannot take the scale views: leave those policies out
        if not v.startswith("scale:"):
            continue
        try:
            check_input_sizes(models[0].model.to(engine.device), view_sizes(build_views([v], size), size, trained),
                              trained, prep.in_chans, engine.device)
        except UsageError as exc:
            usable.remove(v)
            skipped[v] = exc.message
    views = build_views(usable, size)
    rows_all, logits_all = [], []
    for m in models:
        rows = np.flatnonzero(folds == m.fold)
        if rows.size == 0:
            continue
        paths = [str(root / p) for p in manifest["path"].to_numpy()[rows]]
        logits = engine.run([m], views, paths, recipe.aug, recipe.train.seed, combine, title=f"tta auto: fold {m.fold}")
        rows_all.append(rows)
        logits_all.append(logits[0])  # [V, n_k, C]
    if not rows_all:
        raise DataError(f"run {run.id}: the selected folds hold no out-of-fold rows", "pass --folds all")
    rows = np.concatenate(rows_all)
    logits = np.concatenate(logits_all, axis=1)
    sizes = models[0].record.head_sizes
    targets = {h: np.array([classes[h].index(v) for v in manifest[h].to_numpy()[rows]], dtype=np.int64)
               for h in heads}
    results = []
    for name, extra in policies:
        names = parse_tta(list(extra))
        if any(v not in usable for v in names):
            skipped.setdefault(name, "; ".join(skipped.get(v, "") for v in names if v not in usable))
            continue
        idx = [usable.index(v) for v in names]
        probs = dict(zip(heads, combine_views(logits[idx], sizes, combine, axes=(0,)), strict=True))
        scores = score_predictions(targets, probs, classes, heads)
        results.append({"name": name, "views": names, "score": float(scores[metric]),
                        "per_class_recall": _policy_recall(scores, heads)})
    best = results[0]
    for r in results[1:]:
        if is_better(metric, r["score"], best["score"]):
            best = r
    none = results[0]
    gain = {c: best["per_class_recall"][c] - none["per_class_recall"][c] for c in none["per_class_recall"]}
    return {"metric": metric, "direction": direction, "rows": int(rows.size), "folds": [m.fold for m in models],
            "combine": combine, "policies": results, "skipped": skipped, "chosen": best["name"],
            "chosen_views": best["views"], "gain": best["score"] - none["score"], "gain_per_class": gain}


def _training_rows(run: Run, recipe: Recipe, heads: list[str], classes: dict[str, list[str]]
                   ) -> tuple[pd.DataFrame, Path]:
    """The run's ``manifest.csv`` (path, fold and head columns, as the run recorded them) and its image root."""
    manifest = run.read_manifest()
    if manifest is None or "fold" not in manifest.columns:
        raise RunError(f"run {run.id} has no manifest.csv with folds", "--tta auto needs a train run's own manifest")
    lacking = [h for h in heads if h not in manifest.columns]
    if lacking:
        raise RunError(f"run {run.id}: manifest.csv lacks the target column(s) {', '.join(lacking)}",
                       "the run folder is incomplete; retrain it")
    for h in heads:
        unknown = sorted(set(manifest[h].astype(str)) - set(classes[h]))
        if unknown:
            raise RunError(f"run {run.id}: manifest.csv holds class name(s) {examples(unknown)} of `{h}` that the "
                           "run does not know", "the run folder is inconsistent; retrain it")
        manifest[h] = manifest[h].astype(str)
    return manifest, run_image_root(run)


def default_name(data_name: str, views: Sequence[str], folds: Sequence[int], all_folds: Sequence[int],
                 auto: bool = False) -> str:
    """``<data>`` + ``-<views>`` + ``-fold<k>`` (when not every fold): e.g. ``test-hflip_scale1.15``."""
    parts = [data_name or "predictions"]
    tta = "auto" if auto else spec_slug(views)
    if tta:
        parts.append(tta)
    if list(folds) != list(all_folds):
        parts.append("fold" + "_".join(str(f) for f in folds))
    return slugify("-".join(parts)) or "predictions"


def predict(run, data: str | Path, *, tta: str | Sequence[str] | None = None, folds: str | int | None = None,  # noqa: ANN001, C901
            name: str | None = None, sample_submission: str | Path | None = None, combine: str | None = None,
            batch_size: int | None = None, runs_root: str | Path | None = None, root: str | Path | None = None,
            workers: int | None = None, progress: Progress | bool | None = None, accelerator=None,  # noqa: ANN001
            write: bool = True, engine: str = "torch", onnx: str | Path | None = None, calibrate: str | None = None,
            decide: str = "argmax") -> PredictResult:
    """Predict ``data`` with a run's fold models and TTA views; write the prediction set into the run.

    Args:
        run: a run folder, id, name suffix or :class:`~toolkit.store.Run`.
        data: a folder (unlabeled or ImageFolder) or a CSV/Parquet manifest with a path column.
        tta: a view spec (``"hflip,scale:1.15"``), ``"auto"``, or None for the recipe's ``[tta] views``.
        folds: ``all`` (None), ``best``, a fold number or a list like ``0,2``.
        name: the prediction set's name; default from the data's name, the views and the folds.
        sample_submission: a CSV whose ids, order and columns the submission copies.
        combine: ``mean_prob`` or ``mean_logit``; None for the recipe's ``[tta] combine``.
        batch_size: images per batch; default twice the training batch (halved on CUDA out-of-memory).
        runs_root: where run ids are looked up.
        root: folder a manifest's paths are relative to (default: the manifest's folder).
        workers: data-loader workers (default: the cores left after one for the model).
        progress: where progress goes (the CLI's display; True: plain lines; None/False: nothing).
        accelerator: an ``accelerate.Accelerator`` to use (one is made otherwise).
        write: write the files (False: only return the result).
        engine: ``torch`` (the fold checkpoints) or ``onnx`` (the graph ``clsctl export`` wrote, run with
            onnxruntime on the CPU; its folds, views and combine are the export's).
        onnx: the export folder or ``.onnx`` file for ``engine="onnx"`` (default: the run's ``export/``).
        calibrate: ``temperature`` or ``vector``: rescale the probabilities with the run's calibration (fitted
            on its out-of-fold rows, recorded in its summary.json on first use); None: as predicted.
        decide: ``argmax``, or ``f1`` for per-class offsets tuned for macro-F1 on the run's out-of-fold rows
            (kept only when their cross-fitted gain is positive); single-head runs.

    Raises:
        RunError: not a train run, no checkpoints, unfinished folds (``all``/``best``).
        UsageError: bad name/views/folds/combine/batch size. DataError: bad data, sample submission mismatches.
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: a batch holds at least one image",
                         "pass 1 or more, or leave it out for twice the training batch")
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}", "use --engine torch or onnx")
    run = _open_run(run, runs_root)
    if name is not None:
        _check_name(run, name)
    recipe = run.read_recipe()
    heads, classes = run.read_classes()
    calibration = run_calibration_for(run, calibrate, record=write)
    decision = run_decision(run, decide, calibration, calibrate)
    fold_states = fold_status(run)
    auto = isinstance(tta, str) and tta.strip().lower() == "auto"
    exported = None
    if engine == "onnx":
        exported = _matching_export(run, onnx, heads, classes, tta, folds, combine, fold_states)
        combine, view_names, selected = exported.combine, exported.views, exported.folds
    else:
        combine = combine or recipe.tta.combine
        if combine not in COMBINES:
            raise UsageError(f"--combine {combine!r} is not one of {', '.join(COMBINES)}", "use mean_prob or mean_logit")
        view_names = parse_tta(recipe.tta.views if tta is None else ([] if auto else tta))
        selected = select_folds(run, folds, fold_states)
    inputs: PredictionInput = read_input(data, recipe, heads, classes, root=root)
    sample = None
    if sample_submission is not None:
        from toolkit.predict.submission import read_sample

        sample = read_sample(sample_submission)
    from toolkit.data.preprocessing import make_image_loader

    # Every image decoded once before any model runs (into the cache the models then read): all the
    # unreadable ones are named at once, or left out with data.on_bad_image = "skip".
    inputs = check_input_images(inputs, make_image_loader(recipe, ram_mb=0), recipe.data.on_bad_image, sample)

    batch_size = batch_size or recipe.train.batch_size * 2
    auto_report = None
    if exported is not None:
        runner = OnnxInference(exported, batch_size=batch_size, workers=workers, progress=progress)
        t0 = time.perf_counter()
        probs = runner.run(inputs.paths)
        seconds = time.perf_counter() - t0
        main, wait = True, None
    else:
        models = [load_fold_model(run, k) for k in selected]
        inference = Inference(accelerator, batch_size=batch_size, workers=workers, progress=progress,
                              channels_last=bool(models[0].record.model.get("channels_last")))
        if auto:
            auto_report = choose_tta(run, recipe, models, inference, heads, classes, combine)
            view_names = list(auto_report["chosen_views"])
        views = build_views(view_names, models[0].record.preprocessing.eval_size)
        t0 = time.perf_counter()
        logits = inference.run(models, views, inputs.paths, recipe.aug, recipe.train.seed, combine)
        seconds = time.perf_counter() - t0
        probs = dict(zip(heads, combine_views(logits, models[0].record.head_sizes, combine, axes=(0, 1)), strict=True))
        main, wait = inference.accelerator.is_main_process, inference.accelerator.wait_for_everyone
    if calibration is not None:
        probs = {h: apply_calibration(probs[h], calibration[h], calibrate) for h in heads}
    default = default_name(inputs.name, view_names, selected, fold_states.folds, auto)
    result = PredictResult(
        run=run, name=name or (default + "-onnx" if exported is not None else default), engine=engine,
        ids=inputs.df["id"].astype(str).tolist(), paths=inputs.df["path"].astype(str).tolist(), classes=classes,
        probs=probs, folds=selected, views=view_names, combine=combine, seconds=seconds,
        img_s=len(inputs.paths) / max(seconds, 1e-9), tta_auto=auto_report, source=inputs.source,
        main=main, unscored=dict(inputs.unscored), notes=list(inputs.notes), decision=decision,
        calibration=None if calibration is None else {"method": calibrate, **{h: _params(calibration[h], calibrate)
                                                                              for h in heads}})
    if decision is not None and decision.offsets is not None:
        result.labels = decision.decide(log_probs(probs[heads[0]]))
    if inputs.labeled:
        rows = inputs.scored_rows
        result.scores = score_predictions({h: t[rows] for h, t in inputs.targets.items()},
                                          {h: p[rows] for h, p in probs.items()}, classes, heads)
        if result.labels is not None:  # the decided labels are what is scored; the probabilities keep log_loss
            decided = classification_metrics(inputs.targets[heads[0]][rows], result.labels[rows], classes[heads[0]])
            result.scores = {**decided, "log_loss": result.scores["log_loss"]}
    # Build the submission before writing anything, so a mismatching sample leaves no files behind.
    submission = _submission(result, recipe, heads, sample, sample_submission)
    if write and result.main:
        _write(result, submission, inputs, data, sample_submission)
    if wait is not None:
        wait()
    return result


def _matching_export(run: Run, onnx: str | Path | None, heads: list[str], classes: dict[str, list[str]],
                     tta: str | Sequence[str] | None, folds: str | int | None, combine: str | None,
                     fold_states: FoldStatus) -> ExportedGraphs:
    """The run's export, refused when it is of other classes or when --tta/--folds/--combine ask for what it lacks."""
    exported = open_export(onnx if onnx is not None else run.export_dir())
    if exported.heads != heads or exported.classes != classes:
        raise RunError(f"the export in {exported.folder} predicts other classes than run {run.id}",
                       f"export this run again (`clsctl export {run.id}`), or pass its own export with --onnx")
    again = f"`clsctl export {run.id}` with the folds and views you want, or leave the option out"
    if isinstance(tta, str) and tta.strip().lower() == "auto":
        raise UsageError("--tta auto compares views with the fold checkpoints", "use it with --engine torch")
    if tta is not None and parse_tta(tta) != exported.views:
        raise UsageError(f"--tta: the export averages the views {', '.join(exported.views)}", again)
    if folds is not None and select_folds(run, folds, fold_states) != exported.folds:
        raise UsageError(f"--folds {folds}: the export holds folds {', '.join(map(str, exported.folds))}", again)
    if combine is not None and combine != exported.combine:
        raise UsageError(f"--combine {combine}: the export combines with {exported.combine}", again)
    return exported


def _check_name(run: Run, name: str) -> None:
    """Refuse a prediction-set name that is not a plain file name, before any work is done."""
    try:
        run.prediction_path(name)  # the store owns the rule, and refuses `../run` or `/abs/path`
    except RunError as exc:
        raise UsageError(f"--name {name!r} is not a plain name (the set is written as predictions/<name>.* "
                         "inside the run)", exc.hint) from None


def _submission(result: PredictResult, recipe, heads: list[str], sample, sample_path):  # noqa: ANN001, ANN202
    from toolkit.predict.submission import build_submission

    if len(heads) == 1:
        probs, names = result.probs[heads[0]], result.classes[heads[0]]
        answer = [str(c) for c in sample.columns[1:]] if sample is not None else []
        if result.labels is not None and (len(answer) > 1 or (answer and answer[0] in names)):
            result.notes.append("the sample submission asks for probabilities, which the decision rule does not "
                                "change (it decides labels)")
    else:
        order, names = _combined_classes(recipe, heads, result.classes)
        probs = _combined_probs([result.probs[h] for h in order])
    where = f"sample submission {sample_path}" if sample_path is not None else "submission"
    return build_submission(result.ids, result.paths, probs, names, sample=sample, labels=result.labels, where=where)


def _params(record: dict[str, Any], method: str) -> dict[str, Any]:
    """The parameters of one calibration method and its cross-fitted NLL / ECE, for the prediction record."""
    fitted = record[method]
    return {**{k: v for k, v in fitted.items() if k not in ("after", "per_fold")}, "before": record["before"],
            "after": fitted["after"]}


def _write(result: PredictResult, submission: pd.DataFrame, inputs: PredictionInput, data: str | Path,
           sample_path: str | Path | None) -> None:
    scores = None
    if result.scores is not None:
        keep = ("n", "accuracy", "macro_f1", "balanced_accuracy", "log_loss", "per_class_recall", "confusion_matrix")
        scores = {k: v for k, v in result.scores.items() if k in keep}
    info = {
        "name": result.name, "data": str(Path(data).absolute()), "root": str(inputs.root), "source": inputs.source,
        "n": result.n, "folds": result.folds, "views": result.views, "combine": result.combine, "engine": result.engine,
        "classes": result.classes, "sample_submission": str(sample_path) if sample_path is not None else None,
        "scores": scores, "unscored": result.unscored, "notes": result.notes,
        "seconds": round(result.seconds, 3), "img_s": round(result.img_s, 2),
        "tta_auto": result.tta_auto["chosen"] if result.tta_auto else None,
        "decision": result.decision_rule,
        "decision_detail": None if result.decision is None else result.decision.summary(),
        "calibration": result.calibration,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if inputs.skipped:
        info["skipped"] = inputs.skipped  # unreadable images left out (data.on_bad_image = "skip")
    frame = probability_frame(result.ids, result.paths, result.probs, result.classes)
    result.files = result.run.write_predictions(result.name, frame, submission, info, tta=result.tta_auto)
