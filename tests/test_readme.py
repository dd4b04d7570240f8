"""Every clsctl command README shows in a code block parses: the subcommand exists and takes those options.

Nothing is run: each command line goes through the click parser of its subcommand (options, their value
types and the number of arguments), as a user pasting it would hit first.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import typer.main

from toolkit.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"
SEPARATORS = {"&", "&&", ";", "|", "||"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _code_lines(text: str) -> list[tuple[int, str]]:
    """Lines of fenced code blocks, a backslash continuation joined onto its line, with README line numbers."""
    lines, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def _commands(line: str) -> list[list[str]]:
    """The clsctl argument lists on one shell line (``clsctl``, ``uv run clsctl``, ``accelerate launch … -m toolkit``)."""
    stripped = line.strip()
    if not re.match(r"^(\$ )?([A-Za-z_][A-Za-z0-9_]*=\S* )*(clsctl|uv run clsctl|accelerate launch)\b", stripped):
        return []
    tokens: list[str] = []
    for token in shlex.split(stripped.removeprefix("$ "), comments=True):
        if token.endswith(";") and token != ";":
            tokens += [token[:-1], ";"]
        else:
            tokens.append(token)
    found, current = [], []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            current.append(token)
            continue
        while current and ENV_ASSIGNMENT.match(current[0]):
            current.pop(0)
        if current[:2] == ["uv", "run"]:
            current = current[2:]
        if current[:1] == ["clsctl"]:
            found.append(current[1:])
        elif current[:2] == ["accelerate", "launch"] and "-m" in current:
            at = current.index("-m")
            if current[at + 1:at + 2] == ["toolkit"]:
                found.append(current[at + 2:])
        current = []
    return found


def _readme_commands() -> list[tuple[str, list[str]]]:
    found = []
    for number, line in _code_lines(README.read_text(encoding="utf-8")):
        for args in _commands(line):
            found.append((f"README.md:{number}: clsctl {' '.join(args)}", args))
    return found


def _parse(args: list[str]) -> None:
    """Parse ``args`` as ``clsctl`` would up to the command's own options and arguments, running nothing.

    Raises:
        typer.TyperException: What the user would see as a usage error (typer's click errors derive from it).
    """
    command = typer.main.get_command(app)
    ctx = command.make_context("clsctl", list(args))
    while hasattr(command, "resolve_command"):  # a group: the next word names the command
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)


COMMANDS = _readme_commands()


def test_readme_shows_commands():
    names = {args[0] for _, args in COMMANDS if args}
    assert {"demo", "train", "sweep"} <= names, names


def test_the_first_command_is_the_demo():
    assert COMMANDS and COMMANDS[0][1] == ["demo"], COMMANDS[:1]


@pytest.mark.parametrize("args", [a for _, a in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_readme_command_parses(args):
    try:
        _parse(args)
    except typer.TyperException as exc:
        pytest.fail(f"clsctl {' '.join(args)}: {exc.format_message()}")


@pytest.mark.parametrize(("line", "parsed"), [
    ("clsctl train --recipe r.toml   # a comment", [["train", "--recipe", "r.toml"]]),
    ("uv run clsctl demo", [["demo"]]),
    ("CUDA_VISIBLE_DEVICES=0 clsctl sweep --recipe r.toml & CUDA_VISIBLE_DEVICES=1 clsctl sweep --recipe r.toml",
     [["sweep", "--recipe", "r.toml"], ["sweep", "--recipe", "r.toml"]]),
    ("accelerate launch --multi_gpu --num_processes 4 -m toolkit train --recipe r.toml", [["train", "--recipe", "r.toml"]]),
    ("clsctl export runs/<id>; clsctl explain runs/<id>", [["export", "runs/<id>"], ["explain", "runs/<id>"]]),
    ("uv run nox", []),
    ("# clsctl train", []),
])
def test_command_lines_are_found(line, parsed):
    assert _commands(line) == parsed


@pytest.mark.parametrize("args", [["trian"], ["train", "--recipes", "r.toml"], ["split", "data", "--folds", "five"],
                                  ["predict", "runs/x"], ["report"]])
def test_a_wrong_command_does_not_parse(args):
    with pytest.raises(typer.TyperException):
        _parse(args)
