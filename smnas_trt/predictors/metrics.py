"""Accuracy metrics of latency predictions and the two baselines the predictor is reported against."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau


def accuracy(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Share within +-5% / +-10% (of the measured value), MAPE (%), RMSE (ms), Kendall tau.

    Rows without a prediction (NaN, e.g. the LUT sum when the table lacks a piece) are left out and
    counted in `missing`; shares are of the rows that have one.
    """
    measured = np.asarray(measured, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    ok = np.isfinite(predicted) & np.isfinite(measured)
    m, p = measured[ok], predicted[ok]
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "missing": int((~ok).sum()), "within_5": math.nan, "within_10": math.nan, "mape": math.nan,
                "rmse_ms": math.nan, "kendall_tau": math.nan}
    rel = np.abs(p - m) / m
    tau = float(kendalltau(m, p).statistic) if n > 1 else math.nan
    return {
        "n": n,
        "missing": int((~ok).sum()),
        "within_5": float(np.mean(rel <= 0.05)),
        "within_10": float(np.mean(rel <= 0.10)),
        "mape": float(100 * rel.mean()),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "kendall_tau": tau,
    }


def coverage(measured: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of rows whose measured value lies inside [lower, upper]."""
    measured = np.asarray(measured, dtype=np.float64)
    inside = (measured >= np.asarray(lower)) & (measured <= np.asarray(upper))
    return float(inside.mean()) if len(measured) else math.nan


@dataclass(frozen=True)
class FlopsLinear:
    """Baseline: latency = slope * FLOPs + intercept, least squares on the training rows."""

    slope: float
    intercept: float

    @classmethod
    def fit(cls, flops: np.ndarray, ms: np.ndarray) -> FlopsLinear:
        design = np.stack([np.asarray(flops, dtype=np.float64), np.ones(len(flops))], axis=1)
        (slope, intercept), *_ = np.linalg.lstsq(design, np.asarray(ms, dtype=np.float64), rcond=None)
        return cls(float(slope), float(intercept))

    def predict(self, flops: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(flops, dtype=np.float64) + self.intercept

    def to_dict(self) -> dict[str, float]:
        return {"slope_ms_per_flop": self.slope, "intercept_ms": self.intercept}
