"""`smnas report --run DIR`: Pareto plot, Markdown tables of the front, and the predictor's error per generation.

Reads only the run store and the frozen config, so it works on a finished, a running or a killed run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from smnas_trt.fileio import atomic_path, atomic_write_text
from smnas_trt.search.engine import RunDir
from smnas_trt.search.pareto import Point, dominates, hypervolume_2d
from smnas_trt.search.store import Candidate, Generation, Reference, RungResult

REPORT_DIR = "report"
STAGE_COLOURS = {"structural": "tab:blue", "modular": "tab:green", "random": "tab:purple"}


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    pareto_png: Path
    rungs_png: Path
    predictor_png: Path
    front_md: Path
    report_md: Path


@dataclass(frozen=True)
class ReferenceVerdict:
    reference: Reference
    dominated_by: list[Candidate]  # front points at least as fast and as accurate, better in one


def reference_verdicts(front: list[Candidate], refs: list[Reference]) -> list[ReferenceVerdict]:
    out = []
    for r in refs:
        if r.measured_ms is None or r.ap is None:
            out.append(ReferenceVerdict(r, []))
            continue
        pt: Point = (r.measured_ms, r.ap)
        out.append(ReferenceVerdict(r, [c for c in front if dominates(c.point, pt)]))
    return out


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> ReportFiles:
    run = Path(run_dir)
    with RunDir.open(run, what="report: run") as handle:
        config, store = handle.config, handle.store
        cands = store.candidates()
        front = store.front()
        gens = store.generations()
        refs = store.references()
        rungs = store.rung_results()
    folder = Path(out_dir) if out_dir else run / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    budget = config.latency.budget_ms
    lat = config.latency
    files = ReportFiles(folder, folder / "pareto.png", folder / "rungs.png", folder / "predictor_error.png",
                        folder / "front.md", folder / "report.md")
    _plot_pareto(files.pareto_png, cands, front, refs, budget, f"{lat.backend} {lat.scope} {lat.precision}")
    _plot_rungs(files.rungs_png, cands, rungs)
    _plot_predictor(files.predictor_png, cands, gens)
    top_rung = {stage: len(config.stage(stage).rungs) - 1 for stage in ("structural", "modular", "random")}
    front_md = _front_table(front, top_rung)
    atomic_write_text(files.front_md, front_md)
    hv = hypervolume_2d([c.point for c in front], (budget, 0.0)) / budget
    lines = [
        f"# Search report: {config.name}", "",
        f"- run: `{run.resolve()}`",
        f"- space: `{config.space}`, strategy `{config.strategy}`, seed {config.seed}",
        f"- latency: budget {budget:g} ms, backend `{lat.backend}`, scope `{lat.scope}`, precision "
        f"`{lat.precision}`, batch {lat.batch}",
        f"- candidates: {len(cands)} chosen, {sum(c.status == 'done' for c in cands)} trained to the top rung and "
        f"timed, {sum(c.status == 'stopped' for c in cands)} stopped at a lower rung (successive halving), "
        f"{sum(c.status == 'over_budget' for c in cands)} measured over budget before training, "
        f"{sum(c.status == 'failed' for c in cands)} failed, "
        f"{sum(c.status in ('planned', 'timed', 'training', 'waiting', 'promoted', 'trained') for c in cands)} "
        f"unfinished",
        f"- training: {sum(r.cpu_seconds or 0.0 for r in rungs) / 60:.1f} CPU-minutes over {len(rungs)} rung "
        f"trainings",
        f"- trainings on over-budget candidates: {_wasted(cands, budget)}",
        f"- hypervolume (reference point: {budget:g} ms, AP 0; normalised by {budget:g} ms x 1 AP): {hv:.4f}",
        "", "![Pareto front](pareto.png) ![AP per rung](rungs.png)", "",
        "## Pareto front (measured latency, top-rung AP)", "", front_md,
    ]
    if refs:
        lines += ["## Reference detectors (same recipe and budget)", "",
                  "| reference | arch | AP | AP50 | measured ms | dominated by the front |",
                  "|---|---|---|---|---|---|"]
        for v in reference_verdicts(front, refs):
            r = v.reference
            verdict = ", ".join(c.arch_id for c in v.dominated_by) or "no"
            lines.append(f"| {r.name} | `{r.arch}` | {_f(r.ap)} | {_f(r.ap50)} | {_f(r.measured_ms, 2)} | {verdict} |")
        lines.append("")
    lines += ["## Generations and predictor error", "", "![Predictor error](predictor_error.png)", "",
              "| gen | stage | screened | over budget (predicted) | duplicates | trained | front | hypervolume | "
              "predictor MAPE on its candidates |", "|---|---|---|---|---|---|---|---|---|"]
    for g in gens:
        mape = "-" if g.predictor_mape is None else f"{100 * g.predictor_mape:.1f}%"
        lines.append(f"| {g.generation} | {g.stage} | {g.n_screened} | {g.n_over_budget} | {g.n_duplicate} | "
                     f"{g.n_trained if g.n_trained is not None else '-'} | {g.front_size or '-'} | "
                     f"{_f(g.hypervolume)} | {mape} |")
    atomic_write_text(files.report_md, "\n".join(lines) + "\n")
    return files


def _wasted(cands: list[Candidate], budget: float) -> int:
    return sum(1 for c in cands if c.train_seconds is not None and c.measured_ms is not None
               and c.measured_ms > budget)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _front_table(front: list[Candidate], top_rung: dict[str, int]) -> str:
    rows = ["| # | id | arch | AP | AP50 | measured ms | predicted ms (± unc.) | error | stage | gen | rung | "
            "epochs | train s | checkpoint |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(front):
        err = "-"
        if c.predicted_ms is not None and c.measured_ms:
            err = f"{100 * (c.predicted_ms - c.measured_ms) / c.measured_ms:+.1f}%"
        pred = "-" if c.predicted_ms is None else f"{c.predicted_ms:.2f} ± {c.uncertainty_ms or 0:.2f}"
        rung = "-" if c.rung is None else f"{c.rung} of 0-{top_rung.get(c.stage, c.rung)}"
        rows.append(f"| {i + 1} | {c.arch_id} | `{c.arch}` | {_f(c.ap)} | {_f(c.ap50)} | {_f(c.measured_ms, 2)} | "
                    f"{pred} | {err} | {c.stage} | {c.generation} | {rung} | {c.epochs or '-'} | "
                    f"{_f(c.train_seconds, 0)} | `{c.checkpoint or '-'}` |")
    if not front:
        rows.append("| - | (no candidate trained to the top rung within the budget yet) | | | | | | | | | | | | |")
    return "\n".join(rows) + "\n"


def _plot_pareto(path: Path, cands: list[Candidate], front: list[Candidate], refs: list[Reference],
                 budget: float, latency_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    done = [c for c in cands if c.measured_ms is not None and c.ap is not None]
    for stage, colour in STAGE_COLOURS.items():
        pts = [c for c in done if c.stage == stage]
        if pts:
            ax.scatter([c.point[0] for c in pts], [c.point[1] for c in pts], s=22, c=colour, alpha=0.7,
                       label=f"{stage} ({len(pts)})")
    timed_only = [c for c in cands if c.status == "over_budget" and c.measured_ms is not None]
    if timed_only:
        ax.scatter([c.measured_ms or 0.0 for c in timed_only], [0.0] * len(timed_only), marker="x", c="grey",
                   label=f"measured over budget, not trained ({len(timed_only)})")
    if front:
        xs = [c.measured_ms or 0.0 for c in front]
        ys = [c.ap or 0.0 for c in front]
        ax.step(xs, ys, where="post", c="black", lw=1.2)
        ax.scatter(xs, ys, s=60, facecolors="none", edgecolors="black", label=f"front ({len(front)})")
    for r in refs:
        if r.measured_ms is not None and r.ap is not None:
            ax.scatter([r.measured_ms], [r.ap], marker="*", s=160, c="tab:red", zorder=5)
            ax.annotate(r.name, (r.measured_ms, r.ap), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(budget, ls="--", c="tab:red", lw=1, label=f"budget {budget:g} ms")
    ax.set_xlabel(f"measured latency (ms, {latency_label})")
    ax.set_ylabel("COCO AP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _plot_rungs(path: Path, cands: list[Candidate], rungs: list[RungResult]) -> None:
    """AP after each rung's epochs, one line per candidate; promoted steps and top-rung candidates stand out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    by_arch: dict[str, list[RungResult]] = {}
    for r in rungs:
        by_arch.setdefault(r.arch_id, []).append(r)
    stage_of = {c.arch_id: c.stage for c in cands}
    labelled: set[str] = set()
    for arch_id, rs in by_arch.items():
        rs = sorted(rs, key=lambda r: r.rung)
        top = rs[-1].decision == "top"
        colour = STAGE_COLOURS.get(stage_of.get(arch_id, ""), "grey")
        xs, ys = [r.epochs for r in rs], [r.ap or 0.0 for r in rs]
        ax.plot(xs, ys, "-", c=colour, alpha=0.9 if top else 0.35, lw=1.8 if top else 0.8)
        for r in rs:
            kind = "promoted" if r.decision in ("promoted", "top") else "stopped"
            label = None if kind in labelled else {"promoted": "promoted / top rung", "stopped": "stopped"}[kind]
            labelled.add(kind)
            ax.scatter([r.epochs], [r.ap or 0.0], s=36 if kind == "promoted" else 14, c=colour,
                       edgecolors="black" if kind == "promoted" else "none", zorder=3, label=label)
    for stage, colour in STAGE_COLOURS.items():
        if any(stage_of.get(a) == stage for a in by_arch):
            ax.plot([], [], c=colour, label=stage)
    ax.set_xlabel("epochs trained (rungs of successive halving)")
    ax.set_ylabel("COCO AP at the rung")
    ax.grid(alpha=0.3)
    if by_arch:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no rung finished yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _plot_predictor(path: Path, cands: list[Candidate], gens: list[Generation]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    pts = [(c.generation, 100 * (c.predicted_ms - c.measured_ms) / c.measured_ms) for c in cands
           if c.predicted_ms is not None and c.measured_ms]
    if pts:
        ax.scatter([g for g, _ in pts], [e for _, e in pts], s=16, alpha=0.6, label="candidate (signed error)")
    by_gen: dict[int, list[float]] = {}
    for g, e in pts:
        by_gen.setdefault(g, []).append(abs(e))
    if by_gen:
        gs = sorted(by_gen)
        ax.plot(gs, [statistics.fmean(by_gen[g]) for g in gs], "o-", c="black", label="MAPE")
    ax.axhline(0, c="grey", lw=0.8)
    ax.axhspan(-10, 10, color="tab:green", alpha=0.08, label="±10%")
    ax.set_xlabel("generation")
    ax.set_ylabel("predicted vs measured latency (%)")
    ax.set_xticks([g.generation for g in gens] or [0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
