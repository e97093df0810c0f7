"""The Typer app and the one error mapper every command goes through.

Exit codes: 0 done, 2 the user's input is wrong or refused (one line on stderr), 1 an
unexpected failure (a short traceback).
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.exceptions import Abort, Exit, TyperException

app = typer.Typer(
    name="dm-tune",
    help="Tune Derivative Manipulation's emphasis mode and variance per noise type and rate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, `make demo | tee`) gets a width that fits the status table.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])
TRACEBACK_FRAMES = 4


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its first non-empty line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def say(message: str) -> None:
    """Print a plain line to stdout (no rich markup: names may contain brackets)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print one plain line to stderr."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def refuse(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the exit exception to raise (2: refused)."""
    warn(f"dm-tune: {message}")
    return typer.Exit(code)


def command(name: str | None = None) -> Callable[[F], F]:
    """Register a command whose refusals exit 2 with one line, and bugs exit 1."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (Exit, Abort, TyperException):  # typer's own exits and usage errors
                raise
            except ValueError as error:  # DMTuneError and every ValueError from user input
                raise refuse(one_line(error)) from None
            except KeyboardInterrupt:
                warn("dm-tune: interrupted")
                raise typer.Exit(130) from None
            except Exception as error:
                frames = traceback.format_exception(error, limit=-TRACEBACK_FRAMES)
                warn("".join(frames).rstrip())
                warn(f"dm-tune: unexpected error: {type(error).__name__}: {one_line(error)}")
                raise typer.Exit(1) from None

        app.command(name)(guarded)
        return func

    return register
