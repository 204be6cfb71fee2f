"""Shared setup of the search benchmarks: scales, data, latency table, initial predictor, run summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smnas_trt.search import RunStore
from smnas_trt.search.config import parse_search_config
from smnas_trt.space.config import BUILTIN_SPACES

BENCH_DIR = Path("/tmp/smnas-bench")

# One-stage detectors at 96x96 on digits rendered at 128 px: a candidate trains in 0.5-2 minutes on 2 cores to
# AP 0.01-0.08 (measured), enough spread between models for fronts to differ while three searches fit in an hour.
SMALL_SPACE_YAML = """\
name: small
sizes: [96x96]
backbones: [resnet18, resnet34, mobilenetv2]
necks: [none:C4, fpn:P3-P5, fpn:P3-P6]
heads: [fcos, retina]
base_channels: [8, 16, 24]
blocks: [5, 15]
doublings: 3
mobilenet_widths: [0.25, 0.35, 0.5]
fpn_channels: [32, 48, 64]
dense_depths: [1, 2]
dense_widths: [32, 48, 64]
fc_widths: [64]
defaults: {base: 16, fpn_channels: 48, dense_depth: 2, dense_width: 48, fc_width: 64, mobilenet_width: 0.35}
"""


@dataclass(frozen=True)
class Scale:
    """Everything a benchmark scale fixes: space, generated data, table size, recipe and search shape."""

    space: str  # built-in name, or the name of a space YAML written under BENCH_DIR
    data: dict[str, int]  # generate_demo arguments ({}: the demo defaults)
    table_models: int
    table_modules: bool  # time module pieces too (LUT features); minutes to an hour
    generations: int
    per_gen: int
    overrides: dict[str, Any] = field(default_factory=dict)


SCALES = {
    # Seconds per candidate; AP ~0.01, so only the trainings wasted over budget mean anything.
    "quick": Scale("tiny", {"n_train": 96, "n_val": 32, "size": 64}, 40, False, 3, 3, {
        "training.max_train_images": 96, "training.batch_size": 8, "training.warmup_iters": 4, "training.lr": 0.01,
        "evaluation.max_images": 32, "structural.epochs": 1, "modular.epochs": 1}),
    # About a minute per candidate, AP 0.01-0.08: hypervolumes worth comparing (one seed: read with care).
    "small": Scale("small", {"n_train": 1000, "n_val": 200, "size": 128}, 60, False, 3, 3, {
        "training.max_train_images": 1000, "training.batch_size": 8, "training.warmup_iters": 50,
        "training.lr": 0.003, "evaluation.max_images": 200, "structural.epochs": 4, "modular.epochs": 4}),
    # configs/search_demo.yaml on the demo space and data: hours on 2 cores.
    "full": Scale("demo", {}, 200, True, 4, 3),
}


def space_arg(scale: Scale) -> str:
    """What a search config's `space:` gets: a built-in name, or the path of the bench's own YAML."""
    if scale.space in BUILTIN_SPACES:
        return scale.space
    path = BENCH_DIR / f"space_{scale.space}.yaml"
    text = {"small": SMALL_SPACE_YAML}[scale.space]
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


def ensure_data(path: Path, scale: Scale) -> Path:
    from smnas_trt.data import generate_demo

    return generate_demo(path, seed=0, **scale.data)


def ensure_table(path: Path, scale: Scale, backend: str = "ort-cpu", threads: int = 1) -> Path:
    """A latency table of the scale's space from `smnas profile-lut`'s library call (kept if the file exists)."""
    import smnas_trt.models.body as body_pkg
    from smnas_trt.profiling.profile import profile_lut
    from smnas_trt.search.latency import arch_body
    from smnas_trt.space import load_space

    space = space_arg(scale)
    if path.exists():
        return path
    tmp = path.with_name(path.stem + ".partial.db")
    # Without module entries the predictor uses analytic features only: minutes, not an hour.
    report = profile_lut(space=load_space(space), out=tmp, module_pieces=body_pkg.module_pieces if scale.table_modules
                         else None, network_body=arch_body, backend_name=backend, backend_opts={"threads": threads},
                         models=scale.table_models, seed=1234, resume=True)
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


def summarise_run(run_dir: Path) -> dict[str, Any]:
    from smnas_trt.search import load_frozen_config
    from smnas_trt.search.pareto import hypervolume_2d

    cfg = load_frozen_config(run_dir)
    budget = cfg.latency.budget_ms
    store = RunStore(run_dir / "run.db", readonly=True)
    try:
        cands = store.candidates()
        front = store.front()
    finally:
        store.close()
    trained = [c for c in cands if c.train_seconds is not None]
    return {
        "hypervolume": round(hypervolume_2d([c.point for c in front], (budget, 0.0)) / budget, 5),
        "front_size": len(front),
        "best_ap": round(max((c.ap or 0.0 for c in front), default=0.0), 4),
        "trained": len(trained),
        "trained_over_budget": sum(1 for c in trained if c.measured_ms is not None and c.measured_ms > budget),
        "timed": sum(1 for c in cands if c.measured_ms is not None),
        "skipped_over_budget": sum(1 for c in cands if c.status == "over_budget"),
        "train_seconds": round(sum(c.train_seconds or 0.0 for c in trained), 1),
    }
