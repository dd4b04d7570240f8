"""onnxruntime vs PyTorch on the CPU: img/s of the same fold-averaged prediction, side by side in one process.

Usage::

    python benchmarks/export_bench.py RUN [--images 1024] [--rounds 3] [--batch 64] [--threads N]

RUN needs an export (``clsctl export RUN``; a copy of a run folder is fine). Both sides predict the same
images of the run's manifest with the export's folds, views and combine, at the same thread count:

* **model**: forward passes only, on the same normalized batches held in memory. PyTorch runs the fold
  models as ``clsctl predict`` does (channels-last when the run trained so, ``inference_mode``, every fold
  on every view, softmaxes averaged); onnxruntime runs the exported graph.
* **end-to-end**: ``predict(..., write=False)`` with ``engine="torch"`` and ``engine="onnx"``: decode
  (through the warm decoded cache), resize, normalize, forward, average.

Rounds interleave the contenders (torch, onnx, then again) after one warm-up round, so a slow phase of a
shared machine hits both. Prints a Markdown table: best round's img/s (range) and the onnx/torch ratio
per round (median, range).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _model_side(run, exported, paths: list[str], batch: int):  # noqa: ANN001, ANN202
    """The two forward-only contenders over the same preloaded batches."""
    from toolkit.data.dataset import BatchNormalize, as_tensor
    from toolkit.data.transforms import eval_pipeline
    from toolkit.export import AveragedFolds
    from toolkit.models import load_fold_model
    from toolkit.predict import onnx_session

    prep = exported.preprocessing
    loader, transform = prep.image_loader(0), eval_pipeline(prep, to_tensor=False)
    normalize = BatchNormalize(prep.mean, prep.std, channels_last=False)
    images = torch.stack([as_tensor(transform(image=loader(p))["image"]) for p in paths])
    batches = [normalize(images[i:i + batch]) for i in range(0, len(paths), batch)]
    models = [load_fold_model(run, k) for k in exported.folds]
    channels_last = bool(models[0].record.model.get("channels_last"))
    module = AveragedFolds([m.model for m in models], exported.views, models[0].record.head_sizes, exported.combine)
    sessions = [onnx_session(exported.folder / g["file"]) for g in exported.info["graphs"]]
    if len(sessions) != 1:
        raise SystemExit("the model-only bench wants a single averaged graph (export without --per-fold)")
    session, name = sessions[0], exported.input_name
    feeds = [{name: b.numpy()} for b in batches]
    layout = [b.contiguous(memory_format=torch.channels_last) if channels_last else b for b in batches]

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([module(b)[0].numpy() for b in layout])

    def run_onnx() -> np.ndarray:
        return np.concatenate([session.run(None, f)[0] for f in feeds])

    return run_torch, run_onnx


def _end_to_end_side(run, paths: list[str], root: Path, batch: int, exported):  # noqa: ANN001, ANN202
    import pandas as pd

    from toolkit.predict import predict

    folder = Path(tempfile.mkdtemp(prefix="export-bench-"))
    manifest = folder / "rows.csv"
    pd.DataFrame({"path": [str(Path(p).relative_to(root)) for p in paths]}).to_csv(manifest, index=False)
    tta = ",".join(v for v in exported.views if v != "identity") or "none"
    folds = ",".join(map(str, exported.folds))

    def side(engine: str):  # noqa: ANN202
        def go() -> np.ndarray:
            kwargs = {"tta": tta, "folds": folds} if engine == "torch" else {}
            result = predict(run, manifest, root=root, engine=engine, write=False, batch_size=batch, **kwargs)
            return next(iter(result.probs.values()))
        return go

    return side("torch"), side("onnx")


def _timed(fn) -> tuple[float, np.ndarray]:  # noqa: ANN001
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from toolkit.data.training import run_image_root
    from toolkit.predict import open_export
    from toolkit.store import RunStore

    run = RunStore(Path(args.run).parent).open(args.run)
    exported = open_export(run.export_dir())
    root = run_image_root(run)
    manifest = run.read_manifest()
    paths = [str(root / p) for p in manifest["path"].astype(str).head(args.images)]
    contenders = {
        "model": _model_side(run, exported, paths, args.batch),
        "end-to-end": _end_to_end_side(run, paths, root, args.batch, exported),
    }
    rates: dict[tuple[str, str], list[float]] = {}
    diffs: dict[str, float] = {}
    for what, (torch_fn, onnx_fn) in contenders.items():
        for rnd in range(args.rounds + 1):  # round 0 warms the cache, the allocator and the sessions
            t_torch, p_torch = _timed(torch_fn)
            t_onnx, p_onnx = _timed(onnx_fn)
            if rnd == 0:
                diffs[what] = float(np.abs(p_torch - p_onnx).max())
                continue
            rates.setdefault((what, "torch"), []).append(len(paths) / t_torch)
            rates.setdefault((what, "onnx"), []).append(len(paths) / t_onnx)
    print(f"run {run.id}: {len(paths)} images, folds {exported.folds}, views {exported.views}, "
          f"{torch.get_num_threads()} thread(s), batch {args.batch}, {args.rounds} rounds\n")
    print("| measure | PyTorch img/s | onnxruntime img/s | onnx / torch | max abs prob diff |")
    print("|---|---|---|---|---|")
    for what in contenders:
        t, o = rates[(what, "torch")], rates[(what, "onnx")]
        ratios = [b / a for a, b in zip(t, o, strict=True)]
        print(f"| {what} | {max(t):.0f} ({min(t):.0f}–{max(t):.0f}) | {max(o):.0f} ({min(o):.0f}–{max(o):.0f}) | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {diffs[what]:.1e} |")


if __name__ == "__main__":
    main()
