"""The search space of a sweep: ``[sweep] space`` parsed, checked against the recipe schema, and drawn from.

Each entry is keyed by a recipe key and is either a list of choices or a range::

    space."optim.lr" = { low = 1e-5, high = 1e-2, log = true }
    space."train.batch_size" = { low = 16, high = 64, step = 16 }
    space."loss.name" = ["ce", "focal", "weighted_ce"]

Everything here runs before a study, a storage or a run folder exists, and without optuna or torch: a
misspelt key or a value the recipe cannot take is one line naming it. Optuna is only touched by
:func:`suggest`, with the trial it is handed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.config.loader import iter_keys, with_overrides
from toolkit.config.schema import Recipe, SweepConfig
from toolkit.errors import RecipeError

if TYPE_CHECKING:
    import optuna

_RANGE_KEYS = ("low", "high", "log", "step")
_NUMERIC = ("number", "integer")
_HINT = '`clsctl recipe keys` lists every key; e.g. space."optim.lr" = { low = 1e-5, high = 1e-2, log = true }'
# Grid points of a float range are rounded so that 0.1 + 2 * 0.1 is the 0.3 a user wrote.
_GRID_DIGITS = 12


@dataclass(frozen=True)
class Param:
    """One searched key: a range (``low``..``high``, optionally ``log`` or ``step``) or ``choices``."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def grid(self) -> list[Any]:
        """Every value a grid search tries.

        Raises:
            RecipeError: A float range without ``step`` (it has no finite grid).
        """
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "float" and self.step is None:
            raise RecipeError(f'sweep.space."{self.key}": a grid search needs `step` on a float range (or a list of values)',
                              f'e.g. space."{self.key}" = [{self.low}, {self.high}], or add step = ...')
        step = self.step if self.step is not None else 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(float(v), _GRID_DIGITS) for v in values]

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices, or a point of the range (on its step, if it has one)."""
        if self.kind == "choice":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return self.kind == "float" or isinstance(value, int)
        ratio = (value - self.low) / self.step
        return abs(ratio - round(ratio)) < 1e-9

    def describe(self) -> str:
        """``[ce, focal]``, ``1e-05..0.01 log``, ``16..64 step 16``: as the sweep's first lines show it."""
        if self.kind == "choice":
            return "[" + ", ".join(map(str, self.choices)) + "]"
        extra = " log" if self.log else f" step {self.step}" if self.step is not None else ""
        return f"{self.low:g}..{self.high:g}{extra}"

    def as_dict(self) -> dict[str, Any]:
        """The entry as the study records it (a resumed study must search the same space)."""
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log, "step": self.step}


def _schema_types() -> dict[str, str]:
    """Recipe key → its type as ``clsctl recipe keys`` names it (``number``, ``integer (optional)``...)."""
    return {key: tp for key, tp, _default, _help in iter_keys()}


def _unknown_key(key: str, known: list[str]) -> RecipeError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`? ({_HINT})" if close else _HINT
    return RecipeError(f'sweep.space."{key}": no such recipe key', hint)


def _check_value(base: Recipe, key: str, value: Any, what: str) -> None:
    """``value`` is a value ``key`` can take (type and range), by the recipe's own rules."""
    try:
        with_overrides(base, {key: value})
    except RecipeError as exc:
        # The loader names the source as `--set key`; a sweep names the space entry instead.
        message = exc.message.split(": ", 1)[1] if exc.message.startswith("--set ") else exc.message
        raise RecipeError(f'sweep.space."{key}": {what} {value!r} does not fit: {message}', exc.hint) from None


def _parse_range(base: Recipe, key: str, spec: dict[str, Any], type_name: str) -> Param:
    unknown = [k for k in spec if k not in _RANGE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), _RANGE_KEYS, n=1)
        hint = f"did you mean `{close[0]}`?" if close else "a range takes low, high and optionally log or step"
        raise RecipeError(f'sweep.space."{key}": unknown range key `{unknown[0]}`', hint)
    if "low" not in spec or "high" not in spec:
        raise RecipeError(f'sweep.space."{key}": a range needs `low` and `high`',
                          f'e.g. space."{key}" = {{ low = 1e-5, high = 1e-2, log = true }}, or a list of values')
    if not type_name.startswith(_NUMERIC):
        raise RecipeError(f'sweep.space."{key}": a range needs a numeric key, and `{key}` is {type_name}',
                          f'list the values to try instead: space."{key}" = [...]')
    is_int = type_name.startswith("integer")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RecipeError(f'sweep.space."{key}": `{name}` must be a finite number, got {value!r}', _HINT)
        if is_int and not isinstance(value, int):
            raise RecipeError(f'sweep.space."{key}": `{key}` is an integer key, so `{name}` must be a whole number, '
                              f"got {value!r}", f"write {name} = {int(value)}")
    if not isinstance(log, bool):
        raise RecipeError(f'sweep.space."{key}": `log` must be true or false, got {log!r}', "write log = true")
    if not low < high:
        raise RecipeError(f'sweep.space."{key}": `low` ({low}) must be below `high` ({high})', "swap them")
    if log and step is not None:
        raise RecipeError(f'sweep.space."{key}": `log` and `step` cannot be used together', "drop one of them")
    if log and low <= 0:
        raise RecipeError(f'sweep.space."{key}": a log range needs `low` above 0, got {low}', "set low > 0 or log = false")
    if step is not None and step <= 0:
        raise RecipeError(f'sweep.space."{key}": `step` must be above 0, got {step}', "e.g. step = 1")
    for name, value in (("low", low), ("high", high)):
        _check_value(base, key, value, name)
    return Param(key, "int" if is_int else "float", low if is_int else float(low), high if is_int else float(high),
                 log, step if step is None or is_int else float(step))


def _parse_choices(base: Recipe, key: str, choices: list[Any]) -> Param:
    if not choices:
        raise RecipeError(f'sweep.space."{key}": the list of values is empty', "give at least two values to try")
    for value in choices:
        if not isinstance(value, str | int | float | bool):
            raise RecipeError(f'sweep.space."{key}": each value must be a string, number or boolean, got {value!r}',
                              "a sweep chooses among plain values; make one recipe per composite value instead")
        _check_value(base, key, value, "value")
    if len(set(map(repr, choices))) < len(choices):
        raise RecipeError(f'sweep.space."{key}": a value is listed twice', "list each value once")
    return Param(key, "choice", choices=tuple(choices))


def parse_space(recipe: Recipe) -> list[Param]:
    """The searched keys of ``recipe.sweep.space``, each checked against the recipe schema.

    Raises:
        RecipeError: An empty space, a key the recipe does not have, or a range or value it cannot take.
    """
    space = recipe.sweep.space
    if not space:
        raise RecipeError("sweep.space is empty: nothing to search",
                          'add keys to search, e.g. [sweep.space] "optim.lr" = { low = 1e-5, high = 1e-2, log = true }')
    types = _schema_types()
    searchable = sorted(k for k in types if not k.startswith("sweep.") and "<name>" not in k and "[]" not in k)
    base = base_recipe(recipe)
    params = []
    for key, spec in space.items():
        if key.startswith("sweep."):
            raise RecipeError(f'sweep.space."{key}": the [sweep] section itself cannot be searched', "remove the entry")
        if key not in types or key not in searchable:
            raise _unknown_key(key, searchable)
        if isinstance(spec, dict):
            params.append(_parse_range(base, key, spec, types[key]))
        elif isinstance(spec, list):
            params.append(_parse_choices(base, key, spec))
        else:
            raise RecipeError(f'sweep.space."{key}": expected a range {{ low = ..., high = ... }} or a list of values, '
                              f"got {spec!r}", _HINT)
    return params


def base_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` without its ``[sweep]`` section: what every trial starts from."""
    import dataclasses

    return dataclasses.replace(recipe, sweep=SweepConfig())


def trial_recipe(base: Recipe, params: dict[str, Any]) -> Recipe:
    """The fully resolved recipe of one trial: ``base`` with the trial's values set."""
    return with_overrides(base, params)


def suggest(trial: optuna.Trial, params: list[Param], *, grid: bool = False) -> dict[str, Any]:
    """Draw one value per searched key from ``trial``.

    Args:
        trial: The trial.
        params: The space.
        grid: Every key is drawn as a choice among its grid points (what the grid sampler enumerates).
    """
    values: dict[str, Any] = {}
    for p in params:
        if grid or p.kind == "choice":
            values[p.key] = trial.suggest_categorical(p.key, p.grid() if grid else list(p.choices))
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)
    return values
