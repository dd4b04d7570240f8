"""Run an exported ONNX graph (``clsctl export``) with onnxruntime: ``clsctl predict --engine onnx``.

Images reach the graph as they reach the PyTorch models: the record's image loader, its eval pipeline
at the trained size and the batch normalizer (see :class:`~toolkit.predict.engine.Inference`). Folds,
flip views and their averaging happen inside the graph, so the export's ``preprocessing.json`` says which
folds and views a prediction used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.preprocessing import Preprocessing
from toolkit.errors import RunError, ToolkitError
from toolkit.progress import NullProgress, Progress, as_progress
from toolkit.store.exports import read_export_info


@dataclass(frozen=True)
class ExportedGraphs:
    """An export folder as ``preprocessing.json`` describes it.

    Attributes:
        folder: the export folder.
        info: the parsed ``preprocessing.json``.
        preprocessing: the preprocessing record the graphs were exported with.
    """

    folder: Path
    info: dict[str, Any]
    preprocessing: Preprocessing

    @property
    def heads(self) -> list[str]:
        return [str(h) for h in self.info["heads"]]

    @property
    def classes(self) -> dict[str, list[str]]:
        return {h: [str(c) for c in self.info["classes"][h]] for h in self.heads}

    @property
    def folds(self) -> list[int]:
        return sorted(int(k) for g in self.info["graphs"] for k in g["folds"])

    @property
    def views(self) -> list[str]:
        return [str(v) for v in self.info["views"]]

    @property
    def combine(self) -> str:
        return str(self.info["combine"])

    @property
    def input_name(self) -> str:
        return str(self.info["input"]["name"])

    def graph_paths(self) -> list[Path]:
        """The ``.onnx`` files, in fold order; RunError naming the first one that is missing."""
        paths = [self.folder / g["file"] for g in self.info["graphs"]]
        for path in paths:
            if not path.is_file():
                raise RunError(f"export {self.folder}: {path.name} is missing", "export the run again")
        return paths


def open_export(folder: str | Path) -> ExportedGraphs:
    """Read an export folder (or the folder of a given ``.onnx`` file).

    Raises:
        RunError: no export there, or its record is incomplete.
    """
    info = read_export_info(folder)
    folder = Path(folder)
    folder = folder.parent if folder.suffix == ".onnx" else folder
    missing = [k for k in ("heads", "classes", "views", "combine", "input", "outputs", "preprocessing") if k not in info]
    if missing:
        raise RunError(f"{folder}/preprocessing.json lacks {', '.join(missing)}", "export the run again")
    return ExportedGraphs(folder.absolute(), info, Preprocessing.from_dict(info["preprocessing"]))


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session over ``path``; ``threads`` defaults to PyTorch's thread count (a fair comparison)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"onnxruntime cannot load {path}: {text[:200]}", "export the run again") from None


class OnnxInference:
    """Runs an export's graph(s) over images; see :meth:`run`."""

    def __init__(self, export: ExportedGraphs, *, batch_size: int = 64, workers: int | None = None,
                 progress: Progress | bool | None = None, threads: int | None = None) -> None:
        from toolkit.runtime import predict_loader_workers

        self.export = export
        self.batch_size = max(1, int(batch_size))
        self.workers = predict_loader_workers(workers, 1, "cpu")
        self.progress = as_progress(progress) if progress else NullProgress()
        self.sessions = [onnx_session(p, threads) for p in export.graph_paths()]
        self.images_seen = 0

    def run(self, paths: Sequence[str], title: str = "predict (onnx)") -> dict[str, np.ndarray]:
        """Probabilities per head ``[N, C]`` for each image path, folds and views combined as exported."""
        import torch

        from toolkit.data.dataset import BatchNormalize
        from toolkit.data.transforms import eval_pipeline
        from toolkit.predict.engine import ViewDataset
        from toolkit.predict.tta import Pipeline

        prep = self.export.preprocessing
        # The identity view's pipeline (uint8 at the eval size); flips are inside the graph.
        base = (Pipeline("eval"), eval_pipeline(prep, to_tensor=False))
        dataset = ViewDataset(paths, [base], loader=prep.image_loader(0))
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.workers)
        normalize = BatchNormalize(prep.mean, prep.std, channels_last=False)
        heads = self.export.heads
        outputs = {o["head"]: o for o in self.export.info["outputs"]}
        probs = {h: np.zeros((len(paths), len(self.export.classes[h])), dtype=np.float32) for h in heads}
        bar = self.progress.task(title, len(paths))
        try:
            for batch, index in loader:
                x = normalize(batch["base"]).numpy()
                rows = index.numpy()
                for h, p in self._forward(x, heads, outputs).items():
                    probs[h][rows] = p
                bar.advance(len(rows))
                self.images_seen += len(rows)
        finally:
            bar.close()
        return probs

    def _forward(self, x: np.ndarray, heads: list[str], outputs: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
        feed = {self.export.input_name: x}
        if len(self.sessions) == 1:
            names = [outputs[h]["name"] for h in heads]
            return dict(zip(heads, self.sessions[0].run(names, feed), strict=True))
        # One graph per fold: probabilities average as they would in one graph; under mean_logit each
        # graph also gives its views' mean logits, whose mean over folds is the mean over everything.
        logit = self.export.combine == "mean_logit"
        key = "logits" if logit else "name"
        if logit and any("logits" not in outputs[h] for h in heads):
            raise ToolkitError("this per-fold export has no logit outputs to combine with mean_logit",
                               "export the run again")
        total = {h: 0.0 for h in heads}
        for session in self.sessions:
            for h, y in zip(heads, session.run([outputs[h][key] for h in heads], feed), strict=True):
                total[h] = total[h] + y.astype(np.float64)
        out = {}
        for h in heads:
            mean = total[h] / len(self.sessions)
            if logit:
                e = np.exp(mean - mean.max(axis=-1, keepdims=True))
                mean = e / e.sum(axis=-1, keepdims=True)
            out[h] = mean.astype(np.float32)
        return out
