"""Terminal output shared by every subcommand, runtime and workstation alike: the console and
the progress bar. JSON output lives in :mod:`edgeinfer._io` (``emit_json``)."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


def console(stderr: bool = False):
    """A rich console; piped output (CI logs, files) gets a wide, stable layout instead of 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=None if stream.isatty() else 132)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (only on a terminal); yields an ``advance(n)`` callback."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console(stderr=True), transient=True) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)
