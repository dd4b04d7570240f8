"""The ``clsctl`` entry point: wires subcommands and turns errors into one clear line.

Heavy libraries (torch, timm, pandas) are imported inside command bodies, never here, so
``clsctl --help`` stays instant.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Annotated

import typer

from toolkit import __version__
from toolkit.cli import aug as aug_cmd
from toolkit.cli import clean as clean_cmd
from toolkit.cli import demo as demo_cmd
from toolkit.cli import eda as eda_cmd
from toolkit.cli import ensemble as ensemble_cmd
from toolkit.cli import explain as explain_cmd
from toolkit.cli import export as export_cmd
from toolkit.cli import predict as predict_cmd
from toolkit.cli import recipe as recipe_cmd
from toolkit.cli import report as report_cmd
from toolkit.cli import split as split_cmd
from toolkit.cli import sweep as sweep_cmd
from toolkit.cli import train as train_cmd

app = typer.Typer(
    name="clsctl",
    help="Image classification for competitions and projects: look at the data, split it without leakage, "
    "train, predict with TTA, ensemble, clean labels, report.\n\n"
    "Example: clsctl recipe show recipes/quickstart.toml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(recipe_cmd.app, name="recipe")
app.add_typer(aug_cmd.app, name="aug")
app.command("eda")(eda_cmd.eda)
app.command("split")(split_cmd.split)
app.command("train")(train_cmd.train)
app.command("predict")(predict_cmd.predict)
app.command("ensemble")(ensemble_cmd.ensemble)
app.command("clean")(clean_cmd.clean)
app.command("report")(report_cmd.report)
app.command("sweep")(sweep_cmd.sweep)
app.command("sweep-trial", hidden=True)(sweep_cmd.sweep_trial)
app.command("export")(export_cmd.export)
app.command("explain")(explain_cmd.explain)
app.command("demo")(demo_cmd.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clsctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """clsctl: image classification from a folder of images to a validated submission."""


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if os.environ.get("CLSCTL_DEBUG"):
        import traceback

        traceback.print_exc()
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (what ``main`` exits with)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        return _run(argv)
    finally:
        # After a Ctrl-C the way out ran with SIGINT at its default action (see _stopped); a caller that
        # runs commands in-process gets its own handler back.
        if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint)


def _run(argv: list[str] | None) -> int:
    from toolkit.errors import ToolkitError

    try:
        # Standalone mode lets Typer print usage errors (exit 2) and --help itself.
        app(args=argv, prog_name="clsctl")
        return 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code in (130, 143):  # Typer turns a Ctrl-C into exit 130; a SIGTERM ends a run with 143
            return _stopped(exc, code)
        return code
    except ToolkitError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        return _stopped(exc, 130)
    except MemoryError:
        return _fail("out of memory — lower train.batch_size or data.image_size", 1)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return _fail(_no_room(exc), 1)
        return _fail(f"{exc} — check the path and its permissions (CLSCTL_DEBUG=1 shows the traceback)", 1)
    except Exception as exc:  # one line for the user; the traceback is a variable away
        return _fail(f"{type(exc).__name__}: {exc} — set CLSCTL_DEBUG=1 for the traceback and report it", 1)


def _stopped(exc: BaseException, code: int) -> int:
    """One line for a command stopped by Ctrl-C (130) or SIGTERM (143), with the notes the library added
    on the way out (``clsctl train`` names the command that resumes the run)."""
    if threading.current_thread() is threading.main_thread():
        # What is left of the way out (loader workers joined as the traceback is freed) may wait; a second
        # Ctrl-C then ends the process at once instead of raising inside that cleanup.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    notes: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # Typer raises its Exit(130) from the interrupt
        seen.add(id(current))
        notes += [n for n in getattr(current, "__notes__", ()) if n not in notes]
        current = current.__cause__ or current.__context__
    what = "interrupted" if code == 130 else "terminated (SIGTERM)"
    return _fail(" — ".join([what, *notes]), code)


def _no_room(exc: OSError) -> str:
    if exc.errno == errno.EFBIG:
        what = f"the write of {exc.filename}" if exc.filename else "a write"
        return f"the file size limit (ulimit -f) cut short {what} — raise it (`ulimit -f unlimited`) and run again"
    what = "disk quota exceeded" if exc.errno == errno.EDQUOT else "disk full: no space left on device"
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"{what}{where} — free space on that disk (runs or prediction sets you no longer need), then run the "
            "command again; the files it was replacing are intact")


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
