"""Helpers shared by the CLI commands: console, error exit, progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.progress import TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)

RepositoryOption = typer.Option(
    None, "--repository", "-r", envvar="OPTISERVE_REPOSITORY",
    help="Model repository directory [default: ./model-repository].",
)


def model_name(value: str | None) -> str | None:
    """Typer callback of a MODEL argument: the one name check (serving.repository.schema),
    before anything is contacted."""
    if value is None:
        return value
    from serving.repository.schema import check_model_name

    try:
        return check_model_name(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def model_ref(value: str | None) -> str | None:
    """Typer callback of a MODEL[:VERSION] argument."""
    if value is None:
        return value
    from serving.repository import parse_ref

    try:
        parse_ref(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error the user can act on and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


class RichProgress:
    """Progress bars for long steps: one bar per phase, a status line for the current item."""

    def __init__(self, progress: Progress):
        self._p = progress
        self._task = None
        self._phase = ""

    def phase(self, description: str, total: int | None = None) -> None:
        if self._task is not None:
            t = self._p.tasks[self._task]
            self._p.update(self._task, completed=t.total or 1, total=t.total or 1,
                           description=self._phase)
        self._phase = description
        self._task = self._p.add_task(description, total=total)

    def status(self, text: str) -> None:
        if self._task is not None:
            self._p.update(self._task, description=f"{self._phase}: {text}")

    def advance(self) -> None:
        if self._task is not None:
            self._p.advance(self._task)

    def finish(self) -> None:
        self.phase("done", total=1)
        self.advance()


@contextmanager
def progress_bars(enabled: bool = True):
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, disable=not enabled, transient=False) as p:
        rp = RichProgress(p)
        yield rp
        rp.finish()
