"""Benchmark ``clsctl predict``: images per second against a bare ``model(x)`` loop, per TTA view.

Run from the repository root::

    .venv/bin/python benchmarks/predict_bench.py [--model resnet18] [--size 128] [--images 256]
        [--batch 64] [--workers N] [--threads N] [--views none,hflip,vflip,scale:1.15,fivecrop,trainaug:2]
        [--repeats 2] [--no-cache] [--out FILE]

What it does:

1. Writes ``--images`` generated PNGs (smooth colour fields with noise, 1.25 × ``--size`` px, so each
   is decoded and resized as real data would be) and trains a one-fold, one-epoch run of ``--model``
   at ``--size`` px on a few of them: the weights do not matter, the code path does.
2. For each view policy, times ``toolkit.predict.predict`` on the images — its own inference loop:
   reading pixels (from the decoded cache, warmed by a first call; ``--no-cache`` decodes every PNG
   every time), the run's eval/train transforms, every forward pass, gathering (model loading and
   file writing are excluded; both are once per call).
3. Times a bare loop with the same model (freshly loaded, as predict loads it), batch size and thread
   count on tensors already in memory: exactly the forward passes the policy needs (the identity view
   plus each view's passes at its input size), nothing else. The two are interleaved, best of
   ``--repeats`` each, so both meet the same load on a shared machine.

``ratio`` = bare seconds / predict seconds: 1.0 means predict costs nothing beyond the forward passes.
Results are printed as a Markdown table (and written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_images(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        colour = rng.uniform(0, 255, 3)
        field = (colour * (0.6 + 0.4 * np.sin(6 * xx + rng.uniform(0, 6))[..., None] * yy[..., None]))
        pixels = np.clip(field + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")


def make_run(base: Path, model: str, size: int, batch: int, cache: bool = True):  # noqa: ANN201
    import tomli_w

    from toolkit.config import load_recipe
    from toolkit.train.trainer import Trainer

    train = base / "train"
    for c in ("a", "b"):
        make_images(train / c, 16, int(size * 1.25), seed=ord(c))
    recipe = {
        "data": {"root": str(train), "image_size": size, "num_workers": 0, "normalize": "imagenet", "cache": cache},
        "split": {"folds": 2, "seed": 0},
        "model": {"name": model, "pretrained": False},
        "aug": {"preset": "light"},
        "sched": {"name": "none"},
        "train": {"epochs": 1, "batch_size": batch // 2, "seed": 0},
    }
    (base / "r.toml").write_text(tomli_w.dumps(recipe))
    return Trainer(load_recipe(base / "r.toml"), runs_root=base / "runs", folds="0", progress=False).run()


def bare_seconds(load_model, views, size: int, n: int, batch: int) -> tuple[float, int]:  # noqa: ANN001
    """Time model(x) over in-memory batches: one pass per forward pass the views need.

    The model is freshly loaded, as predict loads it, and timed from its first forward pass on, as
    predict's loop is: both pay the same first-call costs (weight packing, allocator growth).
    """
    import torch

    from toolkit.predict.tta import build_views

    passes: list[int] = []
    for view in build_views(views, size):
        side = view.pipeline.size if view.pipeline.kind == "eval" and view.pipeline.size and \
            not view.ops[0].startswith("crop:") else size
        passes += [side] * view.passes
    tensors = {s: torch.randn(n, 3, s, s) for s in set(passes)}
    model = load_model()
    with torch.inference_mode():
        t0 = time.perf_counter()
        for side in passes:
            x = tensors[side]
            for i in range(0, n, batch):
                model(x[i:i + batch])
        return time.perf_counter() - t0, len(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="predict's data-loader workers [its default]")
    parser.add_argument("--views", default="none,hflip,vflip,scale:1.15,fivecrop,trainaug:2",
                        help="comma list of policies; each is one view besides the identity (or none)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N interleaved timings for both sides")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default: the cores]")
    parser.add_argument("--no-cache", action="store_true",
                        help="data.cache = false: decode every PNG on every call (the first-pass cost)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from toolkit.models import load_fold_model
    from toolkit.predict import parse_tta, predict
    from toolkit.runtime import predict_loader_workers as default_workers

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["CLSCTL_CACHE"] = str(base / "cache")  # the decoded cache of throwaway images stays here
        run = make_run(base, args.model, args.size, args.batch, cache=not args.no_cache)
        data = base / "test"
        make_images(data, args.images, int(args.size * 1.25), seed=7)
        def load_model():  # noqa: ANN202
            return load_fold_model(run, 0).model

        workers = default_workers(args.workers, 1, "cuda" if torch.cuda.is_available() else "cpu")
        rows = []
        predict(run, data, tta="none", batch_size=args.batch, workers=args.workers, write=False, progress=False)
        for policy in args.views.split(","):
            views = parse_tta(policy)
            # Interleaved, so that both sides meet the same load on a shared machine; best of N each.
            p_times, b_times = [], []
            for _ in range(args.repeats):
                p_times.append(predict(run, data, tta=policy, batch_size=args.batch, workers=args.workers,
                                       write=False, progress=False).seconds)
                b, passes = bare_seconds(load_model, views, args.size, args.images, args.batch)
                b_times.append(b)
            p_s, b_s = min(p_times), min(b_times)
            rows.append((policy, passes, args.images / p_s, args.images / b_s, b_s / p_s))
            print(f"{policy}: predict {args.images / p_s:.1f} img/s, bare {args.images / b_s:.1f} img/s, "
                  f"ratio {b_s / p_s:.2f}", flush=True)

    lines = [f"{args.model} at {args.size} px, {args.images} images, batch {args.batch}, "
             f"{torch.get_num_threads()} torch threads, {workers} loader worker(s), {os.cpu_count()} CPUs, "
             f"decoded cache {'off' if args.no_cache else 'warm'}, "
             f"device {'cuda' if torch.cuda.is_available() else 'cpu'}",
             "",
             "| views | forward passes / image | predict img/s | bare model(x) img/s | ratio |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {p} | {n} | {pi:.1f} | {bi:.1f} | {r:.2f} |" for p, n, pi, bi, r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
