"""Live view of a search: a progress bar for the generation in flight and one summary line per generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from smnas_trt.search.store import Candidate, Generation


class SearchProgress:
    """Context manager; every method is a no-op output-wise when disabled (notes still go nowhere)."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> SearchProgress:
        if self.enabled:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def start_generation(self, g: int, stage: str, slots: int) -> None:
        self._stage = f"gen {g} {stage}"
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(f"{self._stage}: planning", total=slots)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"  {text}", highlight=False)

    def candidate_started(self, arch: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self._stage}: training {arch}")

    def candidate_finished(self, arch: str, outcome: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
        self.note(f"{arch}: {outcome}")

    def generation_done(self, gen: Generation, cands: Sequence[Candidate]) -> None:
        if not self.enabled:
            return
        over_measured = sum(c.status == "over_budget" for c in cands)
        failed = sum(c.status == "failed" for c in cands)
        mape = "-" if gen.predictor_mape is None else f"{100 * gen.predictor_mape:.1f}%"
        self.console.print(
            f"[bold]gen {gen.generation} {gen.stage}[/]: screened {gen.n_screened} "
            f"(over budget {gen.n_over_budget}, duplicates {gen.n_duplicate}), "
            f"timed over budget {over_measured}, trained {gen.n_trained}, failed {failed}, "
            f"front {gen.front_size}, hypervolume {gen.hypervolume or 0:.4f}, predictor MAPE {mape}",
            highlight=False)


def generations_table(gens: Sequence[Generation]) -> Table:
    table = Table(title="search generations")
    for col in ("gen", "stage", "screened", "over budget", "dup", "trained", "front", "hypervolume", "pred. MAPE"):
        table.add_column(col, justify="right" if col not in ("stage",) else "left")
    for g in gens:
        table.add_row(str(g.generation), g.stage, str(g.n_screened), str(g.n_over_budget), str(g.n_duplicate),
                      str(g.n_trained or 0), str(g.front_size or 0), f"{g.hypervolume or 0:.4f}",
                      "-" if g.predictor_mape is None else f"{100 * g.predictor_mape:.1f}%")
    return table
