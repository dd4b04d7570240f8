"""``clsctl demo``: the whole loop on scikit-learn's digits, offline, through the calls every command makes.

eda → split (grouped k-fold, leakage audit) → train two recipes that differ in one key → predict a
held-out part with TTA chosen on out-of-fold rows → ensemble → clean → report. Every step is the library
call its own command makes, into one output folder, and says what it found in one headline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from toolkit.config import get_value
from toolkit.demo.data import DemoData, write_demo_data
from toolkit.demo.folder import DemoFolder
from toolkit.demo.recipes import CHANGED_KEY, RECIPE_NAMES, demo_recipes
from toolkit.progress import Progress, as_progress
from toolkit.store import Run

__all__ = ["FULL", "QUICK", "DemoPlan", "DemoResult", "run_demo"]

T = TypeVar("T")

#: Name of the prediction set every train run writes for the held-out images (the ensemble votes on it).
HELDOUT = "heldout"


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo does.

    Attributes:
        images: The first this many images of scikit-learn's order (None: all 1,797).
        folds: Cross-validation folds.
        epochs: Epochs per fold.
        batch_size: Images per training step.
        block_rows: Consecutive rows per group (see :mod:`toolkit.demo.data`).
        heldout: Share of the images set aside for ``predict``.
        seed: Seed of the held-out draw and the folds.
    """

    images: int | None
    folds: int
    epochs: int
    batch_size: int
    block_rows: int
    heldout: float = 0.15
    seed: int = 0


#: The demo: every image, 5 folds.
FULL = DemoPlan(images=None, folds=5, epochs=6, batch_size=64, block_rows=100)
#: ``--quick``: the same steps on 500 images and 3 folds (what the test suite runs); smaller batches, so the
#: few images still make enough steps to learn the digits.
QUICK = DemoPlan(images=500, folds=3, epochs=4, batch_size=32, block_rows=50)


@dataclass
class DemoResult:
    """What the demo made: the report, every run, and each step's headline."""

    out: Path
    report: Path
    eda: Path
    data: DemoData
    split: Run
    train: list[Run]
    predictions: dict[str, Path]  # train run id → the held-out prediction set (.parquet)
    ensemble: Run
    clean: Run
    headlines: list[str] = field(default_factory=list)
    seconds: float = 0.0


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; a second one mostly waits, and stalls when other jobs share the
    cores (ten times slower on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _f(x: float) -> str:
    return f"{x:.4f}"


class _Steps:
    """Numbers the steps, times them and logs each headline."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done, self.progress, self.headlines = total, 0, progress, []

    def run(self, title: str, call: Callable[[], T], headline: Callable[[T], str]) -> T:
        self.done += 1
        self.progress.log(f"[{self.done}/{self.total}] {title} …")
        start = time.perf_counter()
        value = call()
        line = f"[{self.done}/{self.total}] {title}: {headline(value)} ({time.perf_counter() - start:.1f} s)"
        self.headlines.append(line)
        self.progress.log(line)
        return value


def _data_line(d: DemoData) -> str:
    return (f"{d.n_images:,} handwritten digits from scikit-learn in {d.n_groups} groups of {d.block_rows} consecutive "
            f"rows (neighbouring rows share handwriting; writer ids are not shipped); {d.n_heldout} images "
            f"({d.n_heldout / d.n_images:.0%}, whole groups) held out for predict")


def _eda_line(result: tuple[dict[str, Any], Path]) -> str:
    r, out = result
    pairs = r["duplicates"]["pairs"]
    label = r["targets"][r["label_column"]]
    shortcuts = (r.get("shortcuts") or {}).get("findings") or []
    counts = label["counts"].values()
    return (f"{r['images']['total']:,} images, {label['n_classes']} classes ({min(counts)}–{max(counts)} "
            f"per class), duplicates: {pairs['exact']} exact, {pairs['near']} near; {r['outliers']['count']} "
            f"outliers; {len(shortcuts)} shortcut(s) → {out / 'eda.html'}")


def _split_line(result: Any) -> str:
    audit, report = result.audit, result.report
    sizes = [b["n"] for b in report["folds"]]
    text = f"{len(sizes)} folds of {'/'.join(map(str, sizes))} images"
    text += (", whole groups, stratified by class" if not audit["groups_crossing"]
             else f", {len(audit['groups_crossing'])} group(s) in two folds")
    dup = audit["duplicates"]
    if dup is not None and dup["matched"]:
        # Folds drawn row by row would split this share of the pairs; the gap is what the groups keep together.
        chance = 1 - sum((n / sum(sizes)) ** 2 for n in sizes)
        text += (f"; leakage audit: {len(dup['crossing'])} of {dup['matched']} look-alike pairs across folds "
                 f"({len(dup['crossing']) / dup['matched']:.0%}; random folds: {chance:.0%})")
    return text


def _train_line(run: Run) -> str:
    summary = run.summary
    cv = summary["cv"]
    metric = summary.get("metric", "macro_f1")
    key = CHANGED_KEY[0]
    value = get_value(run.read_recipe(), key)
    return (f"{key} = {value}: CV {metric} {_f(cv[metric]['mean'])} ± {_f(cv[metric]['std'])}, accuracy "
            f"{_f(cv['accuracy']['mean'])} over {cv[metric]['n']} folds → {run.path.name}")


def _predict_line(result: Any) -> str:
    auto = result.tta_auto
    none, *others = auto["policies"]  # the first policy is always the plain view
    if auto["chosen"] == none["name"]:
        runner_up = max(others, key=lambda p: p["score"])
        tta = (f"no TTA: each of the {len(others)} other policies scored lower on out-of-fold rows (best: "
               f"{runner_up['name']} {runner_up['score'] - none['score']:+.4f})")
    else:
        tta = f"TTA {auto['chosen']} ({auto['gain']:+.4f} on out-of-fold rows, best of {len(auto['policies'])} policies)"
    s = result.scores
    return f"{result.n} held-out images, {tta}: accuracy {_f(s['accuracy'])}, macro_f1 {_f(s['macro_f1'])}"


def _ensemble_line(result: Any, heldout_accuracy: float | None) -> str:
    best = max(s[result.metric] for s in result.member_scores.values())
    text = (f"{result.vote} vote of {len(result.members)} runs: OOF {result.metric} {_f(result.oof_score)} "
            f"(best member {_f(best)})")
    if heldout_accuracy is not None:
        text += f", held-out accuracy {_f(heldout_accuracy)}"
    return text


def _clean_line(result: Any) -> str:
    h = result.heads[0].health
    page = result.files.get("gallery")
    return (f"{h['issues']} of {h['rows']} labels flagged ({h['filter_by']}) on {result.source.name}'s out-of-fold "
            f"probabilities" + (f" → {page}" if page else ""))


def _report_line(report: Any, train: list[Run]) -> str:
    ids = {run.id for run in train}
    text = f"{len(report.entries)} entries ranked by {report.metric}"
    for change in report.changes.values():
        if change.run in ids and change.baseline in ids and change.keys:
            keys = "; ".join(f"{k}: {a} → {b}" for k, a, b in change.keys)
            verdict = change.significance.verdict if change.significance else "not compared"
            delta = "" if change.delta is None else f" {change.delta:+.4f}"
            text += f"; what changed: {keys},{delta} CV {report.metric} ({verdict})"
            break
    return text


def _heldout_accuracy(result: Any, data: DemoData) -> float | None:
    """The ensemble's accuracy on the held-out images (its prediction set carries no labels of its own)."""
    if result.test_ids is None:
        return None
    import numpy as np

    known = dict(data.heldout_labels)
    index = {c: i for i, c in enumerate(result.classes)}
    truth = np.array([index[known[i]] for i in result.test_ids])
    return float((np.asarray(result.test_labels) == truth).mean())


def run_demo(out: str | os.PathLike[str], *, quick: bool = False, plan: DemoPlan | None = None,
             progress: Progress | bool | None = None) -> DemoResult:
    """Run every stage of clsctl on the built-in digits into ``out``; return what was made.

    Args:
        out: The output folder: new, empty, or an earlier demo's (whose own files are replaced; anything
            else in it stays).
        quick: A smaller plan (:data:`QUICK`) for a check that the loop works.
        plan: An explicit plan instead of :data:`FULL` / :data:`QUICK`.
        progress: Where progress and the step headlines go (the CLI's display; None prints plain lines).

    Raises:
        UsageError: ``out`` is a file, or a folder with files the demo did not write.
    """
    plan = plan or (QUICK if quick else FULL)
    shown = as_progress(progress)
    start = time.perf_counter()
    folder = DemoFolder.prepare(out)
    root = folder.path
    runs_root = root / "runs"
    # data, eda, split, then train and predict for each recipe, then ensemble, clean, report
    steps = _Steps(6 + 2 * len(RECIPE_NAMES), shown)
    folder.own(root / "data")
    data = steps.run("data", lambda: write_demo_data(root / "data", images=plan.images, block_rows=plan.block_rows,
                                                    heldout=plan.heldout, seed=plan.seed), _data_line)

    # Each stage's module is imported as its step starts: a refused --out costs no torch import.
    from toolkit.report.eda import eda_from_path

    eda_dir = root / "eda"
    folder.own(eda_dir)
    steps.run("eda", lambda: eda_from_path(data.root, manifest=data.images, group="group", out=eda_dir,
                                           progress=shown), _eda_line)

    from toolkit.data.splits import make_split

    with folder.new_entries(runs_root):
        split = steps.run("split", lambda: make_split(data.train, root=data.root, folds=plan.folds, group="group",
                                                      stratify="label", seed=plan.seed, hashes=eda_dir,
                                                      name="digits-split", runs=runs_root), _split_line)

    from toolkit.train import train

    trained: list[Run] = []
    with _one_torch_thread():
        for recipe in demo_recipes(data.root, split.written[0], epochs=plan.epochs, batch_size=plan.batch_size):
            with folder.new_entries(runs_root):
                trained.append(steps.run(f"train {recipe.name}",
                                         lambda r=recipe: train(r, runs_root=runs_root, progress=shown), _train_line))

        from toolkit.predict import predict

        # Predictions go into each train run's own folder, which the record already holds.
        predictions = {run.id: steps.run(
            f"predict {run.name}", lambda r=run: predict(r, data.heldout, tta="auto", name=HELDOUT, root=data.root,
                                                        runs_root=runs_root, progress=shown),
            _predict_line).files["parquet"] for run in trained}

    from toolkit.ensemble import ensemble

    with folder.new_entries(runs_root):
        ens = steps.run("ensemble", lambda: ensemble([run.path for run in trained], vote="soft", predictions=HELDOUT,
                                                     name="digits-ensemble", runs_root=runs_root),
                        lambda r: _ensemble_line(r, _heldout_accuracy(r, data)))

    from toolkit.report.clean import clean

    best = max(trained, key=lambda run: run.summary["cv"][run.summary.get("metric", "macro_f1")]["mean"])
    with folder.new_entries(runs_root):
        cleaned = steps.run("clean", lambda: clean(best.path, runs_root=runs_root, name="digits-clean"), _clean_line)

    from toolkit.report.experiment_html import report_runs

    page = root / "report.html"
    folder.own(page)
    refs = [split.run.path, *(run.path for run in trained), ens.run.path, cleaned.run.path, eda_dir]
    # Against the baseline recipe, the other recipe's one changed key and its gain are the first comparison.
    report = steps.run("report", lambda: report_runs(refs, page, runs_root=runs_root, baseline=str(trained[0].path),
                                                     progress=shown),
                       lambda r: _report_line(r, trained))
    folder.own(*report.files.values())
    return DemoResult(out=root, report=page, eda=eda_dir, data=data, split=split.run, train=trained,
                      predictions=predictions, ensemble=ens.run, clean=cleaned.run, headlines=steps.headlines,
                      seconds=time.perf_counter() - start)
