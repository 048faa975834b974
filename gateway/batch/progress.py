"""What the operator sees: a progress bar with rate, ETA and the counts while the run goes, the
plan of a dry run, and the summary with the failures at the end."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from gateway.batch.model import BatchSummary


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} items/s" if speed else "- items/s", style="progress.data.speed")


class ProgressView:
    """The live bar; a no-op when disabled or when the output is not a terminal."""

    def __init__(self, total: int, summary: BatchSummary, console: Console, enabled: bool) -> None:
        self.summary = summary
        self._progress: Progress | None = None
        if enabled and console.is_terminal and total:
            self._progress = Progress(
                TextColumn("[bold]describing"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("batch", total=total, counts=self._counts())

    def _counts(self) -> str:
        s = self.summary
        return f"done {s.done} · cached {s.cached} · filtered {s.filtered} · failed {s.failed} · retries {s.retries}"

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, counts=self._counts())

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, counts=self._counts())

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()


def print_plan(summary: BatchSummary, console: Console) -> None:
    table = Table(title="huayu batch --dry-run: nothing was sent")
    for name in ("style/language", "items", "already done", "to do"):
        table.add_column(name, justify="left" if name == "style/language" else "right")
    for combo, counts in summary.plan.items():
        table.add_row(combo, str(counts["total"]), str(counts["done"]), str(counts["todo"]))
    total = sum(c["todo"] for c in summary.plan.values())
    table.add_row("[bold]all", str(summary.planned), str(summary.skipped), f"[bold]{total}")
    console.print(table)
    if summary.failures:
        console.print(f"[yellow]{len(summary.failures)} input entries cannot be described:")
        for f in summary.failures:
            console.print(f"  {f.source}: {f.reason}", markup=False, highlight=False)


def print_summary(summary: BatchSummary, console: Console) -> None:
    s = summary
    tokens = s.prompt_tokens + s.completion_tokens
    console.print(
        f"[bold]huayu batch[/]: {s.finished} described in {s.elapsed_s:.1f} s ({s.items_per_s:.2f} items/s) — "
        f"done {s.done}, cached {s.cached}, filtered {s.filtered}, failed {s.failed}; "
        f"{s.skipped} already done earlier; {s.retries} retries; "
        f"tokens {tokens} (prompt {s.prompt_tokens}, completion {s.completion_tokens})"
        + (f"; {s.duplicates} duplicate entries described once" if s.duplicates else "")
    )
    if s.failures:
        console.print(f"[red]{len(s.failures)} failed[/] (also in failures.jsonl):")
        for f in s.failures[:50]:
            what = f"{f.source} [{f.style}/{f.language}]" if f.style else f.source
            console.print(f"  {what}: {f.reason}", markup=False, highlight=False)
        if len(s.failures) > 50:
            console.print(f"  ... and {len(s.failures) - 50} more")
