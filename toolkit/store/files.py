"""The typed reader and writer of every file in a run folder.

::

    recipe.toml       the fully resolved recipe                  read_recipe()
    manifest.csv      the rows trained on, with their fold       write_manifest() / read_manifest()
    classes.json      heads and class list per head              write_classes() / read_classes()
    transforms.json   the built pipelines (albumentations)       write_transforms() / read_transforms()
    metrics.csv       one row per (fold, epoch)                  append_metrics() / read_metrics() / replace_fold_metrics()
    summary.json      headline numbers                           summary / update_summary()
    oof.parquet       out-of-fold probabilities                  write_oof() / read_oof()   (also folds/<k>/oof.parquet)
    folds/<k>/        model.safetensors + model.json (models/), best.json, done.json,
                      state/ (Accelerate's state + progress.json + ema.safetensors; staged, then swapped in)
    predictions/      <name>.parquet, <name>.csv, <name>.json, <name>.tta.json   write_predictions() / read_predictions()
    label_issues.csv  clean runs: one row per image (and head)  write_label_issues() / read_label_issues()
    label_conflicts.csv, outliers.csv, near_duplicates.csv      write_findings()
    clean_manifest.csv  the source manifest, suspects dropped or relabelled   write_clean_manifest()
    trial.json        a sweep's trial: study, number, parameters, state   write_trial() / read_trial()
    best.toml, report.html   sweep runs: the best trial's recipe, the study page   write_best_recipe(), sweep_report_path
    export/           ONNX graphs + preprocessing.json (clsctl export)    export_dir()       (formats: store/exports.py)
    explain/<name>/   Grad-CAM PNGs + explanations.json (clsctl explain)  explain_dir(name)

:class:`RunFiles` is mixed into :class:`toolkit.store.run.Run`; no other package opens a run file by name.
Every write is atomic. Probability tables are laid out by :func:`toolkit.store.tables.probability_frame`.
"""

from __future__ import annotations

import builtins
import csv
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import RunError
from toolkit.store.atomic import append_csv_row, atomic_write_json, atomic_write_text, read_json
from toolkit.store.confusion import compact_confusions
from toolkit.store.tables import read_table, write_table

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.config.schema import Recipe

StrPath = str | os.PathLike[str]

RECIPE_TOML = "recipe.toml"
MANIFEST_CSV = "manifest.csv"
CLASSES_JSON = "classes.json"
TRANSFORMS_JSON = "transforms.json"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
OOF_PARQUET = "oof.parquet"
PREDICTIONS = "predictions"
LABEL_ISSUES_CSV = "label_issues.csv"
CLEAN_MANIFEST_CSV = "clean_manifest.csv"
# Tables of findings a clean run lists besides its label issues.
FINDINGS = {"conflicts": "label_conflicts.csv", "outliers": "outliers.csv", "near_duplicates": "near_duplicates.csv"}
CHECKPOINT = "model.safetensors"
TRIAL_JSON, BEST_TOML, SWEEP_REPORT = "trial.json", "best.toml", "report.html"
EXPORT, EXPLAIN, TOP_LOSSES = "export", "explain", "top-losses"
TRACKERS = "trackers"
# Inside folds/<k>/: a training state is written to STATE_TMP, then swapped in as STATE.
STATE, STATE_OLD, STATE_TMP = "state", "state.old", "state.tmp"
STATE_COUNTERS, STATE_EMA = "progress.json", "ema.safetensors"
# A prediction set's name becomes a file name inside predictions/: no separators, no leading dot.
_SET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


class RunFiles:
    """Typed access to the files of a run folder; mixed into ``Run``, which provides ``path`` and ``id``."""

    path: Path

    @property
    def id(self) -> str:  # pragma: no cover - Run overrides it
        return self.path.name

    def file(self, name: StrPath) -> Path:  # pragma: no cover - Run overrides it
        raise NotImplementedError

    # ------------------------------------------------------------------ recipe
    @property
    def recipe_text(self) -> str | None:
        """The content of ``recipe.toml``, or ``None`` if the run has none."""
        try:
            return self.file(RECIPE_TOML).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    @property
    def recipe_path(self) -> Path:
        """Where ``recipe.toml`` is (``clsctl train --recipe`` on it reruns the run)."""
        return self.file(RECIPE_TOML)

    def read_recipe(self) -> Recipe:
        """The run's resolved recipe.

        Raises:
            RunError: The run has no ``recipe.toml``.
        """
        from toolkit.config.loader import load_recipe

        path = self.file(RECIPE_TOML)
        if not path.is_file():
            raise RunError(f"run {self.id} has no recipe.toml", "it was not made by `clsctl train`; start a new run")
        return load_recipe(path)

    # ------------------------------------------------------------------ manifest
    def write_manifest(self, df: pd.DataFrame) -> Path:
        """Write the rows the run used (with their ``fold``) as ``manifest.csv``."""
        return write_table(df, self.file(MANIFEST_CSV))

    def read_manifest(self) -> pd.DataFrame | None:
        """``manifest.csv`` as written: every column as text (labels and ids exactly as the run saw them,
        ``NA`` included), ``fold`` as integers; None when the run has none."""
        path = self.file(MANIFEST_CSV)
        if not path.is_file():
            return None
        import pandas as pd

        frame = read_table(path, all_text=True, keep_default_na=False,
                           what=f"run {self.id}'s manifest", hint="the run folder is damaged; retrain the run")
        if "fold" in frame.columns:
            frame["fold"] = pd.to_numeric(frame["fold"], errors="coerce").fillna(-1).astype("int64")
        return frame

    # ------------------------------------------------------------------ classes
    def write_classes(self, heads: Sequence[str], classes: Mapping[str, Sequence[str]]) -> Path:
        """Write ``classes.json``: the head names and the class list of each, in index order."""
        target = self.file(CLASSES_JSON)
        atomic_write_json(target, {"heads": list(heads), "classes": {h: list(classes[h]) for h in heads}})
        return target

    def read_classes(self) -> tuple[list[str], dict[str, list[str]]]:
        """The heads and class list per head (``summary.json``, else ``classes.json``).

        Raises:
            RunError: Neither file records them.
        """
        for name in (SUMMARY_JSON, CLASSES_JSON):
            path = self.file(name)
            if path.is_file():
                data = read_json(path)
                if isinstance(data, dict) and isinstance(data.get("classes"), dict) and data.get("heads"):
                    return list(data["heads"]), {h: list(c) for h, c in data["classes"].items()}
        raise RunError(f"run {self.id} records no class list (no summary.json or classes.json)",
                       "train the run to the end, or pass a train run")

    # ------------------------------------------------------------------ transforms
    def write_transforms(self, record: Mapping[str, Any]) -> Path:
        """Write ``transforms.json`` (see ``toolkit.data.transforms.pipeline_record``)."""
        target = self.file(TRANSFORMS_JSON)
        atomic_write_json(target, dict(record))
        return target

    def read_transforms(self) -> dict[str, Any] | None:
        """The content of ``transforms.json``, or None when the run has none."""
        path = self.file(TRANSFORMS_JSON)
        return read_json(path) if path.is_file() else None

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row (typically one fold/epoch) to ``metrics.csv``; new columns widen the file."""
        append_csv_row(self.file(METRICS_CSV), row)

    def read_metrics(self, *, as_frame: bool | None = None) -> pd.DataFrame | builtins.list[dict[str, Any]]:
        """Read ``metrics.csv``.

        Args:
            as_frame: ``True`` for a pandas DataFrame, ``False`` for a list of dicts (numbers
                parsed, empty cells ``None``); ``None`` picks the DataFrame when pandas is
                importable.

        Returns:
            The rows; empty when the run has logged no metrics yet.
        """
        file = self.file(METRICS_CSV)
        if as_frame is None:
            try:
                import pandas  # noqa: F401  (only probing whether it is there)
            except ImportError:
                as_frame = False
            else:
                as_frame = True
        if as_frame:
            import pandas as pd

            if not file.exists() or file.stat().st_size == 0:
                return pd.DataFrame()
            return pd.read_csv(file)
        if not file.exists():
            return []
        with open(file, encoding="utf-8", newline="") as handle:
            return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def replace_fold_metrics(self, fold: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Make ``metrics.csv`` hold exactly ``rows`` for ``fold`` (what resume restores: none lost, none twice)."""
        import pandas as pd

        path = self.file(METRICS_CSV)
        kept = [r for r in self.read_metrics(as_frame=False) if str(r.get("fold")) != str(fold)] if path.is_file() else []
        frame = pd.DataFrame([*kept, *rows])
        from toolkit.store.atomic import atomic_writer

        with atomic_writer(path, "w") as fh:
            frame.to_csv(fh, index=False)

    # ------------------------------------------------------------------ summary
    @property
    def summary_path(self) -> Path:
        """Where ``summary.json`` is."""
        return self.file(SUMMARY_JSON)

    @property
    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json`` (empty dict when there is none yet)."""
        try:
            data = read_json(self.file(SUMMARY_JSON))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def update_summary(self, values: Mapping[str, Any] | None = None, /, **fields: Any) -> dict[str, Any]:
        """Merge keys into ``summary.json`` and rewrite it atomically.

        Confusion matrices of many classes are written as their nonzero cells
        (:mod:`toolkit.store.confusion`; read them with :func:`~toolkit.store.confusion.confusion_matrix`).

        Args:
            values: Keys to set, as a mapping (for keys that are not identifiers).
            **fields: More keys to set.

        Returns:
            The merged summary, as written.
        """
        merged = self.summary
        merged.update(values or {})
        merged.update(fields)
        merged = compact_confusions(merged)
        atomic_write_json(self.summary_path, merged)
        return merged

    # ------------------------------------------------------------------ out-of-fold probabilities
    def oof_path(self, fold: int | None = None) -> Path:
        """``oof.parquet`` of the run, or of one fold."""
        return self.file(OOF_PARQUET if fold is None else f"folds/{fold}/{OOF_PARQUET}")

    def has_oof(self, fold: int | None = None) -> bool:
        """Whether the run (or the fold) has written its out-of-fold probabilities."""
        return self.oof_path(fold).is_file()

    def write_oof(self, frame: pd.DataFrame, fold: int | None = None) -> Path:
        """Write out-of-fold probabilities (a :func:`~toolkit.store.tables.probability_frame` with labels)."""
        return write_table(frame, self.oof_path(fold))

    def read_oof(self, fold: int | None = None) -> pd.DataFrame:
        """Out-of-fold probabilities, ``id`` as text.

        Raises:
            RunError: The run (or fold) has none.
        """
        path = self.oof_path(fold)
        if not path.is_file():
            where = f"fold {fold} of run {self.id}" if fold is not None else f"run {self.id}"
            raise RunError(f"{where} has no {OOF_PARQUET}", "train every fold to the end (`--folds all`)")
        frame = read_table(path, what=f"run {self.id}'s out-of-fold table", hint="the run folder is damaged")
        frame["id"] = frame["id"].astype(str)
        return frame

    # ------------------------------------------------------------------ folds
    def fold_dir(self, fold: int) -> Path:
        """``folds/<k>/``."""
        return self.file(f"folds/{int(fold)}")

    def checkpoint_path(self, fold: int) -> Path:
        """The best weights of a fold (``folds/<k>/model.safetensors``; ``model.json`` lies beside it)."""
        return self.fold_dir(fold) / CHECKPOINT

    def checkpoint_folds(self) -> list[int]:
        """Folds with a saved best checkpoint, sorted."""
        folds = self.file("folds")
        if not folds.is_dir():
            return []
        return sorted(int(p.name) for p in folds.iterdir() if p.name.isdigit() and (p / CHECKPOINT).is_file())

    def write_fold_best(self, fold: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Record the best epoch of a fold so far and its validation metrics (``best.json``)."""
        atomic_write_json(self.fold_dir(fold) / "best.json", {"epoch": epoch, "metrics": compact_confusions(metrics)})

    def read_fold_best(self, fold: int) -> dict[str, Any] | None:
        """``{"epoch", "metrics"}`` of the fold's best epoch, or None before its first epoch ended."""
        path = self.fold_dir(fold) / "best.json"
        return read_json(path) if path.is_file() else None

    def write_fold_done(self, fold: int, result: Mapping[str, Any]) -> None:
        """Mark a fold finished with its result (``done.json``); resume skips it."""
        atomic_write_json(self.fold_dir(fold) / "done.json", compact_confusions(result))

    def read_fold_done(self, fold: int) -> dict[str, Any] | None:
        """The result of a finished fold, or None when it has not finished."""
        path = self.fold_dir(fold) / "done.json"
        return read_json(path) if path.is_file() else None

    def fold_state_dir(self, fold: int) -> Path | None:
        """The fold's last saved training state (for resume), or None."""
        for name in (STATE, STATE_OLD):  # state.old survives a crash in the middle of a swap
            candidate = self.fold_dir(fold) / name
            if candidate.is_dir():
                return candidate
        return None

    def staged_state_dir(self, fold: int, *, clear: bool = False) -> Path:
        """Where the next training state of a fold is written before :meth:`commit_state_dir` swaps it in.

        Args:
            fold: The fold.
            clear: Remove what a crashed save left there (the main process only, before the others write).
        """
        staged = self.fold_dir(fold) / STATE_TMP
        if clear and staged.exists():
            shutil.rmtree(staged)
        return staged

    def commit_state_dir(self, fold: int) -> Path:
        """Make the staged state the fold's state; at no moment is there neither (state.old bridges the swap)."""
        fold_dir = self.fold_dir(fold)
        final, old = fold_dir / STATE, fold_dir / STATE_OLD
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        (fold_dir / STATE_TMP).rename(final)
        if old.exists():
            shutil.rmtree(old)
        return final

    def write_state_counters(self, state_dir: Path, counters: Mapping[str, Any]) -> None:
        """The JSON part of a training state (progress counters, scheduler, callbacks): nothing is pickled."""
        atomic_write_json(state_dir / STATE_COUNTERS, dict(counters))

    def read_state_counters(self, state_dir: Path) -> dict[str, Any]:
        """What :meth:`write_state_counters` wrote."""
        return read_json(state_dir / STATE_COUNTERS)

    @staticmethod
    def ema_weights_path(state_dir: Path) -> Path:
        """Where a training state keeps its EMA weights (safetensors)."""
        return state_dir / STATE_EMA

    def remove_fold_state(self, fold: int) -> None:
        """Delete a fold's resume state (the optimizer alone is twice the model) once it has finished."""
        for name in (STATE, STATE_OLD, STATE_TMP):
            shutil.rmtree(self.fold_dir(fold) / name, ignore_errors=True)

    # ------------------------------------------------------------------ predictions
    def prediction_path(self, name: str, kind: str = "parquet") -> Path:
        """``predictions/<name>.<kind>``; kind is ``parquet``, ``csv``, ``json`` or ``tta.json``.

        Raises:
            RunError: ``name`` is not a plain file name.
        """
        if not _SET_NAME.match(name) or name in (".", ".."):
            raise RunError(f"prediction set name {name!r} is not a plain name",
                           "use letters, digits, '.', '_' and '-' (no slashes)")
        return self.file(f"{PREDICTIONS}/{name}.{kind}")

    def prediction_sets(self) -> dict[str, float]:
        """Prediction set name → modification time of its ``.parquet``."""
        folder = self.file(PREDICTIONS)
        if not folder.is_dir():
            return {}
        return {p.stem: p.stat().st_mtime for p in folder.glob("*.parquet") if not p.name.startswith(".")}

    def write_predictions(self, name: str, probabilities: pd.DataFrame, submission: pd.DataFrame | None,
                          info: Mapping[str, Any] | None, tta: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Write one prediction set: probabilities, the submission, what made it (``info``), the TTA choice.

        Returns:
            The written files by kind (``parquet``, ``csv``, ``json``, ``tta``).
        """
        files = {"parquet": self.prediction_path(name, "parquet")}
        if submission is not None:
            files["csv"] = self.prediction_path(name, "csv")
        if info is not None:
            files["json"] = self.prediction_path(name, "json")
        write_table(probabilities, files["parquet"])
        if submission is not None:
            write_table(submission, files["csv"])
        if tta is not None:
            files["tta"] = self.prediction_path(name, "tta.json")
            atomic_write_json(files["tta"], dict(tta))
        if info is not None:
            atomic_write_json(files["json"], compact_confusions(info))
        return files

    def read_predictions(self, name: str) -> pd.DataFrame:
        """A prediction set's probability table, ``id`` as text.

        Raises:
            RunError: The run has no such set.
        """
        path = self.prediction_path(name, "parquet")
        if not path.is_file():
            have = ", ".join(sorted(self.prediction_sets())) or "none"
            raise RunError(f"run {self.id} has no prediction set {name!r} (it has: {have})",
                           f"run `clsctl predict {self.id} DATA --name {name}`")
        frame = read_table(path, what=f"prediction set {name!r} of run {self.id}", hint="predict again")
        frame["id"] = frame["id"].astype(str)
        return frame

    def trackers_dir(self) -> Path:
        """``trackers/``: the experiment trackers' own files (TensorBoard event files, wandb's local copy).

        Their format is the tracker's; clsctl only chooses the folder, so the run stays one folder.
        """
        return self.file(TRACKERS)

    # ------------------------------------------------------------------ export and explanations
    def export_dir(self) -> Path:
        """``export/``: where ``clsctl export`` writes the ONNX graph(s) and ``preprocessing.json`` by default."""
        return self.file(EXPORT)

    def explain_dir(self, name: str = TOP_LOSSES) -> Path:
        """``explain/<name>/``: one set of explanations (``top-losses`` holds those of ``--top-losses``).

        Raises:
            RunError: ``name`` is not a plain file name.
        """
        if not _SET_NAME.match(name) or name in (".", ".."):
            raise RunError(f"explanation set name {name!r} is not a plain name",
                           "use letters, digits, '.', '_' and '-' (no slashes)")
        return self.file(f"{EXPLAIN}/{name}")

    # ------------------------------------------------------------------ clean runs
    def write_label_issues(self, frame: pd.DataFrame) -> Path:
        """Write ``label_issues.csv`` (see ``toolkit.clean.labels.LabelIssues.table``)."""
        return write_table(frame, self.file(LABEL_ISSUES_CSV))

    def read_label_issues(self) -> pd.DataFrame:
        """``label_issues.csv`` with paths, ids and labels as text.

        Raises:
            RunError: The folder has none (it is not a clean run).
        """
        path = self.file(LABEL_ISSUES_CSV)
        if not path.is_file():
            raise RunError(f"{self.id} has no {LABEL_ISSUES_CSV}", "pass a clean run (made by `clsctl clean`)")
        return read_table(path, text_columns=("id", "path", "label", "suggested_label", "head"),
                          keep_default_na=False, what="label issue table", hint="run `clsctl clean` again")

    def write_findings(self, kind: str, frame: pd.DataFrame) -> Path:
        """Write one table of findings: ``conflicts``, ``outliers`` or ``near_duplicates``."""
        return write_table(frame, self.file(FINDINGS[kind]))

    def write_clean_manifest(self, frame: pd.DataFrame) -> Path:
        """Write ``clean_manifest.csv``, the manifest to retrain on."""
        return write_table(frame, self.file(CLEAN_MANIFEST_CSV))

    # ------------------------------------------------------------------ sweeps
    def write_trial(self, record: Mapping[str, Any]) -> Path:
        """Write ``trial.json``: which study and trial a train run is, its parameters and how the trial ended."""
        target = self.file(TRIAL_JSON)
        atomic_write_json(target, dict(record))
        return target

    def read_trial(self) -> dict[str, Any] | None:
        """The content of ``trial.json``; None for a run that is no sweep's trial."""
        path = self.file(TRIAL_JSON)
        return read_json(path) if path.is_file() else None

    @property
    def best_recipe_path(self) -> Path:
        """``best.toml`` of a sweep run: the best trial's recipe (``clsctl train --recipe`` on it retrains it)."""
        return self.file(BEST_TOML)

    def write_best_recipe(self, text: str) -> Path:
        """Write ``best.toml`` (TOML text of a resolved recipe)."""
        atomic_write_text(self.best_recipe_path, text)
        return self.best_recipe_path

    @property
    def sweep_report_path(self) -> Path:
        """``report.html`` of a sweep run: trials, the metric against each parameter, importances, pruned curves."""
        return self.file(SWEEP_REPORT)


class Folder(RunFiles):
    """A plain output folder (``--out DIR``) that takes the same typed files as a run folder.

    Args:
        path: The folder; created on the first write.
    """

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path).absolute()

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, name: StrPath) -> Path:
        """The path of a file inside the folder (it need not exist)."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{name!s} is not a path inside the folder")
        return self.path / rel
