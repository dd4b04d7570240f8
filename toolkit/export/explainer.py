"""``clsctl explain``: where a run's model looks, as Grad-CAM-family heat maps on the images it was shown.

Images go through the fold's own eval preprocessing (the record's image loader, eval pipeline and
normalization), so a map is of the input the model saw; it is then drawn back on the image file's
own geometry (:func:`toolkit.export.cam.to_original`). ``--top-losses K`` explains the K out-of-fold rows
with the largest loss, each with the fold model that predicted it.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.training import run_image_root
from toolkit.errors import DataError, RunError, UsageError, examples
from toolkit.export.cam import METHODS, compute_maps, input_geometry, to_original
from toolkit.export.figures import explanation_page, explanation_png
from toolkit.models.checkpoint import load_fold_model
from toolkit.predict import fold_status, read_input, select_folds
from toolkit.progress import NullProgress, Progress, as_progress
from toolkit.store import Run, RunStore, atomic_write_bytes, atomic_write_text, slugify
from toolkit.store.exports import (
    EXPLAIN_HTML,
    EXPLANATIONS_JSON,
    check_replaceable,
    read_explanations,
    staged_folder,
    write_explanations,
)

TARGETS = ("pred", "label")


@dataclass
class Explained:
    """One explained image.

    Attributes:
        path: the image file. id: its row id (manifest id, or the file name).
        label: the given label (None when unknown); pred, prob_pred: the model's class and probability.
        prob_label: probability of the given label; target: the class the map is of.
        fold: the fold model used; loss: -log p(label), for top-loss rows.
        map: ``[H, W]`` map in 0..1 on the image file's geometry. png: the written figure.
    """

    path: str
    id: str
    label: str | None
    pred: str
    prob_pred: float
    prob_label: float | None
    target: str
    fold: int
    loss: float | None = None
    map: np.ndarray | None = field(default=None, repr=False)
    png: Path | None = None

    @property
    def evidence(self) -> bool:
        """Whether the map shows any positive evidence for its class (Grad-CAM keeps only that: it may be all zero)."""
        return self.map is None or bool(np.max(self.map) > 0)

    def caption(self) -> str:
        given = f"given {self.label} ({self.prob_label:.2f})" if self.label is not None else "no label"
        return f"{given} · predicted {self.pred} ({self.prob_pred:.2f}) · fold {self.fold}"


@dataclass
class ExplainResult:
    """What :func:`explain` produced: the images in order, the folder written (None with ``write=False``)."""

    run: Run
    items: list[Explained]
    method: str
    target: str
    head: str
    folder: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Row:
    path: str
    id: str
    label: str | None
    fold: int
    loss: float | None = None


def explain(run: Run | str | Path, images: Sequence[str | Path] = (), *, top_losses: int | None = None,
            target: str = "pred", method: str = "gradcam", fold: str | int | None = None, head: str | None = None,
            out: str | Path | None = None, batch_size: int = 16, runs_root: str | Path | None = None,
            progress: Progress | bool | None = None, write: bool = True) -> ExplainResult:
    """Heat maps of where a run's model looks, for some images or the run's top out-of-fold losses.

    Args:
        run: a train run (folder, id, name suffix or :class:`~toolkit.store.Run`).
        images: image files, or one folder (an ImageFolder gives labels) or one CSV/Parquet manifest.
        top_losses: explain the K out-of-fold rows with the largest loss instead (each with its own fold model).
        target: ``pred`` (the predicted class), ``label`` (the given one) or a class name.
        method: ``gradcam``, ``gradcam++`` or ``eigencam`` (class-agnostic).
        fold: the fold model for ``images``: ``best`` (None) or a fold number.
        head: the head of a multi-head run (default: the first).
        out: the output folder (default: the run's ``explain/top-losses`` or ``explain/<images' name>``).
        batch_size: images per forward and backward pass.
        runs_root: where run ids are looked up.
        progress: where progress lines go.
        write: write the PNGs, ``explanations.json`` and ``index.html`` (False: only return the maps).

    Raises:
        RunError: not a train run, or no out-of-fold table for ``top_losses``.
        UsageError: bad target, method, head, fold, or both/neither of images and ``top_losses``.
        DataError: images that do not exist.
    """
    progress = as_progress(progress) if progress else NullProgress()
    run = run if isinstance(run, Run) else RunStore(runs_root).open(run)
    if run.kind != "train":
        raise RunError(f"run {run.id} is a `{run.kind}` run, which has no models", "explain a train run")
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not one of {', '.join(METHODS)}", "e.g. --method gradcam")
    if bool(images) == (top_losses is not None):
        raise UsageError("explain needs either IMAGES or --top-losses K, not both", "e.g. --top-losses 12")
    if top_losses is not None and top_losses < 1:
        raise UsageError(f"--top-losses {top_losses}: explain at least one image", "e.g. --top-losses 12")
    heads, classes = run.read_classes()
    head = head or heads[0]
    if head not in heads:
        raise UsageError(f"--head {head!r} is not a head of run {run.id}", f"heads: {', '.join(heads)}")
    if target not in TARGETS and target not in classes[head]:
        raise UsageError(f"--target {target!r} is not pred, label or a class of `{head}`",
                         f"classes: {examples(classes[head])}")
    if top_losses is not None:
        rows, name = _top_loss_rows(run, head, classes[head], top_losses), "top-losses"
    else:
        rows, name = _image_rows(run, images, head, classes, fold)
    if target == "label" and any(r.label is None for r in rows):
        raise UsageError("--target label: some images have no label",
                         "pass an ImageFolder or a labeled manifest, or use --target pred")
    folder = Path(out).absolute() if out is not None else run.explain_dir(name)
    if write:
        check_replaceable(folder, EXPLANATIONS_JSON)
    items = _explain_rows(run, rows, head, heads, classes, target, method, batch_size, progress)
    result = ExplainResult(run=run, items=items, method=method, target=target, head=head)
    if write:
        _write(result, folder, name)
    return result


def _top_loss_rows(run: Run, head: str, names: list[str], k: int) -> list[_Row]:
    """The ``k`` out-of-fold rows with the largest loss -log p(label) (the most confidently wrong first)."""
    oof = run.read_oof()
    single = len(run.read_classes()[0]) == 1
    label_col = "label" if single else f"label:{head}"
    columns = names if single else [f"{head}:{c}" for c in names]
    lacking = [c for c in [label_col, "path", "fold", *columns] if c not in oof.columns]
    if lacking:
        raise RunError(f"run {run.id}: oof.parquet lacks {', '.join(lacking)}", "the run folder is damaged; retrain it")
    labels = oof[label_col].astype(str)
    known = labels.isin(names).to_numpy()
    probs = oof[columns].to_numpy(dtype=np.float64)
    index = np.array([names.index(v) if v in names else 0 for v in labels])
    loss = -np.log(np.clip(probs[np.arange(len(oof)), index], 1e-12, 1.0))
    loss[~known] = -np.inf
    order = np.argsort(-loss, kind="stable")[:min(k, int(known.sum()))]
    root = run_image_root(run)
    ids = oof["id"].astype(str).to_numpy()
    return [_Row(path=str(root / str(oof["path"].iloc[i])), id=ids[i], label=labels.iloc[i],
                 fold=int(oof["fold"].iloc[i]), loss=float(loss[i])) for i in order]


def _image_rows(run: Run, images: Sequence[str | Path], head: str, classes: dict[str, list[str]],
                fold: str | int | None) -> tuple[list[_Row], str]:
    spec = "best" if fold is None else fold
    chosen = select_folds(run, spec, fold_status(run))
    if len(chosen) != 1:
        raise UsageError(f"--fold {fold}: explain uses one fold model", "pass --fold best or a fold number")
    k = chosen[0]
    first = Path(images[0])
    if len(images) == 1 and (first.is_dir() or first.suffix.lower() in (".csv", ".parquet", ".pq")):
        heads = list(classes)
        data = read_input(first, run.read_recipe(), heads, classes)
        target = data.targets.get(head)
        rows = []
        for i, (rid, rel) in enumerate(zip(data.df["id"].astype(str), data.df["path"].astype(str), strict=True)):
            label = classes[head][int(target[i])] if target is not None and target[i] >= 0 else None
            rows.append(_Row(path=str(data.root / rel), id=rid, label=label, fold=k))
        return rows, slugify(data.name) or "images"
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"image(s) {examples(missing)} do not exist", "pass image files, a folder or a manifest")
    rows = [_Row(path=str(Path(p).absolute()), id=Path(p).name, label=None, fold=k) for p in images]
    return rows, "images"


def _explain_rows(run: Run, rows: list[_Row], head: str, heads: list[str], classes: dict[str, list[str]],
                  target: str, method: str, batch_size: int, progress: Progress) -> list[Explained]:
    import torch

    from toolkit.data.dataset import BatchNormalize, as_tensor
    from toolkit.data.transforms import eval_pipeline
    from toolkit.imaging.decode import load_image_array
    from toolkit.runtime import use_cpu

    device = torch.device("cpu" if use_cpu() else "cuda")
    names = classes[head]
    offset = sum(len(classes[h]) for h in heads[:heads.index(head)])
    items: list[Explained | None] = [None] * len(rows)
    bar = progress.task(f"explain ({method})", len(rows))
    try:
        for k in sorted({r.fold for r in rows}):
            fm = load_fold_model(run, k)
            model = fm.model.to(device)
            prep = fm.record.preprocessing
            loader, transform = prep.image_loader(0), eval_pipeline(prep, to_tensor=False)
            normalize = BatchNormalize(prep.mean, prep.std, channels_last=False)
            todo = [i for i, r in enumerate(rows) if r.fold == k]
            for start in range(0, len(todo), max(1, batch_size)):
                part = todo[start:start + max(1, batch_size)]
                loaded = [loader(rows[i].path) for i in part]
                x = normalize(torch.stack([as_tensor(transform(image=im)["image"]) for im in loaded]), device)
                wanted = _targets(rows, part, target, names, model, x, offset)
                maps = compute_maps(model, x, [offset + t for t in wanted], method)
                for j, i in enumerate(part):
                    row = rows[i]
                    logits = maps.logits[j, offset:offset + len(names)].astype(np.float64)
                    probs = np.exp(logits - logits.max())
                    probs /= probs.sum()
                    original = load_image_array(row.path)
                    geometry = input_geometry(transform, *loaded[j].shape[:2])
                    cam = to_original(maps.maps[j], geometry, loaded[j].shape[:2], original.shape[:2])
                    pred = int(probs.argmax())
                    items[i] = Explained(
                        path=row.path, id=row.id, label=row.label, pred=names[pred], prob_pred=float(probs[pred]),
                        prob_label=float(probs[names.index(row.label)]) if row.label is not None else None,
                        target=names[wanted[j]], fold=k, loss=row.loss, map=cam)
                bar.advance(len(part))
            del model, fm
    finally:
        bar.close()
    return [it for it in items if it is not None]


def _targets(rows: list[_Row], part: list[int], target: str, names: list[str], model: Any, x: Any,
             offset: int) -> list[int]:
    """The class index of each image's map: its prediction, its label or one named class."""
    if target == "label":
        return [names.index(rows[i].label) for i in part]
    if target != "pred":
        return [names.index(target)] * len(part)
    import torch

    with torch.inference_mode():
        logits = model(x)[:, offset:offset + len(names)]
    return [int(v) for v in logits.argmax(dim=1).cpu()]


def _write(result: ExplainResult, folder: Path, name: str) -> None:
    from toolkit.imaging.decode import load_image_array

    run, method = result.run, result.method
    about = (f"{_METHOD_NAMES[method]} of run {run.id} ({result.head}), map of "
             f"{'each prediction' if result.target == 'pred' else 'the given label' if result.target == 'label' else result.target}; "
             "red is where the evidence for that class lies, drawn on each image as the file holds it.")
    with staged_folder(folder) as staged:
        entries, cards = [], []
        for n, item in enumerate(result.items):
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(item.path).stem)[:60] or "image"
            file = f"{n:03d}-{stem}.png"
            title = item.caption()
            sub = f"{method} map of {item.target}" + ("" if item.evidence else " (no positive evidence anywhere)")
            sub += f" · loss {item.loss:.2f}" if item.loss is not None else ""
            image = load_image_array(item.path)  # read again rather than held: a folder may be large
            atomic_write_bytes(staged / file, explanation_png(image, item.map, title, sub))
            entries.append({"png": file, "path": item.path, "id": item.id, "label": item.label, "pred": item.pred,
                            "prob_pred": item.prob_pred, "prob_label": item.prob_label, "target": item.target,
                            "fold": item.fold, "loss": item.loss, "evidence": item.evidence})
            cards.append({"file": file, "alt": f"{item.id}: {title}", "caption": f"{item.id} — {title} — {sub}"})
        index = {"format": 1, "run": run.id, "name": name, "method": method, "target": result.target,
                 "head": result.head, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                 "items": entries}
        atomic_write_text(staged / EXPLAIN_HTML, explanation_page(f"Explanations: {run.id} ({name})", about, cards))
        write_explanations(staged, index)
    for item, entry in zip(result.items, entries, strict=True):
        item.png = folder / entry["png"]
    result.folder = folder
    result.files = {"json": folder / EXPLANATIONS_JSON, "html": folder / EXPLAIN_HTML}


_METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "Eigen-CAM (class-agnostic)"}


def top_loss_explanations(run: Run) -> dict[str, Any] | None:
    """The run's ``explain/top-losses`` set for a report: ``explanations.json`` with absolute ``png`` paths, or None.

    Each item has ``png``, ``path``, ``id``, ``label``, ``pred``, ``prob_pred``, ``prob_label``, ``target``,
    ``fold`` and ``loss``; the set has ``method``, ``target``, ``head`` and ``created``.
    """
    return read_explanations(run.explain_dir())
