"""``clsctl aug``: see what the model will see before spending GPU hours."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.options import RecipeOpt, SetOpt

app = typer.Typer(help="Look at the augmentation pipeline of a recipe.", no_args_is_help=True)


@app.command("preview")
def preview(
    data: Annotated[Path, typer.Argument(help="Image folder (ImageFolder or unlabeled) to sample from.")],
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    n: Annotated[int, typer.Option("--n", help="How many source images.")] = 16,
    views: Annotated[int, typer.Option("--views", help="Augmented views per image (>1 adds the eval view first).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Sampling and augmentation seed.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("aug_preview.png"),
) -> None:
    """Write a PNG grid of training-augmented samples.

    Example: clsctl aug preview data/train --recipe recipes/convnext_ls.toml --n 16 --views 4
    """
    from toolkit.data.preview import preview_from_path

    path, shown = preview_from_path(data, out, recipe=recipe, overrides=set_ or [], n=n, seed=seed, views=views)
    typer.echo(f"wrote {path} ({shown} images × {views} view(s))")
