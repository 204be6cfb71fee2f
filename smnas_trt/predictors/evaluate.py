"""Fit-and-report and evaluate-on-a-table: what `smnas predictor fit` / `eval` run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smnas_trt.errors import PredictorError
from smnas_trt.predictors.metrics import accuracy, coverage
from smnas_trt.predictors.predictor import FitConfig, FitResult, LatencyPredictor, TrainingData, load_training_data
from smnas_trt.predictors.report import predictions_table, write_report

CV_DIR = "cv"  # inside the predictor folder: out-of-fold predictions of the fit


def fit_predictor(lut: str | Path, out: str | Path, config: FitConfig | None = None, scope: str = "network",
                  progress: Callable[[str], None] | None = None
                  ) -> tuple[LatencyPredictor, FitResult, dict[str, Any]]:
    """Fit on a table's whole-model rows, save the predictor to `out`, and write the CV report into `out/cv/`.

    The table may come from any device: fitting offline (on a laptop, a table measured on a GPU box) is a
    real use. The predictor records the table's fingerprint and serves that device only: evaluation
    and the search refuse tables measured elsewhere unless told to allow them (see `device_note`).
    """
    data = load_training_data(lut, scope)
    predictor, result = LatencyPredictor.fit(data, config, progress)
    predictor.save(out)
    preds = predictions_table(result.archs, result.measured, result.predicted, result.lower, result.upper,
                              result.lut_sum, result.flops_linear, result.fold)
    title = f"{result.config.folds}-fold CV on {len(result.archs)} models of {Path(lut).name} ({scope})"
    report = write_report(Path(out) / CV_DIR, preds, result.config.interval, title,
                          {"fit_seconds": result.seconds, "device": _device(data),
                           "errors": {"repeat_train_table": {"median": data.repeat_median, "p90": data.repeat_p90}}})
    return predictor, result, report


def evaluate_on_table(predictor: LatencyPredictor, lut: str | Path, out: str | Path | None = None,
                      scope: str | None = None, allow_foreign: bool = False, exclude: set[str] | None = None
                      ) -> dict[str, Any]:
    """Score `predictor` on a table's whole-model timings (same device fingerprint unless allow_foreign).

    The table's module entries join the predictor's own for the LUT features and the LUT-sum baseline;
    the FLOPs baseline uses the coefficients fitted on the predictor's training set. Archs in
    `exclude` (e.g. the training set) are skipped. Writes predictions.csv, report.json and
    scatter.png into `out` when given; returns the report.
    """
    scope = scope or predictor.meta.scope
    data = load_training_data(lut, scope, allow_foreign=True)
    predictor.check_fingerprint(data.fingerprint, what=f"latency table {lut}", allow_foreign=allow_foreign)
    keep = [i for i, a in enumerate(data.archs) if a not in (exclude or set())]
    if not keep:
        raise PredictorError(f"{lut}: no {scope} model timings to evaluate on")
    anchors_ms, repeat = data.anchors_ms, {"median": data.repeat_median, "p90": data.repeat_p90}
    data = TrainingData([data.archs[i] for i in keep], data.ms[keep], data.fingerprint, data.module_ms, scope,
                        data.source)
    if allow_foreign:
        predictor.add_module_latencies(data.module_ms, None)
    else:
        predictor.add_module_latencies(data.module_ms, data.fingerprint)
    # The table was timed in another run than the predictor's: its anchors say how the machine state moved.
    drift = predictor.drift_to(anchors_ms)
    raw, raw_lower, raw_upper = predictor.predict_interval(data.archs)
    predicted, lower, upper = predictor.predict_interval(data.archs, drift)
    X = predictor.features(data.archs)
    names = predictor.featurizer.names
    lut_sum = X[:, names.index("lut_total_ms")] if "lut_total_ms" in names else np.full(len(X), np.nan)
    flops_linear = predictor.flops_baseline.predict(X[:, names.index("total_flops")])
    preds = predictions_table(data.archs, data.ms, predicted, lower, upper, lut_sum, flops_linear)
    title = f"held-out: {len(data.archs)} models of {Path(lut).name} ({scope})"
    trained = predictor.meta.table_repeat
    extra = {"device": _device(data), "predictor_trained_on": predictor.meta.n_train,
             "predictor_raw": {**accuracy(data.ms, raw), "coverage": coverage(data.ms, raw_lower, raw_upper)},
             "errors": {"repeat_eval_table": repeat, "repeat_train_table": trained,
                        "drift": drift.to_dict() if drift is not None else None,
                        "drift_note": drift.line("the evaluated table") if drift is not None else
                        f"drift cannot be measured: {Path(lut).name} or the predictor's table has no anchors "
                        "(add them with smnas profile-lut --resume --anchors)"}}
    if out is None:
        from smnas_trt.predictors.report import compute_report

        return compute_report(preds, predictor.interval, {"title": title, **extra})
    return write_report(out, preds, predictor.interval, title, extra)


def device_note(predictor: LatencyPredictor, lut: str | Path) -> str:
    """One line for `predictor fit`: which device the table was measured on, and what that means."""
    fp = predictor.fingerprint
    device = fp.describe() if fp else "an unknown device (the table has no fingerprint)"
    return (f"{lut} was measured on {device}; the predictor serves that device only (predictor eval refuses "
            "tables measured elsewhere unless --allow-foreign-device, the search unless latency.allow_foreign_device)")


def _device(data: TrainingData) -> str:
    return data.fingerprint.describe() if data.fingerprint else "unknown"
