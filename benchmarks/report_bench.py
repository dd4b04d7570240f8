"""How long `clsctl report` takes over many wide runs, and how big its page gets.

Builds R synthetic k-fold train runs (C classes, N OOF rows each, F folds; written through the store
like real runs, see ``tests/rungen.py``) once into a cache folder, each run changing one or two
recipe keys against the first, then times ``build_report`` and the HTML writing separately, in
one process.

    python benchmarks/report_bench.py                    # 30 runs × 500 classes × 5 folds, 10,000 rows
    python benchmarks/report_bench.py --runs 10 --classes 100 --rows 5000
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from rungen import BASE_RECIPE, merged, probabilities, train_run  # noqa: E402

CHANGES = [{}, {"loss.name": "focal"}, {"optim.lr": 3e-4}, {"data.image_size": 64},
           {"loss.label_smoothing": 0.1}, {"optim.lr": 3e-3, "loss.name": "focal"}]


def make_runs(folder: Path, runs: int, classes: int, rows: int, folds: int) -> Path:
    marker = folder / "DONE"
    if marker.is_file():
        return folder / "runs"
    shutil.rmtree(folder, ignore_errors=True)
    names = [f"class_{i:03d}" for i in range(classes)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, rows)
    fold = np.arange(rows) % folds
    for r in range(runs):
        accuracy = 0.55 + 0.01 * (r % 10)
        probs = probabilities(labels, classes, accuracy, seed=r).astype(np.float32)
        train_run(folder / "runs", f"run{r:02d}", classes=names, labels=labels, probs=probs, folds=fold,
                  recipe=merged(BASE_RECIPE, CHANGES[r % len(CHANGES)]), epochs=10)
    marker.write_text("ok")
    return folder / "runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clsctl-report-bench")
    args = parser.parse_args()

    from toolkit.report.experiment import build_report
    from toolkit.report.experiment_html import write_report

    folder = args.cache / f"r{args.runs}-c{args.classes}-n{args.rows}-f{args.folds}"
    start = time.perf_counter()
    root = make_runs(folder, args.runs, args.classes, args.rows, args.folds)
    print(f"runs ready in {time.perf_counter() - start:.1f} s: {root}")
    start = time.perf_counter()
    report = build_report([str(root / "*")], runs_root=root, progress=False)
    built = time.perf_counter() - start
    out = folder / "report.html"
    start = time.perf_counter()
    write_report(report, out)
    written = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = out.stat().st_size / 1e6
    print(f"{args.runs} runs × {args.classes} classes × {args.folds} folds, {args.rows} OOF rows each: "
          f"compare {built:.1f} s + page {written:.1f} s = {built + written:.1f} s; "
          f"page {size:.1f} MB; peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
