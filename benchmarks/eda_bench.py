"""Benchmark ``clsctl eda``: throughput against a bare decode, and peak memory against set size.

Run from the repository root::

    .venv/bin/python benchmarks/eda_bench.py [--workers N] [--synthetic 50000] [--out FILE]

What it measures (on ``$CLSCTL_DATA`` or ``../shared/data``):

* Throughput on pacs-sketch and facemask-3class/crops. Side by side, on the same files with the
  same number of processes and the same chunking: (1) a bare one-pass decode (``Image.open`` +
  ``convert("RGB")``), (2) the toolkit's own loader (``load_image``), (3) ``run_eda``. Files are
  read once beforehand so every contender decodes from the page cache, and each bare run is taken
  both before and after eda so drift shows. The eda rate is reported for its one pass (header,
  hashes, statistics, features, thumbnails) and end to end (plus duplicate search, outliers,
  plots, HTML).
* Peak memory of the whole process tree (main process + pool workers) on mnist-10k and on a
  generated folder of tiny 28×28 PNGs (``--synthetic`` images, 50,000 by default), each eda run
  in a fresh subprocess. With psutil installed the tree's summed RSS is sampled every 20 ms (an
  upper bound: pages shared after fork are counted in each process); without it, the largest
  single process from ``getrusage(RUSAGE_CHILDREN)`` is reported.

Results are printed as a Markdown table (and written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit.clean.duplicates import default_workers  # noqa: E402
from toolkit.data.eda import eda_manifest  # noqa: E402


def data_root() -> Path:
    return Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))


def _bare(path: str) -> int:
    with Image.open(path) as im:
        return im.convert("RGB").size[0]


def _toolkit(path: str) -> int:
    from toolkit.data.images import load_image

    try:
        return load_image(path).size[0]
    except Exception:
        return 0


def decode_rate(func, files: list[str], workers: int) -> float:
    """Images per second of ``func`` over ``files`` with eda's pool settings (pool start included)."""
    chunksize = max(1, min(64, len(files) // (workers * 8)))
    start = time.perf_counter()
    if workers <= 1:
        for f in files:
            func(f)
    else:
        with get_context().Pool(workers) as pool:
            for _ in pool.imap(func, files, chunksize=chunksize):
                pass
    return len(files) / (time.perf_counter() - start)


_CHILD = """
import json, sys, time
from toolkit.data.eda import eda_manifest, run_eda
t = time.perf_counter()
df = eda_manifest(sys.argv[1])
r = run_eda(df, None, sys.argv[2], workers=int(sys.argv[3]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "pass_seconds": r["timing"]["pass_seconds"],
                  "n": r["images"]["total"], "pairs": r["duplicates"]["pairs"]}))
"""


def run_eda_child(data: Path, out: Path, workers: int) -> dict:
    """Run eda in a fresh interpreter; return its timings and the tree's peak memory (MiB)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(data), str(out), str(workers)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    peak_tree = peak_main = 0
    if psutil is not None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                main = p.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                break
            peak_tree, peak_main = max(peak_tree, tree), max(peak_main, main)
            time.sleep(0.02)
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"eda failed on {data} (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["largest_process_mib"] = largest / 1024 if largest > before else None
    result["tree_peak_mib"] = peak_tree / 2**20 if peak_tree else None
    result["main_peak_mib"] = peak_main / 2**20 if peak_main else None
    return result


def write_synthetic(folder: Path, n: int) -> None:
    """``n`` distinct 28×28 grey PNGs in 10 class folders: random 7×7 layouts, upscaled.

    Random layouts keep the perceptual hashes spread out, so the duplicate search finds few pairs
    and the memory measured is that of the per-image tables, not of a pair list.
    """
    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8), "L")
        img = coarse.resize((28, 28), Image.Resampling.BILINEAR)
        img.save(folder / str(i % 10) / f"{i:06d}.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--synthetic", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workers = args.workers
    shared = data_root()
    pacs = shared / "pacs-sketch" / "sketch"
    if not pacs.is_dir():
        pacs = shared / "pacs-sketch"
    lines = [f"workers: {workers}, cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}", "",
             "| data | images | bare decode img/s | load_image img/s | eda pass img/s | eda end-to-end img/s "
             "| pass / bare | end-to-end / bare |", "|---|---|---|---|---|---|---|---|"]
    tmp = Path(tempfile.mkdtemp(prefix="eda-bench-"))
    try:
        for name, folder in (("pacs-sketch", pacs), ("facemask-3class/crops", shared / "facemask-3class" / "crops")):
            if not folder.is_dir():
                lines.append(f"| {name} | missing | | | | | | |")
                continue
            df = eda_manifest(folder)
            files = [str(folder / p) for p in df["path"]]
            for f in files:  # warm the page cache: everyone decodes from memory
                Path(f).read_bytes()
            bare1 = decode_rate(_bare, files, workers)
            tk = decode_rate(_toolkit, files, workers)
            res = run_eda_child(folder, tmp / name.replace("/", "_"), workers)
            bare2 = decode_rate(_bare, files, workers)
            bare = (bare1 + bare2) / 2
            pass_rate = res["n"] / res["pass_seconds"]
            e2e = res["n"] / res["seconds"]
            lines.append(f"| {name} | {len(files)} | {bare:.0f} ({bare1:.0f}/{bare2:.0f}) | {tk:.0f} | {pass_rate:.0f} "
                         f"| {e2e:.0f} | {pass_rate / bare:.2f} | {e2e / bare:.2f} |")
            print(lines[-1], flush=True)

        lines += ["", "| data | images | eda seconds | tree peak RSS MiB (sum) | main process peak MiB "
                  "| largest process MiB (getrusage) |", "|---|---|---|---|---|---|"]
        synth = tmp / "synthetic"
        t = time.perf_counter()
        write_synthetic(synth, args.synthetic)
        print(f"wrote {args.synthetic} synthetic PNGs in {time.perf_counter() - t:.0f} s", flush=True)
        for name, folder in (("mnist-10k", shared / "mnist-10k"), (f"synthetic {args.synthetic}", synth)):
            if not folder.is_dir():
                lines.append(f"| {name} | missing | | | | |")
                continue
            res = run_eda_child(folder, tmp / ("out-" + name.split()[0]), workers)

            def mib(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.0f}"

            lines.append(f"| {name} | {res['n']} | {res['seconds']:.1f} | {mib(res['tree_peak_mib'])} | "
                         f"{mib(res['main_peak_mib'])} | {mib(res['largest_process_mib'])} |")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
