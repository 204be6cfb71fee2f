"""Terminal output of `smnas deploy`: one line per stage with time and size, a final table, how to run it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from smnas_trt.deploy.deployer import DeployResult, DeployTarget


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


class StagePrinter:
    """Prints `deploy_models` progress: a header per model, then `stage  detail  time  size` lines."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total

    def model(self, index: int, target: DeployTarget) -> None:
        self.console.print(f"\n[bold][{index + 1}/{self.total}] {target.arch_id}[/]  {target.arch}", highlight=False)

    def __call__(self, stage: str, detail: str, seconds: float | None, size: int | None) -> None:
        style = "red" if stage == "error" else "cyan"
        timing = "" if seconds is None else f"{seconds:6.1f} s"
        self.console.print(f"  [{style}]{stage:<10}[/] {detail}  [dim]{timing}  {human_size(size)}[/]",
                           highlight=False, soft_wrap=True)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def deploy_table(result: DeployResult, wide: bool = True) -> Table:
    """The final table; `wide=False` leaves out the arch strings and sizes (they are in the lines above)."""
    table = Table(title=f"Deployed to {result.out} in {result.seconds:.0f} s")
    table.add_column("id", no_wrap=True)
    if wide:
        table.add_column("arch", overflow="fold", min_width=24)
    for column in ("status", "AP", "net ms", "e2e ms", "pred ms", "match", "Δscore", *(["size"] if wide else [])):
        table.add_column(column, justify="left" if column == "status" else "right", no_wrap=True)
    for m in result.models:
        if m.manifest is None:
            table.add_row(*([m.arch_id, m.arch] if wide else [m.arch_id]), "[red]error[/]")
            continue
        man = m.manifest
        lat, ver, search = man.latency, man.verification, man.latency.search
        predicted = "-" if search is None or search.predicted_ms is None else \
            f"{search.predicted_ms:.2f}" + ("" if search.comparable else "*")
        status = "[green]ok[/]" if m.status == "ok" else "[red]FAILED[/]"
        row = [m.arch_id, *([m.arch] if wide else []), status, _fmt(man.ap, ".3f"),
               _fmt(lat.network.median_ms if lat.network else None, ".2f"),
               _fmt(lat.end2end.median_ms if lat.end2end else None, ".2f"), predicted,
               _fmt(ver.match_share_iou_0_99, ".0%"), _fmt(ver.max_score_diff, ".0e")]
        if wide:
            row.append(human_size(man.size_bytes()))
        table.add_row(*row)
    return table


def print_summary(console: Console, result: DeployResult) -> None:
    console.print()
    console.print(deploy_table(result, wide=console.width >= 120))
    searches = [s for m in result.models if m.manifest and (s := m.manifest.latency.search)]
    scopes = sorted({s.scope or "?" for s in searches if s.predicted_ms is not None})
    if scopes:
        console.print(f"[dim]pred ms: the search's predicted {'/'.join(scopes)} latency[/]")
    if any(s.comparable is False for s in searches):
        console.print("[dim]* predicted on the search's backend/precision, not comparable with these figures[/]")
    console.print("[dim]match: PyTorch boxes matched at IoU >= 0.99; Δscore: largest score difference[/]")
    console.print(f"table: {result.index_md}", highlight=False)
    ok = [m for m in result.models if m.status == "ok" and m.folder is not None]
    if ok:
        first = ok[0].folder
        console.print("\nRun a model:", highlight=False)
        console.print(f"  smnas predict --model {first} IMAGE... --out predictions/", highlight=False, soft_wrap=True)
        console.print(f"  python -c \"from smnas_trt.deploy import Detector; "
                      f"print(Detector.load('{first}').predict('IMAGE'))\"", highlight=False, soft_wrap=True)
    for m in result.failed:
        reason = m.error or "; ".join(m.manifest.verification.failures if m.manifest else [])
        console.print(Text.assemble(("failed:", "red"), f" {m.arch_id}: {reason}"), highlight=False, soft_wrap=True)
