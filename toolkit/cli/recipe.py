"""``clsctl recipe``: look at recipes before spending compute on them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.options import SetOpt

app = typer.Typer(help="Show resolved recipes and every recipe key.", no_args_is_help=True)


@app.command("show")
def show(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe TOML file; omit to show the defaults.")] = None,
    set_: SetOpt = None,
) -> None:
    """Print the fully resolved recipe (extends followed, --set applied, paths absolute), once its values check out.

    Example: clsctl recipe show recipes/quickstart.toml --set train.epochs=3
    """
    from toolkit.config import check_values, load_recipe

    resolved = load_recipe(recipe, set_ or [])
    check_values(resolved)
    typer.echo(resolved.to_toml(), nl=False)


@app.command("keys")
def keys(
    section: Annotated[str | None, typer.Argument(help="Only this section, e.g. train.")] = None,
) -> None:
    """List every recipe key with its type, default and meaning.

    Example: clsctl recipe keys train
    """
    from rich.console import Console
    from rich.table import Table

    from toolkit.config import SECTIONS, iter_keys
    from toolkit.errors import UsageError

    if section is not None and section not in SECTIONS:
        raise UsageError(f"no recipe section `{section}`", f"choose one of {', '.join(SECTIONS)}")
    table = Table("key", "type", "default", "meaning", box=None, pad_edge=False)
    for key, tp, default, meaning in iter_keys():
        if section is None or key.startswith(section + "."):
            table.add_row(key, tp, default, meaning)
    Console(width=200 if not Console().is_terminal else None).print(table)
