"""The Typer app and the one error mapper every command goes through.

Exit codes: 0 done, 2 the user's input is wrong or refused (one line on stderr), 1 an
unexpected failure (a short traceback). Usage errors (an unknown option, a missing
argument, a value out of range) are refusals too: one ``dm-tune: `` line, exit 2, not
typer's usage block and error box (see :func:`run_app`).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.exceptions import Abort, Exit, TyperException

try:  # typer < 0.20 raises click's own exceptions; later typers vendor click (TyperException)
    from click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the typer release
    _ClickException = TyperException

app = typer.Typer(
    name="dm-tune",
    help="Tune Derivative Manipulation's emphasis mode and variance per noise type and rate.",
    no_args_is_help=True,
    # typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    add_completion=True,
    pretty_exceptions_enable=False,
    # -h is --help on every command (click's contexts hand it down to the subcommands)
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped output (CI logs, `make demo | tee`) gets a width that fits the status table.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])
TRACEBACK_FRAMES = 4


def _print_version(value: bool) -> None:
    if value:
        from dm_tune import __version__

        typer.echo(f"dm-tune {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(  # noqa: B008 - typer's declaration style
        False, "--version", callback=_print_version, is_eager=True,
        help="Print dm-tune's version and exit."),
) -> None:
    """Tune Derivative Manipulation's emphasis mode and variance per noise type and rate."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its first non-empty line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def say(message: str) -> None:
    """Print a plain line to stdout (no rich markup: names may contain brackets)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def print_table(renderable: Any) -> None:
    """Print a rich table; piped, without the spaces that pad each line to the table's
    width (a log or `| tee` gets the text and nothing after it)."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    console.file.write(text + "\n")


def warn(message: str) -> None:
    """Print one plain line to stderr."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def refuse(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the exit exception to raise (2: refused)."""
    warn(f"dm-tune: {message}")
    return typer.Exit(code)


#: write errors that are the output's destination's, not a bug: a full disk or /dev/full,
#: a closed pipe (`| head`), a quota, a file-size limit, a device error
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _output_refused(error: OSError) -> typer.Exit:
    """One line for an output that cannot be written; stdout is pointed at /dev/null so
    that Python's flush at exit does not print a second complaint."""
    where = f"{error.filename}" if error.filename else "to standard output"
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout closed or replaced: nothing to silence
        pass
    return refuse(f"cannot write {where}: {os.strerror(error.errno)}")


def command(name: str | None = None) -> Callable[[F], F]:
    """Register a command whose refusals exit 2 with one line, and bugs exit 1."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                value = func(*args, **kwargs)
                sys.stdout.flush()  # an unwritable stdout fails here, not at exit
                return value
            except (Exit, Abort, TyperException):  # typer's own exits and usage errors
                raise
            except OSError as error:
                if error.errno not in _OUTPUT_ERRNOS:
                    return _unexpected(error)
                raise _output_refused(error) from None
            except ValueError as error:  # DMTuneError and every ValueError from user input
                raise refuse(one_line(error)) from None
            except KeyboardInterrupt:
                warn("dm-tune: interrupted")
                raise typer.Exit(130) from None
            except Exception as error:
                return _unexpected(error)

        app.command(name)(guarded)
        return func

    return register


def _unexpected(error: Exception) -> Any:
    """A bug: a short traceback, one summary line, exit 1."""
    frames = traceback.format_exception(error, limit=-TRACEBACK_FRAMES)
    warn("".join(frames).rstrip())
    warn(f"dm-tune: unexpected error: {type(error).__name__}: {one_line(error)}")
    raise typer.Exit(1) from None


def _usage_hint(error: BaseException) -> str:
    """Where the user finds the right usage: `dm-tune [COMMAND] --help`."""
    ctx = getattr(error, "ctx", None)
    if ctx is None:
        return ""
    command_name = ctx.info_name if ctx.parent is not None else None
    return f" (see: dm-tune {command_name + ' ' if command_name else ''}--help)"


def run_app(args: list[str] | None = None) -> int:
    """Run the app and return its exit code; usage errors are one line on stderr (exit 2).

    typer's standalone mode prints a usage line, a hint and a boxed error for a usage
    error; here they become ``dm-tune: <message> (see: dm-tune <command> --help)``.
    """
    try:
        code = app(args=args, standalone_mode=False, prog_name="dm-tune")
    except (TyperException, _ClickException) as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `dm-tune`: the help, exit 2
            text = error.format_message().strip()  # empty when rich has printed it already
            if text:
                typer.echo(text)
            return 2
        message = one_line(error) if not hasattr(error, "format_message") else (
            one_line(Exception(error.format_message())))
        warn(f"dm-tune: {message}{_usage_hint(error)}")
        return int(getattr(error, "exit_code", 2))
    except Abort:
        warn("dm-tune: aborted")
        return 1
    return code if isinstance(code, int) else 0
