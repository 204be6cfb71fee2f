"""Shared setup of the search benchmarks: data, latency table, initial predictor, run summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smnas_trt.search import RunStore
from smnas_trt.search.config import parse_search_config
from smnas_trt.space.config import BUILTIN_SPACES

QUICK_SPACE = Path("/tmp/smnas-bench/space_tiny.yaml")


def write_quick_space(path: Path = QUICK_SPACE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != BUILTIN_SPACES["tiny"].read_text():
        path.write_text(BUILTIN_SPACES["tiny"].read_text())
    return path


def ensure_data(path: Path, quick: bool) -> Path:
    from smnas_trt.data import generate_demo

    if quick:
        write_quick_space()
        return generate_demo(path, n_train=96, n_val=32, size=64, seed=0)
    return generate_demo(path, seed=0)


def ensure_table(path: Path, space: str, quick: bool, backend: str = "ort-cpu", threads: int = 1,
                 models: int | None = None) -> Path:
    """A latency table of the space from `smnas profile-lut`'s library call (kept if the file exists)."""
    import smnas_trt.models.body as body_pkg
    from smnas_trt.profiling.profile import profile_lut
    from smnas_trt.search.latency import arch_body
    from smnas_trt.space import load_space

    if quick:
        write_quick_space()
    if path.exists():
        return path
    tmp = path.with_name(path.stem + ".partial.db")
    # Quick runs skip module entries (the predictor then uses analytic features only): minutes, not an hour.
    report = profile_lut(space=load_space(space), out=tmp, module_pieces=None if quick else body_pkg.module_pieces,
                         network_body=arch_body, backend_name=backend,
                         backend_opts={"threads": threads}, models=models or (40 if quick else 200), seed=1234,
                         resume=True)
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
