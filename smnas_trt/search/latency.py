"""The search's links to the latency table and the predictor (the timing jobs themselves are in `tasks.py`).

`add_timing` (put a timing into the run's table, in the table's machine state), `fit_predictor` /
`load_predictor`, plus `fastest_in_table`, `table_num_classes`, `copy_table` and `check_device` for
the run directory's setup.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from smnas_trt.search.config import LatencyConfig
from smnas_trt.search.tasks import TimeOutcome

if TYPE_CHECKING:
    # `predict(archs, drift) -> (ms, uncertainty ms)` (half-width of the calibrated 90% interval) and `save(folder)`.
    from smnas_trt.predictors.predictor import LatencyPredictor as Predictor
    from smnas_trt.profiling.drift import Drift


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


def table_num_classes(cfg: LatencyConfig, table: str | Path | None = None) -> int:
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(table or cfg.lut) as lut:
        return cfg.num_classes or lut.num_classes


def add_timing(table: str | Path, outcome: TimeOutcome, cfg: LatencyConfig, drift: Drift | None = None) -> None:
    """Add one measured whole model to the run's table (an (arch, scope) already there is kept).

    With the run's drift the row is stored in the table's machine state (measured / drift ratio), so the
    table stays one state and the predictor refitted on it predicts that state; the measured figure and
    the ratio are kept in the row's extra fields."""
    from smnas_trt.profiling.fingerprint import Fingerprint
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.profiling.timing import LatencyStats

    rec = outcome.record
    stats = LatencyStats.from_dict(rec["stats"])
    extra = dict(rec.get("extra") or {})
    if drift is not None:
        stats = stats.scaled(1.0 / drift.ratio)
        extra.update(measured_ms=outcome.ms, drift=drift.ratio)
    with LatencyTable.create(table, Fingerprint.from_json(rec["fingerprint"]),
                             allow_foreign=cfg.allow_foreign_device) as lut:
        lut.put_model(rec["arch"], rec["scope"], stats, extra)


# ---------------------------------------------------------------------------------------------- predictor
def fit_predictor(table: str | Path, cfg: LatencyConfig, base: Predictor | None = None) -> Predictor:
    """Fit the XGBoost predictor on the table's whole models at the config's scope.

    With `base` (a fitted predictor), refit with its settings on the table's current rows; otherwise the
    config's `predictor_fit` settings, with defaults from the table (its classes; its module entries as
    features when it has any) for the fields the config leaves unset.
    """
    from smnas_trt.predictors.predictor import LatencyPredictor, load_training_data

    data = load_training_data(table, scope=cfg.scope, allow_foreign=cfg.allow_foreign_device)
    if isinstance(base, LatencyPredictor):
        predictor, _ = base.refit(data)
        return predictor
    fit = cfg.predictor_fit
    defaults = {"num_classes": table_num_classes(cfg, table), "use_lut": bool(data.module_ms),
                "folds": max(2, min(5, len(data.archs) // 4))}
    config = fit.model_copy(update={k: v for k, v in defaults.items() if k not in fit.model_fields_set})
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
    from smnas_trt.profiling.lut import LatencyTable

    here = cfg.spec().build().fingerprint()
    LatencyTable.open(cfg.lut, here, allow_foreign=cfg.allow_foreign_device).close()
