"""Progress bars for long loops (feature extraction, training epochs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Show a bar on stderr; yield ``advance(n=1, **fields)`` to move it.

    Extra keyword fields (such as ``loss``) are shown after the bar.
    """
    if not enabled:
        yield lambda n=1, **fields: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields: float) -> None:
            status = " ".join(f"{key} {value:.4g}" for key, value in fields.items())
            progress.update(task, advance=n, **({"status": status} if fields else {}))

        yield advance
