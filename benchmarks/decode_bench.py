"""Which decoder? PIL vs OpenCV vs torchvision.io on the shared data: speed and identical pixels.

Run from the repository root::

    .venv/bin/python benchmarks/decode_bench.py [--limit 1500] [--rounds 3] [--out FILE]

For each image set (pacs-sketch PNGs, facemask crops PNGs, mnist-10k PNGs, facemask source photos
JPEG), in one process, one thread, page cache warm, rounds interleaved so a slow phase of a shared
machine hits every decoder:

* ``toolkit``: ``toolkit.imaging.decode.load_image_array`` (Pillow, plus EXIF orientation and the mode
  rules: alpha composited on white, 16-bit scaled, palette expanded) — what clsctl uses;
* ``pil``: ``np.asarray(Image.open(p).convert("RGB"))``;
* ``opencv``: ``cv2.imread(p, cv2.IMREAD_COLOR)`` then BGR→RGB (OpenCV applies EXIF orientation);
* ``torchvision``: ``torchvision.io.decode_image(read_file(p), mode=RGB)``, as a HWC numpy array.

Pixels are compared with the toolkit's output on every file: a decoder is a drop-in only if every
array is identical (shape and values). Results print as a Markdown table: best-round images/s, the
ratio to the toolkit's loader, and the count of files whose pixels differ (with the largest |Δ|).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))


def image_sets(limit: int) -> dict[str, list[str]]:
    import pandas as pd

    sets = {}
    for name, sub in (("pacs-sketch", "pacs-sketch"), ("facemask crops", "facemask-3class"), ("mnist-10k", "mnist-10k")):
        man = DATA / sub / "manifest.csv"
        if man.is_file():
            paths = pd.read_csv(man)["path"].tolist()
            sets[name] = [str(DATA / sub / p) for p in paths[:: max(1, len(paths) // limit)][:limit]]
    photos = sorted((DATA / "facemask-3class" / "source" / "images").glob("*.jpg"))
    if photos:
        sets["facemask photos (JPEG)"] = [str(p) for p in photos[:limit]]
    return sets


def decoders() -> dict:
    import cv2
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image, read_file

    from toolkit.imaging.decode import load_image_array

    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    def pil(p: str) -> np.ndarray:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))

    def opencv(p: str) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def tv(p: str) -> np.ndarray:
        return decode_image(read_file(p), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    return {"toolkit": load_image_array, "pil": pil, "opencv": opencv, "torchvision": tv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1500, help="files per image set (spread over the manifest)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    funcs = decoders()
    results = {}
    print("| images | decoder | img/s (best round) | vs toolkit | files with other pixels (max abs diff) |")
    print("|---|---|---|---|---|")
    for set_name, paths in image_sets(args.limit).items():
        reference = [funcs["toolkit"](p) for p in paths]  # also warms the page cache
        best = {k: 0.0 for k in funcs}
        for _ in range(args.rounds):
            for name, fn in funcs.items():
                t = time.perf_counter()
                for p in paths:
                    fn(p)
                best[name] = max(best[name], len(paths) / (time.perf_counter() - t))
        row = {}
        for name, fn in funcs.items():
            differ, worst = 0, 0
            for p, ref in zip(paths, reference, strict=True):
                try:
                    out = fn(p)
                except Exception:  # noqa: BLE001 - a decoder that cannot read a file counts as differing
                    differ, worst = differ + 1, 255
                    continue
                if out.shape != ref.shape:
                    differ, worst = differ + 1, 255
                elif not np.array_equal(out, ref):
                    differ += 1
                    worst = max(worst, int(np.abs(out.astype(np.int16) - ref.astype(np.int16)).max()))
            row[name] = {"img_s": best[name], "ratio": best[name] / best["toolkit"], "differing_files": differ,
                         "max_abs_diff": worst, "files": len(paths)}
            print(f"| {set_name} ({len(paths)}) | {name} | {best[name]:.0f} | {best[name] / best['toolkit']:.2f} | "
                  f"{differ} ({worst}) |", flush=True)
        results[set_name] = row
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
