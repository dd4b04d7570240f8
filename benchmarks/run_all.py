"""Rerun every benchmark, one after the other, and print one table of their headline numbers.

Run from the repository root::

    .venv/bin/python benchmarks/run_all.py --quick             # every benchmark, small settings: < 20 min on 2 cores
    .venv/bin/python benchmarks/run_all.py                     # the settings of benchmarks/README.md: hours
    .venv/bin/python benchmarks/run_all.py --quick --only decode,eda,report

Each benchmark runs as its own process (its own script in ``benchmarks/``, or ``clsctl`` itself for the
time-to-quality runs, the ensemble and the sweep) with a fresh cache folder, so every number includes the
first-use costs a new machine pays (decoded-image cache, embeddings, the digits' PNGs). The benchmarks
read the shared data sets (``$CLSCTL_DATA``, default ``../shared/data``) and weights beside them.

``--quick`` keeps every benchmark but shrinks it: fewer rounds, images, epochs, trials and sizes (each
step's command is printed with the table). Its numbers show that each path still works and roughly where
it stands; the full settings are what ``benchmarks/README.md`` reports.

Everything goes to ``--out`` (default ``benchmarks/results/run_all``; a folder an earlier run wrote is
emptied first, any other non-empty folder refused): one log per command
under ``logs/``, the scripts' own outputs, ``summary.md`` (what is printed) and ``summary.json``. A
benchmark that fails is marked FAILED in the table with its last error line, the others still run, and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))
MARKER = ".run_all"
PACKAGES = ("torch", "torchvision", "timm", "albumentations", "accelerate", "numpy", "pandas", "scikit-learn",
            "cleanlab", "optuna", "onnxruntime", "opencv-python-headless", "pillow")


class StepFailed(RuntimeError):
    """A benchmark command exited non-zero or printed nothing that could be read."""


@dataclass
class Context:
    """What every step shares: the mode, the output folder, the environment and the commands run so far."""

    quick: bool
    out: Path
    env: dict[str, str]
    commands: list[str] = field(default_factory=list)
    facemask_runs: dict[str, Path] = field(default_factory=dict)

    def pick(self, quick: list[str], full: list[str]) -> list[str]:
        return quick if self.quick else full

    def run(self, label: str, argv: list[str], shown: str) -> str:
        """Run one command with its output logged; return its stdout. ``shown`` is how the table prints it."""
        self.commands.append(shown)
        log = self.out / "logs" / f"{label}.log"
        with log.open("w") as fh:
            fh.write(f"$ {shown}\n")
            fh.flush()
            proc = subprocess.run(argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=fh, text=True)
            fh.write(proc.stdout)
        if proc.returncode != 0:
            raise StepFailed(f"`{shown}` exited {proc.returncode}: {last_error_line(log)}")
        return proc.stdout

    def script(self, label: str, name: str, args: list[str]) -> str:
        return self.run(label, [sys.executable, str(REPO / "benchmarks" / name), *args],
                        " ".join(["python", f"benchmarks/{name}", *map(self.show, args)]))

    def clsctl(self, label: str, args: list[str]) -> str:
        return self.run(label, [sys.executable, "-m", "toolkit", *args], " ".join(["clsctl", *map(self.show, args)]))

    def show(self, arg: str) -> str:
        """An argument as the printed command gives it: paths under the output folder start with $OUT."""
        text = (arg.replace(str(self.out), "$OUT").replace(str(REPO) + "/", "").replace(str(DATA), "$CLSCTL_DATA")
                .replace(str(DATA.parent), "$CLSCTL_DATA/.."))
        return text if re.fullmatch(r"[\w@%+=:,./$-]+", text) else shlex.quote(text)


@dataclass
class Row:
    benchmark: str
    setting: str
    result: str


def last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^(\w+(\.\w+)*(Error|Exception)|error:|Killed)", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text`` as a list of rows keyed by the header cells."""
    tables: list[list[dict[str, str]]] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            head, rows = block[0], [r for r in block[1:] if not set("".join(r)) <= set("-: ")]
            tables.append([dict(zip(head, r, strict=False)) for r in rows])
        block = []
    return tables


def table_with(text: str, column: str) -> list[dict[str, str]]:
    """The last printed table that has ``column`` (scripts print tables as they go and once more at the end)."""
    found = [t for t in markdown_tables(text) if t and column in t[0]]
    if not found:
        raise StepFailed(f"no table with a '{column}' column in the output")
    return found[-1]


def only_run(folder: Path, suffix: str) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith(suffix))
    if len(found) != 1:
        raise StepFailed(f"expected one run ending in '{suffix}' under {folder}, found {len(found)}")
    return found[0]


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


# ---- the steps; each returns its rows --------------------------------------------------------------------

def decode(ctx: Context) -> list[Row]:
    out = ctx.out / "decode.json"
    ctx.script("decode", "decode_bench.py", [*ctx.pick(["--limit", "300", "--rounds", "1"],
                                                       ["--limit", "800", "--rounds", "2"]), "--out", str(out)])
    rows = []
    for name, res in json.loads(out.read_text()).items():
        differ = ", ".join(f"{k} {r['differing_files']}" for k, r in res.items() if k != "toolkit")
        rows.append(Row("decode", name, f"loader {res['toolkit']['img_s']:.0f} img/s = "
                                        f"{1 / res['pil']['ratio']:.2f}× PIL, {1 / res['opencv']['ratio']:.2f}× "
                                        f"OpenCV; files whose pixels differ from the loader's: {differ}"))
    return rows


def eda(ctx: Context) -> list[Row]:
    text = ctx.script("eda", "eda_bench.py", ["--workers", "2", *ctx.pick(["--rounds", "1", "--synthetic", "5000"],
                                                                          ["--rounds", "3", "--synthetic", "50000"])])
    rows = [Row("eda", r["data"], f"pass {r['pass / bare Pillow'].split()[0]}× a bare Pillow decode; end to end "
                                  f"{r['eda end-to-end img/s'].split()[0]} img/s")
            for r in table_with(text, "pass / bare Pillow")]
    memory = table_with(text, "tree peak RSS MiB (sum)")
    rows.append(Row("eda", "peak memory", ", ".join(f"{r['data']} {r['tree peak RSS MiB (sum)']} MiB in "
                                                    f"{r['eda seconds']} s" for r in memory)))
    return rows


def shortcuts(ctx: Context) -> list[Row]:
    text = ctx.script("shortcuts", "shortcuts_bench.py", ctx.pick(["--rounds", "1"], ["--rounds", "4"]))
    return [Row("eda shortcut audit", r["data"].split(" (")[0],
                f"eda ×{r['ratio per round, median (range)'].split()[0]} with the audit; found: "
                f"{r['findings (class, strength)']}")
            for r in table_with(text, "findings (class, strength)")]


def predict(ctx: Context) -> list[Row]:
    text = ctx.script("predict", "predict_bench.py",
                      ctx.pick(["--images", "128", "--views", "none,hflip", "--repeats", "2"],
                               ["--threads", "1", "--repeats", "3"]))
    views = table_with(text, "ratio")
    return [Row("predict", "resnet18 @128 px, vs bare model(x)",
                ", ".join(f"{r['views']} {r['ratio']}× ({float(r['predict img/s']):.0f} img/s)" for r in views))]


def loader(ctx: Context) -> list[Row]:
    out = ctx.out / "loader.json"
    ctx.script("loader", "loader_bench.py", [*ctx.pick(["--cases", "pacs:resnet18:64", "--epochs", "2",
                                                        "--bare-epochs", "1"], ["--epochs", "3", "--bare-epochs", "2"]),
                                             "--out", str(out)])
    return [Row("loader", f"{r['dataset']} {r['model']} @{r['size']} px",
                f"clsctl / bare loop img/s: epoch 1 (cold cache) {r['epoch1_ratio']:.2f}, "
                f"epoch 2+ {r['warm_ratio']:.2f}")
            for r in json.loads(out.read_text())]


def train(ctx: Context) -> list[Row]:
    out = ctx.out / "train.json"
    ctx.script("train", "train_bench.py", [*ctx.pick(["--cases", "pacs,mnist", "--epochs", "1"],
                                                     ["--cases", "facemask,pacs,mnist"]), "--out", str(out)])
    rows, quality = [], []
    for name, r in json.loads(out.read_text()).items():
        b, c, case = r["bare"], r["clsctl"], r["case"]
        setting = f"{case['data']} {case['model']} @{case['size']} px, {case['epochs']} ep, fold 0"
        rows.append(Row("train vs bare loop", setting,
                        f"accuracy bare {b['accuracy']:.3f} / clsctl {c['accuracy_best']:.3f}; "
                        f"img/s {r['train_img_s_ratio']:.2f}×, wall {r['wall_ratio']:.2f}× the bare loop"))
        if name in ("pacs", "mnist"):
            quality.append(Row("time to quality", setting, f"accuracy {c['accuracy_best']:.3f}, macro-F1 "
                                                           f"{c['macro_f1_best']:.3f} in {c['wall_s']:.0f} s"))
    return rows + quality


def shared_paths(data: str) -> list[str]:
    """--set options that point a recipe of ``recipes/`` at $CLSCTL_DATA instead of the paths it names
    (a value that is not TOML is read as a plain string, so a path needs no quotes)."""
    root = DATA / data
    return ["--set", f"data.root={root}", "--set", f"data.manifest={root / 'manifest.csv'}", "--set",
            f"model.pretrained_file={DATA.parent / 'weights' / 'tf_efficientnet_lite0.in1k.safetensors'}"]


def facemask(ctx: Context) -> list[Row]:
    # quick: one epoch, at the full rate from the start (the recipe's warmup epoch would be all of it)
    epochs, quick_sets = ("1", ["--set", "sched.warmup_epochs=0"]) if ctx.quick else ("6", [])
    runs = ctx.out / "facemask-runs"
    rows = []
    for name, extra in (("ce", quick_sets), ("balanced", [*quick_sets, "--set", "train.sampler=balanced"])):
        t0 = time.perf_counter()
        ctx.clsctl(f"facemask-{name}", ["train", "--recipe", "recipes/lite0_finetune.toml", "--name", name, "--runs",
                                        str(runs), *shared_paths("facemask-3class"), "--set",
                                        f"train.epochs={epochs}", *extra])
        wall = time.perf_counter() - t0
        run = only_run(runs, f"-{name}")
        ctx.facemask_runs[name] = run
        s = summary(run)
        cv = s["cv"]["macro_f1"]
        rows.append(Row("time to quality", f"facemask-3class lite0 @64 px {name}, {epochs} ep"
                                           f"{' (no warmup)' if quick_sets else ''}, grouped 5-fold",
                        f"CV macro-F1 {cv['mean']:.3f} ± {cv['std']:.3f}, OOF {s['oof']['macro_f1']:.3f} "
                        f"in {wall:.0f} s"))
    return rows


def ensemble(ctx: Context) -> list[Row]:
    if set(ctx.facemask_runs) != {"ce", "balanced"}:
        raise StepFailed("needs the facemask runs: run the 'facemask' step too (--only facemask,ensemble)")
    runs = ctx.out / "facemask-runs"
    ctx.clsctl("ensemble", ["ensemble", str(ctx.facemask_runs["ce"]), str(ctx.facemask_runs["balanced"]),
                            "--calibrate", "--decide", "f1", "--name", "ce-balanced", "--runs", str(runs)])
    s = summary(only_run(runs, "-ce-balanced"))
    members = ", ".join(f"{m['name']} {m['oof']['macro_f1']:.3f}" for m in s["members"])
    d = s["decision"]
    verdict = "kept" if d.get("offsets") else "refused"
    calib = "; ".join(f"{name} NLL {c['before']['nll']:.3f} → {c['after']['nll']:.3f}"
                      for name, c in (s.get("calibration") or {}).get("members", {}).items()
                      if isinstance(c, dict) and "before" in c)
    return [Row("ensemble and decisions", "facemask ce + balanced, --calibrate --decide f1",
                f"OOF macro-F1 members {members} → soft vote {s['oof']['macro_f1']:.3f}; f1 offsets "
                f"{d['crossfit_argmax']:.3f} → {d['crossfit_tuned']:.3f} cross-fitted ({verdict})"
                + (f"; {calib}" if calib else ""))]


def export(ctx: Context) -> list[Row]:
    if "ce" not in ctx.facemask_runs:
        raise StepFailed("needs the facemask ce run: run the 'facemask' step too (--only facemask,export)")
    run = str(ctx.facemask_runs["ce"])
    folds = ctx.pick(["--folds", "best"], [])  # tracing and checking each fold's graph is most of the export
    printed = ctx.clsctl("export", ["export", run, "--tta", "hflip", *folds])
    parity = re.search(r"parity: max \|onnxruntime - pytorch\| probability (\S+)", printed)
    text = ctx.script("export-bench", "export_bench.py",
                      [run, *ctx.pick(["--images", "128", "--rounds", "2"], ["--images", "256", "--rounds", "3", "--threads", "1"])])
    cells = {r["measure"]: r["onnx / torch"].split()[0] for r in table_with(text, "onnx / torch")}
    return [Row("export", f"facemask ce run, {'best fold' if folds else '5 folds'} × hflip, onnxruntime vs PyTorch",
                f"onnx / torch img/s: model {cells.get('model')}, end to end {cells.get('end-to-end')}; "
                f"parity {parity.group(1) if parity else '?'}")]


def clean(ctx: Context) -> list[Row]:
    out = ctx.out / "clean-mnist"
    ctx.script("clean", "clean_bench.py", ["mnist", *ctx.pick(["--limit", "3000", "--epochs", "4", "--no-retrain"], []),
                                           "--out", str(out)])
    r = json.loads((out / "result.json").read_text())
    extra = ""
    if "true_label_macro_f1_retrained" in r:
        extra = (f"; retrained on the cleaned manifest: macro-F1 on true labels "
                 f"{r['true_label_macro_f1_noisy_run']:.4f} → {r['true_label_macro_f1_retrained']:.4f}")
    return [Row("clean", f"mnist-10k ({r['images']} images), 5 % labels flipped, {r['epochs']} ep 5-fold",
                f"precision {r['precision']:.3f} / recall {r['recall']:.3f} ({r['flipped']} flipped, "
                f"{r['flagged']} flagged); clean itself {r['clean_s']:.1f} s{extra}")]


def report(ctx: Context) -> list[Row]:
    args = ctx.pick(["--runs", "10", "--classes", "100", "--rows", "5000"], [])
    text = ctx.script("report", "report_bench.py", [*args, "--cache", str(ctx.out / "report-cache")])
    line = next((ln for ln in text.splitlines() if "compare" in ln and "peak RSS" in ln), None)
    if line is None:
        raise StepFailed("report_bench printed no timing line")
    setting, numbers = line.split(": ", 1)
    return [Row("report", setting, numbers)]


def scale(ctx: Context) -> list[Row]:
    out = ctx.out / "scale.json"
    args = ctx.pick(["--sizes", "1000,4000", "--classes", "100"], ["--large"])
    ctx.script("scale", "scale_bench.py", [*args, "--cache", str(ctx.out / "scale-cache"), "--json", str(out)])
    res = {int(n): r for n, r in json.loads(out.read_text()).items()}
    sizes = sorted(res)
    a, b = sizes[0], sizes[-1]
    import math

    growth = ", ".join(f"{stage} {math.log(res[b][stage]['cpu_s'] / res[a][stage]['cpu_s']) / math.log(b / a):.2f}"
                       for stage in res[a])
    peak = max((r["rss_mib"], stage) for stage, r in res[b].items())
    return [Row("scale", f"{a:,} → {b:,} images, every stage",
                f"CPU-time growth k (time ∝ N^k): {growth}; largest peak {peak[0]:.0f} MiB ({peak[1]}) at {b:,}")]


def sweep(ctx: Context) -> list[Row]:
    runs = ctx.out / "sweep-runs"
    recipe = ctx.pick(["recipes/quickstart_sweep.toml", "--trials", "5"],
                      ["recipes/lite0_sweep.toml", *shared_paths("facemask-3class")])
    ctx.clsctl("sweep", ["sweep", "--recipe", *recipe, "--runs", str(runs)])
    s = summary(only_run(runs, "-sweep"))
    counts = ", ".join(f"{n} {state}" for state, n in s["counts"].items() if n)
    best, pruning = s["best"], s["pruning"]
    if best is None:
        raise StepFailed(f"no trial of the study completed ({counts})")
    gain = (best.get("baseline") or {}).get("gain")
    return [Row("sweep", f"{s['study']}: {s['target_trials']} trials, fold {s['folds']}, {s['pruner']} pruner",
                f"{counts}; best trial {best['number']} {s['metric']} {best['value']:.4f}"
                + (f" ({gain:+.4f} over the recipe's own values)" if gain is not None else "")
                + f"; pruning saved {pruning.get('epochs_saved', 0)} of "
                  f"{pruning.get('epochs_saved', 0) + pruning.get('epochs_trained', 0)} epochs")]


STEPS: dict[str, Callable[[Context], list[Row]]] = {
    "decode": decode, "eda": eda, "shortcuts": shortcuts, "predict": predict, "loader": loader, "train": train,
    "facemask": facemask, "ensemble": ensemble, "export": export, "clean": clean, "report": report,
    "scale": scale, "sweep": sweep,
}


# ---- the machine, and the printed table ------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = model.group(1).strip() if model else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit, "cpu": cpu,
            "cores": cores, "python": platform.python_version(), "os": platform.platform(terse=True),
            "packages": versions}


def render(info: dict[str, Any], results: list[dict[str, Any]], quick: bool, total: float) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"# clsctl benchmarks ({'--quick' if quick else 'full settings'})", "",
             f"{info['date']} · commit {info['commit']} · {info['cores']} cores, {info['cpu']} · "
             f"Python {info['python']} · {info['os']}", "",
             "packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()), "",
             "| benchmark | setting | result | wall |", "|---|---|---|---|"]
    for step in results:
        wall = f"{step['seconds']:.0f} s"
        if step["error"]:
            lines.append(f"| {step['name']} | | **FAILED**: {cell(step['error'])} | {wall} |")
        for i, row in enumerate(step["rows"]):
            lines.append(f"| {cell(row['benchmark'])} | {cell(row['setting'])} | {cell(row['result'])} | "
                         f"{wall if i == 0 else ''} |")
    lines += ["", f"total wall time {total / 60:.1f} min", "", "commands ($OUT is the output folder):", ""]
    for step in results:
        lines += [f"    {c}" for c in step["commands"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings: every benchmark in under 20 minutes")
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "run_all")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    if {"ensemble", "export"} & set(chosen) and "facemask" not in chosen:
        parser.error("the ensemble and export steps read the facemask step's runs: add facemask to --only")
    if not (DATA / "facemask-3class" / "manifest.csv").is_file():
        parser.error(f"the shared data sets are not at {DATA}: set CLSCTL_DATA to the folder that holds them")

    out = args.out.resolve()
    # emptied first, but only a folder this script made: --out . must never delete a checkout
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        parser.error(f"--out {out} holds files this script did not write; give a new or empty folder")
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    (out / MARKER).write_text("written by benchmarks/run_all.py; emptied by its next run\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "CLSCTL_CACHE": str(out / "cache"), "CLSCTL_RUNS": str(out / "runs"), "CLSCTL_DATA": str(DATA)}
    info = machine()
    print(f"{info['date']} · {info['cores']} cores, {info['cpu']} · output in {out}", flush=True)
    results: list[dict[str, Any]] = []
    facemask_runs: dict[str, Path] = {}  # filled by the facemask step, read by ensemble and export
    start = time.perf_counter()
    for name in [s for s in STEPS if s in chosen]:
        ctx = Context(quick=args.quick, out=out, env=env, facemask_runs=facemask_runs)
        t0 = time.perf_counter()
        error, rows = None, []
        try:
            rows = STEPS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - any step's failure is reported and the others still run
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StepFailed) else str(exc)
        seconds = time.perf_counter() - t0
        results.append({"name": name, "seconds": seconds, "error": error, "commands": ctx.commands,
                        "rows": [row.__dict__ for row in rows]})
        status = "FAILED: " + error if error else "; ".join(r.result for r in rows)[:160]
        print(f"{name:<10} {seconds:6.0f} s  {status}", flush=True)
    total = time.perf_counter() - start
    text = render(info, results, args.quick, total)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"machine": info, "quick": args.quick, "total_s": total,
                                                  "steps": results}, indent=1) + "\n")
    print()
    print(text, end="")
    sys.exit(1 if any(r["error"] for r in results) else 0)


if __name__ == "__main__":
    main()
