"""What the shortcut audit adds to ``clsctl eda``: the same command with and without ``--no-shortcuts``.

Each data set is run as ``clsctl eda`` in a fresh process (interpreter start, imports, the pass, the
figures and the audit all counted), alternating with and without the audit for ``--rounds`` rounds so
that a slow phase of a shared machine hits both. Prints a Markdown table: median wall seconds of
each, their ratio per round (median and range), and what the audit found.

    .venv/bin/python benchmarks/shortcuts_bench.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))
# name → the arguments after `clsctl eda`
SETS = {
    "facemask-3class (manifest, --group photo_cluster)": ["facemask-3class/manifest.csv", "--group", "photo_cluster"],
    "pacs-sketch (folder)": ["pacs-sketch"],
    "mnist-10k (folder)": ["mnist-10k"],
}


def run(args: list[str], out: Path, audit: bool) -> tuple[float, dict]:
    command = [str(REPO / ".venv" / "bin" / "clsctl"), "eda", *[str(DATA / args[0]), *args[1:]], "--out", str(out)]
    if not audit:
        command.append("--no-shortcuts")
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start, json.loads((out / "eda.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in SETS.items():
            if not (DATA / args[0]).exists():
                print(f"skipping {name}: not under {DATA}", file=sys.stderr)
                continue
            with_audit, without, report = [], [], {}
            for r in range(opts.rounds):
                seconds, report = run(args, Path(tmp) / f"on{r}", audit=True)
                with_audit.append(seconds)
                without.append(run(args, Path(tmp) / f"off{r}", audit=False)[0])
            ratios = [a / b for a, b in zip(with_audit, without, strict=True)]
            section = report["shortcuts"]
            model = section["metadata_model"]
            found = "; ".join(f"{f['label']} → {f['class']} ({f['strength']:.2f})" for f in section["findings"]) or "none"
            rows.append(f"| {name} | {report['images']['total']} | {statistics.median(without):.2f} | "
                        f"{statistics.median(with_audit):.2f} | {statistics.median(ratios):.3f} "
                        f"({min(ratios):.3f}–{max(ratios):.3f}) | {section['seconds']:.2f} | "
                        f"{model['balanced_accuracy']:.3f} / {model['chance']:.3f} | {found} |")
    print("| data | images | eda s (no audit) | eda s (audit) | ratio per round, median (range) | audit s "
          "(its own timer) | metadata model bal. acc. / chance | findings (class, strength) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
