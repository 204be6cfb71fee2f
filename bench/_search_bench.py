"""Shared setup of the search benchmarks: scales, data, latency table, initial predictor, run summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smnas_trt.search.config import parse_search_config
from smnas_trt.space.config import BUILTIN_SPACES

BENCH_DIR = Path("/tmp/smnas-bench")

@dataclass(frozen=True)
class Scale:
    """Everything a benchmark scale fixes: space, generated data, table size, recipe and search shape.

    `rungs` is the multi-fidelity variant's successive halving (eta 3, one top-rung candidate per
    generation); the fixed-epoch variants train `per_gen` candidates per generation for `rungs[-1]` epochs.
    `cpu_budget_s` is each variant's training budget in CPU-seconds (all workers)."""

    space: str  # built-in name, or the name of a space YAML written under BENCH_DIR
    data: dict[str, int]  # generate_demo arguments ({}: the demo defaults)
    table_models: int
    table_modules: bool  # time module pieces too (LUT features); minutes to an hour
    rungs: tuple[int, ...]
    per_gen: int
    cpu_budget_s: float
    overrides: dict[str, Any] = field(default_factory=dict)


DEMO_RECIPE = {"training.batch_size": 8, "training.lr": 0.003, "training.warmup_iters": 100}

SCALES = {
    # Seconds per candidate; AP ~0.01, so only the trainings wasted over budget mean anything.
    "quick": Scale("tiny", {"n_train": 96, "n_val": 32, "size": 64}, 40, False, (1, 2, 3), 3, 120, {
        "training.max_train_images": 96, "training.batch_size": 8, "training.warmup_iters": 4, "training.lr": 0.01,
        "evaluation.max_images": 32}),
    # The demo space on the demo data (2,000 images at 160 px, models at 128-160 px), 8 epochs at the top
    # rung: the r18 FPN FCOS reference reaches AP 0.47 in 8 epochs (0.51 in 12); ~30-60 s of one core per
    # candidate-epoch on the 2-core benchmark machine, so each variant's 40 CPU-minutes buy ~6 full trainings.
    # Rungs 3/8, not 1/3/8: after one epoch all nine structures of a seed-0 run scored AP 0.000-0.029, so
    # a 1-epoch rung 0 ranked them by noise (README, "Search efficiency").
    "medium": Scale("demo", {"n_train": 2000, "n_val": 300, "size": 160}, 60, False, (3, 8), 2, 2400,
                    {**DEMO_RECIPE, "evaluation.max_images": 150, "latency.budget_ms": 8.0}),
}


def space_arg(scale: Scale) -> str:
    """What a search config's `space:` gets (every scale uses a built-in space)."""
    if scale.space not in BUILTIN_SPACES:
        raise ValueError(f"scale space {scale.space!r} is not a built-in space")
    return scale.space


def ensure_data(path: Path, scale: Scale) -> Path:
    from smnas_trt.data import generate_demo

    return generate_demo(path, seed=0, **scale.data)


def ensure_table(path: Path, scale: Scale, backend: str = "ort-cpu", threads: int = 1) -> Path:
    """A latency table of the scale's space from `smnas profile-lut`'s library call (kept if the file exists)."""
    from smnas_trt.profiling.cache import OnnxCache, default_onnx_cache
    from smnas_trt.profiling.profile import PIECE_KINDS, profile_lut
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.space import load_space

    space = space_arg(scale)
    if path.exists():
        return path
    tmp = path.with_name(path.stem + ".partial.db")
    # Without module entries the predictor uses analytic features only: minutes, not an hour.
    # What `smnas profile-lut` runs, with its default ONNX cache (exports are reused by a rerun).
    with OnnxCache(default_onnx_cache()) as cache:
        report = profile_lut(space=load_space(space), out=tmp, spec=BackendSpec(backend=backend, threads=threads),
                             models=scale.table_models, seed=1234, resume=tmp.exists(),
                             module_kinds=PIECE_KINDS if scale.table_modules else (), cache=cache)
    if report.interrupted:
        raise KeyboardInterrupt  # the partial table is kept; the next call resumes it
    print(f"  profiled {report.models_timed} models and {report.modules_timed} modules in "
          f"{report.elapsed_s:.0f} s ({len(report.failures)} failures)", flush=True)
    tmp.rename(path)
    return path


def fit_initial_predictor(table: Path, out: Path, raw: dict[str, Any]) -> Path:
    """Fit once and share: every variant starts from the same predictor."""
    from smnas_trt.search.latency import fit_predictor

    if not out.exists():
        lat = dict(raw["latency"])
        lat["lut"] = str(table)
        cfg = parse_search_config({**raw, "latency": {**lat, "budget_ms": 1, "predictor": None}})
        fit_predictor(table, cfg.latency).save(out)
    return out


def median_model_ms(table: Path, scope: str = "network") -> float:
    """A budget that splits the table's models in half: the gate has real work to do."""
    import statistics

    from smnas_trt.profiling.lut import read_model_records

    return statistics.median(r.median_ms for r in read_model_records(table, scope=scope, allow_foreign=True))


def summarise_run(run_dir: Path, cpu_budget_s: float | None = None) -> dict[str, Any]:
    """Figures of one search run, counting only trainings finished within `cpu_budget_s` CPU-seconds.

    Rung trainings are replayed in the order they finished, adding up their CPU-seconds; a candidate is on
    the counted front when its top rung finished within the budget (anytime comparison at equal compute)."""
    from smnas_trt.search import RunDir
    from smnas_trt.search.pareto import hypervolume_2d, pareto_front

    with RunDir.open(run_dir) as run:
        budget = run.config.latency.budget_ms
        cands = {c.arch_id: c for c in run.store.candidates()}
        rungs = sorted(run.store.rung_results(), key=lambda r: r.finished_at)
    spent = 0.0
    counted = []
    for r in rungs:
        if cpu_budget_s is not None and spent + (r.cpu_seconds or 0.0) > cpu_budget_s * 1.0001:
            break
        spent += r.cpu_seconds or 0.0
        counted.append(r)
    top_done = {r.arch_id for r in counted if cands[r.arch_id].status == "done" and cands[r.arch_id].rung == r.rung}
    pool = [cands[a] for a in top_done if cands[a].measured_ms is not None and cands[a].ap is not None
            and (cands[a].measured_ms or 0.0) <= budget]
    front = [pool[i] for i in pareto_front([c.point for c in pool])]
    over = [r for r in counted if (cands[r.arch_id].measured_ms or 0.0) > budget]
    return {
        "hypervolume": round(hypervolume_2d([c.point for c in front], (budget, 0.0)) / budget, 5),
        "front_size": len(front),
        "best_ap": round(max((c.ap or 0.0 for c in front), default=0.0), 4),
        "best_arch": max(front, key=lambda c: c.ap or 0.0).arch if front else None,
        "top_rung_models": len(top_done),
        "trainings": len(counted),
        "trainings_over_budget": len(over),
        "cpu_s": round(spent, 1),
        "cpu_s_all": round(sum(r.cpu_seconds or 0.0 for r in rungs), 1),
        "timed": sum(1 for c in cands.values() if c.measured_ms is not None),
        "skipped_over_budget": sum(1 for c in cands.values() if c.status == "over_budget"),
    }
