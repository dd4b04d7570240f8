"""TOML recipes → frozen :class:`~toolkit.config.schema.Recipe`.

Loading is strict: every file of an ``extends`` chain is checked on its own, so an unknown key or a
wrong type is reported with the file it is in, its key path and the nearest valid key. Values are
then merged (the extending file wins; tables merge key by key, lists are replaced), ``--set``
overrides are applied last, and the result is built into dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w

from toolkit.config.checks import LIMITS, range_error
from toolkit.config.schema import Recipe, recipe_to_dict
from toolkit.errors import RecipeError

_TOP_ONLY = ("extends",)
_NONE_WORDS = ("none", "null")
_KEYS_HINT = "`clsctl recipe keys` lists every key"
_BREAKING = ("Cc", "Zl", "Zp")  # control characters (\n, \r, \x1c...) and the Unicode line/paragraph separators


# --------------------------------------------------------------------------- type helpers
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return False, tp


def type_name(tp: Any) -> str:
    """Human-readable type, as ``clsctl recipe keys`` prints it."""
    optional, inner = _is_optional(tp)
    if optional:
        return f"{type_name(inner)} (optional)"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(f'"{a}"' for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"table of {type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "table"
    if tp is Any:
        return "any"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def printable(text: str) -> str:
    """``text`` with control characters and line separators escaped, so an error naming it stays one line."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _BREAKING else c
                   for c in text)


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__)
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return f"{kind} {printable(text[:60])}"


def _suggest(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`? ({_KEYS_HINT})" if close else _KEYS_HINT


def _all_key_paths() -> list[str]:
    return [k for k, *_ in iter_keys()]


# --------------------------------------------------------------------------- building
def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    optional, inner = _is_optional(tp)
    if optional:
        if value is None:
            return None
        # TOML has no null: the word "none" unsets an optional key, e.g. --set train.patience=none or
        # --set model.pretrained_file=none.
        if isinstance(value, str) and value.lower() in _NONE_WORDS:
            return None
        return _coerce(value, inner, key, source)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean `{close[0]}`?" if close else "choose one of the listed values"
            raise RecipeError(f"{source}: `{key}` must be one of {', '.join(map(str, choices))}; got {_describe(value)}", hint)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{source}: `{key}` must be a table, got {_describe(value)}",
                              f"write it as `[{key}]` or an inline table `{{ ... }}`")
        return _build(tp, value, key, source)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{source}: `{key}` must be {type_name(tp)}, got {_describe(value)}",
                              "write a TOML array, e.g. `[1, 2]`")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{source}: `{key}` must be {type_name(tp)}, got {_describe(value)}",
                              f"write it as `[{key}]` or an inline table")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{printable(str(k))}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{source}: `{key}` must be a boolean, got {_describe(value)}", "write true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{source}: `{key}` must be an integer, got {_describe(value)}", "write a whole number without quotes")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{source}: `{key}` must be a number, got {_describe(value)}", "write a number without quotes")
        if not math.isfinite(value):  # TOML has nan and inf; no recipe number means either
            raise RecipeError(f"{source}: `{key}` must be a finite number, got {value}", "write a number such as 0.5")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{source}: `{key}` must be a string, got {_describe(value)}", 'put the value in quotes, e.g. "resnet18"')
        return value
    raise TypeError(f"unsupported recipe type {tp!r} at {key}")  # a schema bug, not a user error


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = printable(f"{prefix}.{key}" if prefix else key)
        if key not in names:
            if not prefix and key in _TOP_ONLY:
                continue
            scope = [f"{prefix}.{n}" if prefix else n for n in names]
            choices = scope + _all_key_paths() if not prefix else scope
            raise RecipeError(f"{source}: unknown key `{path}`", _suggest(path, choices))
        kwargs[key] = _coerce(value, hints[key], path, source)
        error = range_error(path, kwargs[key])
        if error is not None:
            raise RecipeError(f"{source}: {error.message}", error.hint)
    return cls(**kwargs)


# --------------------------------------------------------------------------- files, extends, paths
def _path_keys(cls: type = Recipe, prefix: str = "") -> Iterator[tuple[str, ...]]:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = _is_optional(hints[f.name])[1]
        if dataclasses.is_dataclass(tp):
            yield from ((f.name, *rest) for rest in _path_keys(tp))
        elif f.metadata.get("path"):
            yield (f.name,)


def _absolute(text: str, base_dir: Path) -> Path:
    """``text`` as an absolute path, relative to ``base_dir``; ValueError when no path can be made of it."""
    try:
        return (base_dir / Path(text).expanduser()).resolve()
    except (RuntimeError, ValueError, OSError) as exc:  # ~unknown_user, a NUL byte, a name too long
        raise ValueError(printable(str(exc))) from None


def _resolve_paths(raw: dict[str, Any], base_dir: Path, source: str) -> None:
    """Make recipe paths absolute, relative to the file that sets them."""
    for keys in _path_keys():
        node: Any = raw
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(keys[-1])
        if isinstance(value, str) and value and not value.startswith("builtin:") and value.lower() not in _NONE_WORDS:
            try:
                node[keys[-1]] = str(_absolute(value, base_dir))
            except ValueError as exc:
                raise RecipeError(f"{source}: `{'.'.join(keys)}` = {_describe(value)} is not a usable path ({exc})",
                                  "write a path to a file or folder") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_text(path: Path, where: str) -> str:
    """The text of a recipe file; a BOM (as Windows editors write it) is dropped."""
    if not path.exists():
        raise RecipeError(f"{where} {path}, which does not exist", "check the path (relative paths are relative to the recipe file)")
    if path.is_dir():
        raise RecipeError(f"{where} {path}, which is a folder, not a recipe file", "name a .toml file in it")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{where} {path}, which cannot be read: {exc.strerror}", "check the file's permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not a text file (byte {exc.start} is not UTF-8)",
                          "a recipe is TOML text saved as UTF-8; check that the path names the .toml file") from None


def _read_file(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    where = f"{stack[-1]}: `extends` names" if stack else "recipe"
    try:
        path = _absolute(str(path), Path.cwd())
    except ValueError as exc:
        raise RecipeError(f"{where} {printable(str(path))}, which is not a usable path ({exc})", "check the path") from None
    if path in stack:
        chain = " → ".join(p.name for p in (*stack, path))
        raise RecipeError(f"{stack[-1]}: `extends` makes a cycle: {chain}", "remove one of the `extends` lines")
    text = _read_text(path, where)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}", "fix the syntax at the line named") from None
    except RecursionError:
        raise RecipeError(f"{path}: not valid TOML: arrays or tables nested too deeply", "flatten the value") from None
    _build(Recipe, raw, "", str(path))  # validate this file alone, so errors name it
    _resolve_paths(raw, path.parent, str(path))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: `extends` must be a string, got {_describe(parent)}", 'write extends = "base.toml"')
    if not parent.strip():
        # Path("") is the recipe's own folder, which would be reported as a missing file.
        raise RecipeError(f"{path}: `extends` is empty", 'name the recipe this one builds on, e.g. extends = "base.toml", '
                          "or delete the line")
    base = _read_file(path.parent / parent, (*stack, path))
    return _merge(base, raw)


# --------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set section.key=value``; the value is read as TOML.

    A value that is not valid TOML is taken as a bare string, so ``--set model.name=convnext_tiny``
    works without shell-quoting the quotes.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {text!r}: expected section.key=value", "e.g. --set train.epochs=3")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key, parsed


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _apply_overrides(raw: dict[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        source = f"--set {printable(key)}"
        if key.split(".")[0] in _TOP_ONLY:
            raise RecipeError(f"{source}: `extends` cannot be overridden", "pass a different --recipe instead")
        patch = _nest(key, value)
        _build(Recipe, patch, "", source)
        if isinstance(value, str):
            _resolve_paths(patch, Path.cwd(), source)
        raw = _merge(raw, patch)
    return raw


# --------------------------------------------------------------------------- public API
def load_recipe(path: str | Path | None = None, overrides: Sequence[str | tuple[str, Any]] = ()) -> Recipe:
    """Load a recipe file (following ``extends``) and apply ``--set`` overrides.

    Args:
        path: the TOML file; ``None`` starts from the defaults.
        overrides: ``"section.key=value"`` strings or ``(key, value)`` pairs, applied in order.

    Raises:
        RecipeError: unknown key, wrong type, missing file, bad TOML, or an ``extends`` cycle.
    """
    raw = _read_file(Path(path), ()) if path is not None else {}
    raw = _apply_overrides(raw, overrides)
    return _build(Recipe, raw, "", str(path) if path else "recipe")


def recipe_from_dict(raw: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Build a recipe from an already-parsed mapping (paths must be absolute)."""
    return _build(Recipe, raw, "", source)


def with_overrides(recipe: Recipe, overrides: Mapping[str, Any] | Sequence[str]) -> Recipe:
    """Return a copy of ``recipe`` with ``{"train.epochs": 3}``-style overrides applied."""
    items = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides)
    raw = _apply_overrides(recipe_to_dict(recipe), items)
    return _build(Recipe, raw, "", "recipe")


def get_value(recipe: Recipe, key: str) -> Any:
    """``get_value(recipe, "train.epochs")``."""
    node: Any = recipe
    for part in key.split("."):
        try:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        except (AttributeError, KeyError):
            raise RecipeError(f"unknown key `{key}`", _suggest(key, _all_key_paths())) from None
    return node


def iter_keys(cls: type = Recipe, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """Every recipe key as ``(key path, type, default, meaning)``, generated from the dataclasses."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        inner = _is_optional(tp)[1]
        if dataclasses.is_dataclass(inner):
            yield from iter_keys(inner, path)
            continue
        if typing.get_origin(inner) is dict and dataclasses.is_dataclass(typing.get_args(inner)[1]):
            yield path, type_name(inner), "{}", f.metadata.get("help", "")
            yield from iter_keys(typing.get_args(inner)[1], f"{path}.<name>")
            continue
        if typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            yield path, "list of tables", "[]", f.metadata.get("help", "")
            yield from iter_keys(typing.get_args(inner)[0], f"{path}[]")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        shown = "unset" if default is None else (tomli_w.dumps({"v": default})[4:].strip())
        meaning = f.metadata.get("help", "")
        limit = LIMITS.get(path)
        if limit is not None:
            bounds = ", ".join(b for b in (limit.rule(), f"{limit.length} values" if limit.length else "") if b)
            meaning = f"{meaning} [{bounds}]"
        yield path, type_name(tp), shown, meaning
