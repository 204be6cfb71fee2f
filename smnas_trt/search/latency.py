"""The search's links to the profiling layer (latency table, real-backend timing) and the predictor.

Four narrow functions: `time_arch` (export one arch and time it on the configured backend),
`add_timing` (put that timing into the run's table), `fit_predictor` / `load_predictor` (a predictor
with `predict(arch strings) -> (ms, uncertainty)` and `save(folder)`), plus `fastest_in_table` and
`copy_table` for the run directory's setup.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smnas_trt.search.config import LatencyConfig
from smnas_trt.search.tasks import TimeJob, TimeOutcome

if TYPE_CHECKING:
    # `predict(archs) -> (ms, uncertainty ms)` (half-width of the calibrated 90% interval) and `save(folder)`.
    from smnas_trt.predictors.predictor import LatencyPredictor as Predictor


# ---------------------------------------------------------------------------------------------- table
def copy_table(src: str | Path, dst: str | Path) -> None:
    """A consistent copy of an SQLite table (WAL included) through SQLite's backup API."""
    from smnas_trt.profiling.lut import LatencyTable

    LatencyTable.open(src).close()  # a clear error for a missing or non-table file
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def fastest_in_table(cfg: LatencyConfig, table: str | Path | None = None) -> tuple[float, str] | None:
    """(median ms, arch) of the fastest whole model timed at the config's scope, or None if there is none."""
    from smnas_trt.profiling.lut import read_model_records

    rows = read_model_records(table or cfg.lut, scope=cfg.scope, allow_foreign=True)
    if not rows:
        return None
    best = min(rows, key=lambda r: r.median_ms)
    return best.median_ms, best.arch


def add_timing(table: str | Path, outcome: TimeOutcome, cfg: LatencyConfig) -> None:
    """Add one measured whole model to the run's table (an (arch, scope) already there is kept)."""
    from smnas_trt.profiling.fingerprint import Fingerprint
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.profiling.timing import LatencyStats

    rec = outcome.record
    with LatencyTable.create(table, Fingerprint.from_json(rec["fingerprint"]),
                             allow_foreign=cfg.allow_foreign_device) as lut:
        lut.put_model(rec["arch"], rec["scope"], LatencyStats(**rec["stats"]), rec.get("extra") or {})


# ---------------------------------------------------------------------------------------------- timing
def time_arch(job: TimeJob) -> TimeOutcome:
    """Build the arch's `network` body, export it (except for the torch backend) and time it.

    Weights do not change latency, so the freshly initialised body is timed; the graph goes to
    `job.work_dir`. The outcome carries the row for the latency table and the backend's fingerprint.
    """
    from dataclasses import asdict

    from smnas_trt.errors import ProfilingError
    from smnas_trt.profiling.backends import get_backend
    from smnas_trt.profiling.profile import time_module
    from smnas_trt.profiling.timing import TimingConfig
    from smnas_trt.space import parse

    if job.scope != "network":
        raise ProfilingError(f"latency.scope: the search times the network scope only so far, not {job.scope!r}")
    opts: dict[str, Any] = {"threads": job.threads, "precision": job.precision, "batch": job.batch}
    if job.device is not None:
        opts["device"] = job.device
    backend = get_backend(job.backend, **opts)
    arch = parse(job.arch)
    body, inputs = arch_body(arch, job.batch, job.num_classes)
    work = Path(job.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    stats, extra = time_module(backend, body, inputs, work, job.arch, TimingConfig(**job.timing))
    stat_dict = asdict(stats)
    record = {"arch": job.arch, "scope": job.scope, "stats": stat_dict, "extra": extra,
              "fingerprint": backend.fingerprint().to_json()}
    return TimeOutcome(job.arch_id, float(stats.median_ms), stat_dict, record)


def arch_body(arch: Any, batch: int = 1, num_classes: int | None = None) -> tuple[Any, tuple[Any, ...]]:
    """(network body, example inputs) of a freshly built detector: what `time_module` times."""
    import torch

    from smnas_trt.models import build_detector
    from smnas_trt.models.body import DEFAULT_NUM_CLASSES, body_input_shape, network_body

    with torch.no_grad():
        model = build_detector(arch, num_classes or DEFAULT_NUM_CLASSES)
        return network_body(model, arch), (torch.zeros(body_input_shape(arch, batch)),)


# ---------------------------------------------------------------------------------------------- predictor
def fit_predictor(table: str | Path, cfg: LatencyConfig, base: Predictor | None = None) -> Predictor:
    """Fit the XGBoost predictor on the table's whole models at the config's scope.

    With `base` (a fitted predictor), refit with its settings on the table's current rows; otherwise
    defaults, with the table's module entries as features when it has any.
    """
    from smnas_trt.predictors.predictor import FitConfig, LatencyPredictor, load_training_data

    data = load_training_data(table, scope=cfg.scope, allow_foreign=cfg.allow_foreign_device)
    if isinstance(base, LatencyPredictor):
        predictor, _ = base.refit(data)
        return predictor
    defaults = {"num_classes": cfg.num_classes or FitConfig.num_classes, "use_lut": bool(data.module_ms),
                "folds": max(2, min(5, len(data.archs) // 4))}
    config = FitConfig(**{**defaults, **cfg.predictor_fit})
    predictor, _ = LatencyPredictor.fit(data, config)
    return predictor


def load_predictor(path: str | Path, cfg: LatencyConfig, table: str | Path | None = None) -> Predictor:
    """A saved predictor; refused if it was trained on another device than the table (unless allowed)."""
    from smnas_trt.predictors.predictor import LatencyPredictor
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(table or cfg.lut) as lut:
        fingerprint = lut.fingerprint
    return LatencyPredictor.load(path, fingerprint, allow_foreign=cfg.allow_foreign_device)


def check_device(cfg: LatencyConfig) -> None:
    """Refuse a table measured on another device/backend than the one this process would time on."""
    from smnas_trt.profiling.backends import get_backend
    from smnas_trt.profiling.lut import LatencyTable

    opts: dict[str, Any] = {"threads": cfg.threads, "precision": cfg.precision, "batch": cfg.batch}
    if cfg.device is not None:
        opts["device"] = cfg.device
    here = get_backend(cfg.backend, **opts).fingerprint()
    LatencyTable.open(cfg.lut, here, allow_foreign=cfg.allow_foreign_device).close()
