"""``clsctl export``: a run's fold models as ONNX, checked against PyTorch before anything is written.

The graph holds what ``clsctl predict`` does after the data loader: every chosen fold model on every
flip view, averaged as the recipe's ``[tta] combine`` says. ``preprocessing.json`` beside it holds what
happens before (sizes, resize mode, crop, mean/std, the decoded cache's downscale) and the class list of
each output. The parity check runs the graph with onnxruntime on images of the run's own manifest and
compares it with :class:`~toolkit.predict.engine.Inference` in float32 on the CPU; above the tolerance
the staged folder is removed and nothing is written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.training import run_image_root
from toolkit.errors import DataError, RunError, ToolkitError, UsageError
from toolkit.export.graph import INPUT_NAME, AveragedFolds, check_views, export_onnx, output_name
from toolkit.models.checkpoint import FoldModel, load_fold_model
from toolkit.predict import (
    Inference,
    OnnxInference,
    SingleProcess,
    build_views,
    combine_views,
    fold_status,
    open_export,
    parse_tta,
    select_folds,
)
from toolkit.progress import NullProgress, Progress, as_progress
from toolkit.store import Run, RunStore
from toolkit.store.exports import (
    PREPROCESSING_JSON,
    check_replaceable,
    graph_file,
    staged_folder,
    write_export_info,
)

#: Largest |ONNX - PyTorch| probability an export may differ by.
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        run: the exported run.
        folder: the export folder.
        files: the ``.onnx`` files, then ``preprocessing.json``.
        folds, views, combine: what the graphs hold.
        parity: ``{"rows", "max_abs_diff", "tolerance", "per_graph", "paths"}``.
        seconds: time of the whole export (tracing dominates).
    """

    run: Run
    folder: Path
    files: list[Path]
    folds: list[int]
    views: list[str]
    combine: str
    parity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def export_run(run: Run | str | Path, *, folds: str | int | None = None, tta: str | Sequence[str] | None = None,
               out: str | Path | None = None, opset: int | None = None, per_fold: bool = False,
               parity_rows: int = 16, tolerance: float = TOLERANCE, runs_root: str | Path | None = None,
               progress: Progress | bool | None = None) -> ExportResult:
    """Export a train run's fold models to ONNX with a parity check.

    Args:
        run: a run folder, id, name suffix or :class:`~toolkit.store.Run`.
        folds: ``all`` (None), ``best``, a fold number or a list like ``0,2``.
        tta: flip views to average in the graph (``none``, ``hflip``, ``hflip,vflip``); None: the recipe's
            ``[tta] views`` (so the graph reproduces a plain ``clsctl predict``).
        out: the export folder (default: the run's ``export/``); replaced as a whole.
        opset: ONNX opset (default: the exporter's).
        per_fold: one graph per fold (``fold<k>.onnx``) instead of one averaged ``model.onnx``.
        parity_rows: images of the run's manifest the check runs on.
        tolerance: largest allowed max |ONNX - PyTorch| probability.
        runs_root: where run ids are looked up.
        progress: where progress lines go.

    Raises:
        RunError: not a finished train run. UsageError: bad folds, views, opset or ``out``.
        DataError: the run's images are not readable. ToolkitError: export or parity check failed.
    """
    t0 = time.perf_counter()
    progress = as_progress(progress) if progress else NullProgress()
    run = run if isinstance(run, Run) else RunStore(runs_root).open(run)
    if run.kind != "train":
        raise RunError(f"run {run.id} is a `{run.kind}` run, which has no models", "export a train run")
    if opset is not None and not 7 <= opset <= 30:
        raise UsageError(f"--opset {opset} is not an ONNX opset", "leave it out for the exporter's default, e.g. 18")
    if parity_rows < 1:
        raise UsageError("the parity check needs at least one image", "pass parity_rows >= 1")
    recipe = run.read_recipe()
    heads, classes = run.read_classes()
    views = parse_tta(recipe.tta.views if tta is None else tta)
    check_views(views)
    combine = recipe.tta.combine
    selected = select_folds(run, folds, fold_status(run))
    target = Path(out).absolute() if out is not None else run.export_dir()
    check_replaceable(target, PREPROCESSING_JSON)
    paths = parity_images(run, parity_rows)

    models = [_cpu_model(load_fold_model(run, k)) for k in selected]
    record = models[0].record
    prep = record.preprocessing
    groups = [[m] for m in models] if per_fold else [models]
    outputs = [{"head": h, "name": output_name(h), "classes": classes[h],
                **({"logits": output_name(h, "logits")} if per_fold and combine == "mean_logit" else {})}
               for h in heads]
    names = [o["name"] for o in outputs] + [o["logits"] for o in outputs if "logits" in o]
    if len(set(names)) != len(names):
        raise UsageError(f"heads {', '.join(heads)} give clashing output names", "rename the heads in the recipe")
    info = _record(run, recipe, heads, classes, selected, views, combine, prep, outputs, opset,
                   [{"file": graph_file(g[0].fold if per_fold else None), "folds": [m.fold for m in g]} for g in groups])
    with staged_folder(target) as staged:
        for group in groups:
            file = graph_file(group[0].fold if per_fold else None)
            progress.log(f"export: tracing {file} (folds {[m.fold for m in group]}, views {views})")
            module = AveragedFolds([m.model for m in group], views, record.head_sizes, combine,
                                   logits=per_fold and combine == "mean_logit")
            export_onnx(module, staged / file, prep.eval_size, prep.in_chans, names, opset)
        write_export_info(staged, info)
        progress.log(f"export: parity check on {len(paths)} image(s) of the run's manifest")
        parity = check_parity(run, models, groups, views, combine, staged, paths, tolerance)
        info["parity"] = parity
        write_export_info(staged, info)
    files = [target / g["file"] for g in info["graphs"]] + [target / PREPROCESSING_JSON]
    return ExportResult(run=run, folder=target, files=files, folds=selected, views=views, combine=combine,
                        parity=parity, seconds=time.perf_counter() - t0)


def _cpu_model(fm: FoldModel) -> FoldModel:
    import torch

    # Traced graphs carry no memory format; a channels-last model is exported in the default layout.
    model = fm.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return dataclasses.replace(fm, model=model)


def _record(run: Run, recipe: Any, heads: list[str], classes: dict[str, list[str]], folds: list[int],
            views: list[str], combine: str, prep: Any, outputs: list[dict[str, Any]], opset: int | None,
            graphs: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``preprocessing.json`` (without the parity figure)."""
    import albumentations as A
    import onnx
    import torch

    from toolkit.data.transforms import eval_pipeline

    return {
        "format": 1, "run": run.id, "arch": recipe.model.name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "graphs": graphs, "folds": folds, "views": views, "combine": combine,
        "input": {"name": INPUT_NAME, "shape": ["batch", prep.in_chans, prep.eval_size, prep.eval_size],
                  "dtype": "float32", "layout": "NCHW", "channels": "RGB" if prep.in_chans == 3 else "as decoded",
                  "value": "(pixel / 255 - mean) / std, per channel, after the resize below"},
        "preprocessing": prep.to_dict(),
        # Before the resize, images larger than this are downscaled (bilinear) so their shorter side is it.
        "cache_side": prep.cache_side if prep.cache else None,
        "resize": A.to_dict(eval_pipeline(prep, to_tensor=False)),
        "heads": heads, "classes": {h: classes[h] for h in heads}, "outputs": outputs,
        "opset": opset, "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
    }


def parity_images(run: Run, rows: int) -> list[str]:
    """``rows`` images of the run's manifest, spread over it, that exist (absolute paths).

    Raises:
        DataError: the manifest's images are not where the run read them.
    """
    manifest = run.read_manifest()
    if manifest is None or "path" not in manifest.columns or len(manifest) == 0:
        raise RunError(f"run {run.id} has no manifest.csv with paths", "the parity check needs the run's own images")
    root = run_image_root(run)
    picked = np.unique(np.linspace(0, len(manifest) - 1, num=min(rows, len(manifest))).round().astype(int))
    paths = [str(root / p) for p in manifest["path"].astype(str).to_numpy()[picked]]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"the parity check needs the run's images, and {missing[0]} is missing",
                        f"make the data the run trained on readable under {root} again")
    return paths


def check_parity(run: Run, models: Sequence[FoldModel], groups: Sequence[Sequence[FoldModel]], views: list[str],
                 combine: str, folder: Path, paths: list[str], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Max |onnxruntime - PyTorch| probability of each graph in ``folder`` on ``paths``.

    PyTorch runs as ``clsctl predict`` does (the same data pass), in float32 on the CPU.

    Raises:
        ToolkitError: a graph differs by more than ``tolerance``.
    """
    recipe = run.read_recipe()
    heads = list(models[0].record.heads)
    sizes = models[0].record.head_sizes
    inference = Inference(SingleProcess("cpu"), batch_size=len(paths), workers=0, progress=False)
    logits = inference.run(list(models), build_views(views, models[0].record.preprocessing.eval_size), paths,
                           recipe.aug, recipe.train.seed, combine, title="parity: pytorch")  # [F, V, N, C]
    exported = open_export(folder)
    position = {m.fold: i for i, m in enumerate(models)}
    per_graph: dict[str, float] = {}
    for group, graph in zip(groups, exported.info["graphs"], strict=True):
        rows = [position[m.fold] for m in group]
        want = combine_views(logits[rows], sizes, combine, axes=(0, 1))
        one = dataclasses.replace(exported, info={**exported.info, "graphs": [graph]})
        got = OnnxInference(one, batch_size=len(paths), workers=0).run(paths)
        diff = max(float(np.abs(got[h].astype(np.float64) - w).max()) for h, w in zip(heads, want, strict=True))
        per_graph[graph["file"]] = diff
    worst = max(per_graph.values())
    if not worst <= tolerance:  # also refuses NaN
        raise ToolkitError(f"parity check failed: onnxruntime and PyTorch probabilities differ by up to {worst:.2e} "
                           f"(> {tolerance:.0e}) on {len(paths)} image(s); nothing was written",
                           "try another --opset, or report it with CLSCTL_DEBUG=1")
    return {"rows": len(paths), "max_abs_diff": worst, "tolerance": tolerance, "per_graph": per_graph,
            "paths": [str(Path(p).relative_to(run_image_root(run))) for p in paths]}
