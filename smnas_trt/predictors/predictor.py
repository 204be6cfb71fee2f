"""The latency predictor: XGBoost on log latency over an additive prior, with a calibrated interval.

Model, for features x of an arch (see `features.py`) and measured latency t:
- prior(x): a fixed cost plus non-negative costs per FLOP and per activation byte of each piece
  (stem, stages, neck, heads), per normalised byte, per layer and per pooled RoI byte, fitted by
  least squares on relative error. Latency on one stream of work is a sum over layers, so this
  additive form fits and extrapolates where trees alone cannot (on ort-cpu with one thread it
  alone lands within ~5% MAPE; a log-linear trend on totals was ~25%);
- mean(x): XGBoost regression trees on the residual log t - log prior(x); prediction
  prior(x) * exp(mean(x));
- scale(x): a small XGBoost model of log |residual|, fitted on out-of-fold residuals (K-fold CV);
- interval: prediction * exp(+-q * scale(x)) where q is the split-conformal quantile of the
  out-of-fold normalised residuals |r| / scale, so the interval covers the requested share
  (default 90%) of architectures like the training ones. `predict` returns the half-width in ms
  as the uncertainty.

Persistence: a folder with XGBoost's own UBJSON model files, the table's module entries it used
(JSON) and `predictor.json` (format and feature-schema version, feature names, device fingerprint,
backend, precision, scope, training-set size, CV metrics, conformal quantile, prior and baseline
coefficients, SHA-256 of every file; its schema is `PredictorMeta`). Written atomically; never pickled.
Loading checks every field and, when given one, the device fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, TypeGuard

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from smnas_trt.errors import ForeignDeviceError, PredictorError, first_line, short_repr
from smnas_trt.fileio import StoredRecord, atomic_dir, atomic_write_bytes, atomic_write_json
from smnas_trt.predictors.features import SCHEMA_VERSION, FeatureConfig, Featurizer, feature_names
from smnas_trt.predictors.metrics import FlopsLinear, accuracy, coverage
from smnas_trt.profiling.drift import Drift, drift_against
from smnas_trt.profiling.fingerprint import Fingerprint, FingerprintRecord
from smnas_trt.space.arch import Arch
from smnas_trt.space.config import pydantic_error_line

FORMAT = "smnas-latency-predictor"
FORMAT_VERSION = 2  # 2: additive prior
META_FILE = "predictor.json"
MEAN_FILE = "mean.ubj"
SCALE_FILE = "scale.ubj"
MODULES_FILE = "modules.json"
PRIOR_FEATURES = (
    "stem_flops", "stage1_flops", "stage2_flops", "stage3_flops", "stage4_flops", "neck_flops", "dense_head_flops",
    "rpn_flops", "roi_flops", "stage1_act_bytes", "stage2_act_bytes", "stage3_act_bytes", "stage4_act_bytes",
    "neck_act_bytes", "dense_head_act_bytes", "rpn_act_bytes", "total_act_bytes", "total_norm_bytes", "total_layers",
    "roi_pooled_bytes",
)
PRIOR_FLOOR_MS = 1e-3  # the prior is clipped here before its log (all-zero coefficients are possible)
MIN_TRAIN = 10
MAX_THREADS = 1024
RESIDUAL_FLOOR = 1e-4  # log-space floor of |residual| for the scale model (0.01%)

# Small grid for `FitConfig.search`: (max_depth, learning_rate, rounds, min_child_weight).
SEARCH_GRID = ((2, 0.1, 400, 1.0), (3, 0.08, 300, 2.0), (4, 0.08, 300, 2.0), (4, 0.04, 600, 2.0),
               (6, 0.05, 300, 3.0), (3, 0.15, 150, 1.0))


class FitConfig(BaseModel):
    """Fitting settings. Defaults are what the accuracy benchmark uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folds: int = Field(5, ge=2)  # K-fold CV for out-of-fold predictions (metrics, interval calibration)
    seed: int = 0
    # Over the additive prior the trees only correct residuals: 150 rounds score as well as 300
    # on the accuracy benchmark and halve the prediction cost.
    rounds: int = Field(150, ge=1)
    max_depth: int = Field(3, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    min_child_weight: float = Field(2.0, ge=0)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    scale_rounds: int = Field(60, ge=1)
    scale_depth: int = Field(2, ge=1)
    interval: float = Field(0.9, ge=0.5, lt=1)  # coverage of the prediction interval
    search: bool = False  # pick tree settings from SEARCH_GRID by CV MAPE
    threads: int = Field(2, ge=1, le=MAX_THREADS)  # XGBoost takes nthread as a C int
    use_lut: bool = True  # latency-table sum features
    num_classes: int = Field(81, ge=2)  # classes of the timed detectors (profile-lut's --num-classes)

    def xgb_params(self) -> dict[str, Any]:
        return {"objective": "reg:squarederror", "max_depth": self.max_depth, "eta": self.learning_rate,
                "min_child_weight": self.min_child_weight, "subsample": self.subsample,
                "colsample_bytree": self.colsample_bytree, "lambda": self.reg_lambda, "tree_method": "hist",
                "nthread": self.threads, "seed": self.seed}

    def scale_params(self) -> dict[str, Any]:
        return {"objective": "reg:squarederror", "max_depth": self.scale_depth, "eta": 0.1, "min_child_weight": 3.0,
                "subsample": 0.8, "tree_method": "hist", "nthread": self.threads, "seed": self.seed + 1}


class _Meta(StoredRecord):
    """A predictor-metadata record (the CV metrics hold more figures than are read back, kept as written).
    Frozen: a predictor's metadata changes only by a new fit."""

    model_config = ConfigDict(frozen=True)


class Prior(_Meta):
    """The additive prior: a fixed cost, then one non-negative cost per unit of each feature."""

    kind: str = "additive"
    features: list[str]
    coefficients: list[NonNegativeFloat]

    @model_validator(mode="after")
    def _one_per_feature(self) -> Prior:
        if len(self.coefficients) != len(self.features) + 1:
            raise ValueError(f"{len(self.coefficients)} coefficients for {len(self.features)} features; it needs "
                             "one non-negative coefficient more than features (the fixed cost)")
        return self


class CvAccuracy(_Meta):
    """`metrics.accuracy` of out-of-fold predictions: n, missing, within_5, within_10, mape, rmse_ms, kendall_tau."""

    within_10: float | None = None


class CvMetrics(_Meta):
    """Out-of-fold accuracy of the predictor (and of the LUT-sum and FLOPs baselines, kept as written)."""

    predictor: CvAccuracy


class LinearBaseline(_Meta):
    slope_ms_per_flop: float
    intercept_ms: float


class Baselines(_Meta):
    flops_linear: LinearBaseline


class PredictorMeta(_Meta):
    """`predictor.json`: what a fitted predictor was trained on and with, and the checksums of its files."""

    format: Literal["smnas-latency-predictor"]
    format_version: int
    feature_schema: int
    feature_config: FeatureConfig
    feature_names: list[str]
    fingerprint: FingerprintRecord | None
    fingerprint_key: str | None
    backend: str | None
    precision: str | None
    batch: int | None
    scope: Literal["network", "end2end"]
    source: str
    n_train: PositiveInt
    latency_range_ms: list[float]
    lut_modules: NonNegativeInt
    anchors_ms: dict[str, float]  # the table's anchor reference (drift)
    table_repeat: dict[str, float | None]  # the table's own repeat difference: median, p90
    lut_missing_pieces: NonNegativeInt
    lut_archs_missing: NonNegativeInt
    fit_config: FitConfig
    cv_metrics: CvMetrics
    conformal_quantile: NonNegativeFloat
    prior: Prior
    baselines: Baselines
    xgboost: str
    created_at: str
    files: dict[str, str] | None = None  # SHA-256 of each model file; written by `save`

    @field_validator("feature_names")
    @classmethod
    def _of_the_schema(cls, names: list[str], info: ValidationInfo) -> list[str]:
        config = info.data.get("feature_config")
        if config is not None and names != feature_names(config):
            raise ValueError(f"not the feature names of schema {SCHEMA_VERSION}")
        return names

    @field_validator("fit_config", mode="before")
    @classmethod
    def _known_settings(cls, values: Any) -> Any:
        # A setting an older smnas wrote and this one dropped is no reason to refit.
        return {k: v for k, v in values.items() if k in FitConfig.model_fields} if isinstance(values, dict) else values

    @field_validator("prior")
    @classmethod
    def _features_of_the_schema(cls, prior: Prior, info: ValidationInfo) -> Prior:
        config = info.data.get("feature_config")
        unknown = [f for f in prior.features if config is not None and f not in feature_names(config)]
        if unknown:
            raise ValueError(f"features {short_repr(unknown)} are not in feature schema {SCHEMA_VERSION}")
        return prior

    @field_validator("files")
    @classmethod
    def _model_files(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        if files is not None and set(files) != {MEAN_FILE, SCALE_FILE, MODULES_FILE}:
            raise ValueError(f"must list {MEAN_FILE}, {SCALE_FILE} and {MODULES_FILE} (with their SHA-256), "
                             f"not {short_repr(sorted(files))}")
        return files


@dataclass
class TrainingData:
    """Whole-model timings and the module entries of the table they came from."""

    archs: list[str]
    ms: np.ndarray
    fingerprint: Fingerprint | None
    module_ms: dict[str, float] = field(default_factory=dict)
    scope: str = "network"
    source: str = ""
    anchors_ms: dict[str, float] = field(default_factory=dict)  # the table's anchor reference (drift)
    repeat_median: float | None = None  # the table's own repeat difference (its noise floor)
    repeat_p90: float | None = None

    def __post_init__(self) -> None:
        self.ms = np.asarray(self.ms, dtype=np.float64)
        if len(self.archs) != len(self.ms):
            raise PredictorError(f"training data: {len(self.archs)} archs but {len(self.ms)} latencies")
        if len(self.ms) and not (np.isfinite(self.ms).all() and (self.ms > 0).all()):
            raise PredictorError(f"training data {self.source}: latencies must be positive and finite")


def load_training_data(lut: str | Path, scope: str = "network", fingerprint: Fingerprint | None = None,
                       allow_foreign: bool = False) -> TrainingData:
    """Whole-model rows of one scope and all module entries of a latency table (the profiling layer's reader)."""
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(lut, fingerprint, allow_foreign=allow_foreign) as table:
        rows = table.model_rows(scope)
        modules = table.module_latencies()
        fp = table.fingerprint
        anchors = table.anchor_reference()
        check = table.repeat_check()
    return TrainingData([r.arch for r in rows], np.array([r.median_ms for r in rows]), fp, modules, scope, str(lut),
                        anchors, check.repeat_median if check else None, check.repeat_p90 if check else None)


@dataclass
class FitResult:
    """Out-of-fold predictions of the K-fold CV that calibrated the interval, and its metrics."""

    archs: list[str]
    measured: np.ndarray
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    lut_sum: np.ndarray
    flops_linear: np.ndarray
    fold: np.ndarray
    metrics: dict[str, Any]
    config: FitConfig
    seconds: float


# ------------------------------------------------------------------------------------------ fitting
def _prior_design(X: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """[1, counts...]; a missing count (NaN) adds nothing."""
    return np.concatenate([np.ones((len(X), 1)), np.nan_to_num(X[:, columns], nan=0.0)], axis=1)


def _fit_prior(X: np.ndarray, y: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """Non-negative costs (ms per unit) minimising the squared relative error of the additive prior."""
    from sklearn.linear_model import LinearRegression

    design = _prior_design(X, columns)
    ms = np.exp(y)
    unit = np.maximum(design.std(axis=0), 1e-12)  # conditioning: counts span ~12 orders of magnitude
    unit[0] = 1.0
    fit = LinearRegression(fit_intercept=False, positive=True).fit(design / unit, ms, sample_weight=ms**-2.0)
    return np.asarray(fit.coef_, dtype=np.float64) / unit


def _log_prior(X: np.ndarray, columns: Sequence[int], coefficients: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(_prior_design(X, columns) @ coefficients, PRIOR_FLOOR_MS))


def _train(X: np.ndarray, target: np.ndarray, params: Mapping[str, Any], rounds: int) -> Any:
    import xgboost as xgb

    return xgb.train(dict(params), xgb.DMatrix(X, label=target, missing=np.nan), num_boost_round=rounds)


def _conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ceil((n + 1) * level)-th smallest score."""
    n = len(scores)
    k = math.ceil((n + 1) * level)
    if k > n:
        return float(np.max(scores)) * 1.5  # too few points for this level: widen
    return float(np.sort(scores)[k - 1])


class _Core:
    """Prior + mean + scale boosters: what is fitted on one training split."""

    def __init__(self, prior: np.ndarray, mean: Any, scale: Any | None, prior_columns: Sequence[int]) -> None:
        self.prior = prior
        self.mean = mean
        self.scale = scale
        self.prior_columns = list(prior_columns)

    def log_mean(self, X: np.ndarray) -> np.ndarray:
        return _log_prior(X, self.prior_columns, self.prior) + self.mean.inplace_predict(X, missing=np.nan)

    def log_scale(self, X: np.ndarray) -> np.ndarray:
        assert self.scale is not None
        return np.exp(self.scale.inplace_predict(X, missing=np.nan))


def _fit_mean(X: np.ndarray, y: np.ndarray, config: FitConfig, prior_columns: Sequence[int]) -> _Core:
    prior = _fit_prior(X, y, prior_columns)
    residual = y - _log_prior(X, prior_columns, prior)
    return _Core(prior, _train(X, residual, config.xgb_params(), config.rounds), None, prior_columns)


def _folds(n: int, k: int, seed: int) -> np.ndarray:
    """Fold index per row: a seeded shuffle cut into k near-equal parts."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % k
    return fold


class LatencyPredictor:
    """Predicts whole-model latency (ms) and an uncertainty for batches of architectures.

        predictor, cv = LatencyPredictor.fit(load_training_data("lut.db"))
        predictor.save("predictor/")
        ms, uncertainty = LatencyPredictor.load("predictor/").predict(archs)

    `uncertainty` is the half-width (ms) of the calibrated interval (default 90%);
    `predict_interval` gives the bounds themselves.
    """

    def __init__(self, core: _Core, quantile: float, featurizer: Featurizer, meta: PredictorMeta) -> None:
        self._core = core
        self.quantile = quantile
        self.featurizer = featurizer
        self.meta = meta

    # ------------------------------------------------------------------------------------ properties
    @property
    def fingerprint(self) -> Fingerprint | None:
        fp = self.meta.fingerprint
        return Fingerprint.from_dict(fp) if fp else None

    @property
    def config(self) -> FitConfig:
        return self.meta.fit_config

    @property
    def interval(self) -> float:
        return self.meta.fit_config.interval

    @property
    def flops_baseline(self) -> FlopsLinear:
        line = self.meta.baselines.flops_linear
        return FlopsLinear(line.slope_ms_per_flop, line.intercept_ms)

    def describe(self) -> str:
        fp = self.fingerprint
        device = fp.describe() if fp else "unknown device"
        within = self.meta.cv_metrics.predictor.within_10
        cv_text = f", CV within ±10% {100 * within:.1f}%" if within is not None else ""
        return (f"latency predictor ({self.meta.scope} scope) trained on {self.meta.n_train} models measured "
                f"on {device}{cv_text}")

    # ------------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, data: TrainingData, config: FitConfig | None = None, progress: Any = None
            ) -> tuple[LatencyPredictor, FitResult]:
        """Fit on all rows after a K-fold CV that gives out-of-fold metrics and calibrates the interval.

        `progress(step: str)` is called between steps when given.
        """
        config = config or FitConfig()
        start = time.perf_counter()
        n = len(data.archs)
        if n < max(MIN_TRAIN, config.folds):
            raise PredictorError(f"training data {data.source or ''}: {n} models; need at least "
                                 f"{max(MIN_TRAIN, config.folds)} to fit and cross-validate")
        featurizer = Featurizer(FeatureConfig(num_classes=config.num_classes, use_lut=config.use_lut), data.module_ms)
        X = featurizer.transform(data.archs)
        y = np.log(data.ms)
        prior_columns = [featurizer.column(c) for c in PRIOR_FEATURES]
        flops = X[:, featurizer.column("total_flops")]
        lut_sum = X[:, featurizer.column("lut_total_ms")] if config.use_lut else np.full(n, np.nan)
        fold = _folds(n, config.folds, config.seed)
        step = progress or (lambda _s: None)

        def cross_validate(cfg: FitConfig) -> np.ndarray:
            oof = np.empty(n)
            for k in range(cfg.folds):
                test = fold == k
                oof[test] = _fit_mean(X[~test], y[~test], cfg, prior_columns).log_mean(X[test])
            return oof

        if config.search:
            best: tuple[float, FitConfig, np.ndarray] | None = None
            for depth, eta, rounds, mcw in SEARCH_GRID:
                cfg = config.model_copy(update={"max_depth": depth, "learning_rate": eta, "rounds": rounds,
                                                "min_child_weight": mcw})
                step(f"search depth {depth} eta {eta} rounds {rounds}")
                oof = cross_validate(cfg)
                mape = float(np.mean(np.abs(np.exp(oof) - data.ms) / data.ms))
                if best is None or mape < best[0]:
                    best = (mape, cfg, oof)
            assert best is not None
            _, config, oof = best
        else:
            step(f"{config.folds}-fold cross-validation")
            oof = cross_validate(config)

        # Interval: a scale model of |residual|, itself cross-validated, then the conformal quantile.
        step("calibrating the interval")
        abs_res = np.maximum(np.abs(y - oof), RESIDUAL_FLOOR)
        scale_oof = np.empty(n)
        flops_oof = np.empty(n)
        for k in range(config.folds):
            test = fold == k
            booster = _train(X[~test], np.log(abs_res[~test]), config.scale_params(), config.scale_rounds)
            scale_oof[test] = np.exp(booster.inplace_predict(X[test], missing=np.nan))
            flops_oof[test] = FlopsLinear.fit(flops[~test], data.ms[~test]).predict(flops[test])
        quantile = _conformal_quantile(abs_res / scale_oof, config.interval)

        step("fitting on all rows")
        core = _fit_mean(X, y, config, prior_columns)
        core.scale = _train(X, np.log(abs_res), config.scale_params(), config.scale_rounds)
        predicted = np.exp(oof)
        half = quantile * scale_oof
        lower, upper = np.exp(oof - half), np.exp(oof + half)
        metrics = {"predictor": accuracy(data.ms, predicted), "lut_sum": accuracy(data.ms, lut_sum),
                   "flops_linear": accuracy(data.ms, flops_oof), "coverage": coverage(data.ms, lower, upper),
                   "interval": config.interval}
        fp = data.fingerprint
        meta = PredictorMeta.model_validate({
            "format": FORMAT, "format_version": FORMAT_VERSION, "feature_schema": SCHEMA_VERSION,
            "feature_config": featurizer.config, "feature_names": featurizer.names,
            "fingerprint": fp.to_dict() if fp else None, "fingerprint_key": fp.key if fp else None,
            "backend": fp.backend if fp else None, "precision": fp.precision if fp else None,
            "batch": fp.batch if fp else None, "scope": data.scope, "source": data.source, "n_train": n,
            "latency_range_ms": [float(data.ms.min()), float(data.ms.max())], "lut_modules": len(data.module_ms),
            "anchors_ms": dict(data.anchors_ms), "table_repeat": {"median": data.repeat_median, "p90": data.repeat_p90},
            "lut_missing_pieces": featurizer.lut_missing, "lut_archs_missing": featurizer.lut_archs_missing,
            "fit_config": config, "cv_metrics": metrics, "conformal_quantile": quantile,
            "prior": {"kind": "additive", "features": list(PRIOR_FEATURES), "coefficients": core.prior.tolist()},
            "baselines": {"flops_linear": FlopsLinear.fit(flops, data.ms).to_dict()},
            "xgboost": _xgb_version(), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })
        result = FitResult(list(data.archs), data.ms, predicted, lower, upper, lut_sum, flops_oof, fold, metrics,
                           config, time.perf_counter() - start)
        return cls(core, quantile, featurizer, meta), result

    def refit(self, data: TrainingData, progress: Any = None) -> tuple[LatencyPredictor, FitResult]:
        """A new predictor with this one's settings on new data (e.g. after a search generation).

        The data must come from the same device fingerprint (ForeignDeviceError otherwise).
        """
        self.check_fingerprint(data.fingerprint, what=f"training data {data.source}")
        return LatencyPredictor.fit(data, self.config, progress)

    # ------------------------------------------------------------------------------------ prediction
    def features(self, archs: Sequence[Arch | str]) -> np.ndarray:
        return self.featurizer.transform(archs)

    def predict_log(self, archs: Sequence[Arch | str], drift: Drift | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean of log ms, interval half-width in log space).

        With `drift` (this run's machine state against the table's, from its anchors) the mean moves by
        log(drift.ratio) and the half-width grows by the anchors' spread in quadrature: one model's drift
        strays from the common one by about that much."""
        X = self.features(archs)
        if len(X) == 0:
            return np.zeros(0), np.zeros(0)
        mu, half = self._core.log_mean(X), self.quantile * self._core.log_scale(X)
        if drift is not None:
            z = float(NormalDist().inv_cdf(0.5 + self.interval / 2))
            mu = mu + math.log(drift.ratio)
            half = np.sqrt(half**2 + (z * drift.spread) ** 2)
        return mu, half

    def predict(self, archs: Sequence[Arch | str], drift: Drift | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted ms, uncertainty ms) per arch; uncertainty is the half-width of the calibrated interval."""
        mu, half = self.predict_log(archs, drift)
        lower, upper = np.exp(mu - half), np.exp(mu + half)
        return np.exp(mu), (upper - lower) / 2

    def predict_interval(self, archs: Sequence[Arch | str], drift: Drift | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted ms, lower ms, upper ms); the interval covers `interval` (default 90%) of such archs."""
        mu, half = self.predict_log(archs, drift)
        return np.exp(mu), np.exp(mu - half), np.exp(mu + half)

    def drift_to(self, anchors_ms: Mapping[str, float]) -> Drift | None:
        """The drift of another run's anchor timings (arch -> ms) against this predictor's table; None
        when either has no anchors in common."""
        return drift_against(self.meta.anchors_ms, anchors_ms)

    def add_module_latencies(self, module_ms: Mapping[str, float], fingerprint: Fingerprint | None) -> int:
        """Use more module entries (same device) for the LUT features; returns how many were new."""
        self.check_fingerprint(fingerprint, what="module entries")
        new = {k: v for k, v in module_ms.items() if k not in self.featurizer.module_ms}
        if new:
            self.featurizer = Featurizer(self.featurizer.config, {**self.featurizer.module_ms, **new})
        return len(new)

    # ------------------------------------------------------------------------------------ checks
    def check_fingerprint(self, fingerprint: Fingerprint | None, what: str, allow_foreign: bool = False) -> None:
        mine = self.fingerprint
        if allow_foreign or fingerprint is None or mine is None or fingerprint.key == mine.key:
            return
        raise ForeignDeviceError(f"{what} was measured on {fingerprint.describe()}, but the predictor was trained on "
                                 f"{mine.describe()}; refit on this device or pass --allow-foreign-device")

    # ------------------------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the predictor folder atomically (replaces an existing one); returns its path."""
        path = Path(path)
        if self._core.scale is None:
            raise PredictorError("predictor has no scale model; fit it with LatencyPredictor.fit")
        files = {MEAN_FILE: bytes(self._core.mean.save_raw("ubj")), SCALE_FILE: bytes(self._core.scale.save_raw("ubj")),
                 MODULES_FILE: (json.dumps(self.featurizer.module_ms, sort_keys=True) + "\n").encode()}
        meta = self.meta.model_copy(update={
            "conformal_quantile": self.quantile,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}})
        keep = [p for p in path.iterdir() if p.name not in (*files, META_FILE)] if path.is_dir() else []
        with atomic_dir(path) as tmp:
            for name, data in files.items():
                atomic_write_bytes(tmp / name, data)
            atomic_write_json(tmp / META_FILE, meta.model_dump(mode="json"))
            for extra in keep:  # reports written next to the model survive a re-save
                if extra.is_dir():
                    shutil.copytree(extra, tmp / extra.name)
                elif extra.is_file():
                    shutil.copy2(extra, tmp / extra.name)
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str | Path, fingerprint: Fingerprint | None = None, allow_foreign: bool = False
             ) -> LatencyPredictor:
        """Load a saved predictor. With `fingerprint`, refuse one trained on another device (ForeignDeviceError).

        Everything read is checked first (checksums, the metadata's fields, the XGBoost files' structure),
        so a damaged or hand-edited folder is a PredictorError naming the file, not a crash later.
        """
        import xgboost as xgb

        from smnas_trt.predictors.ubj import check_xgboost_ubj

        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise PredictorError(f"{path}: not a predictor folder (no {META_FILE})")
        try:
            raw = json.loads(meta_path.read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise PredictorError(f"{meta_path}: not valid JSON ({first_line(e, 120)})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise PredictorError(f"{meta_path}: not an smnas latency predictor (format {short_repr(found)})")
        if raw.get("format_version") != FORMAT_VERSION or raw.get("feature_schema") != SCHEMA_VERSION:
            raise PredictorError(f"{path}: predictor format {short_repr(raw.get('format_version'))} / feature schema "
                                 f"{short_repr(raw.get('feature_schema'))}, this smnas reads {FORMAT_VERSION} / "
                                 f"{SCHEMA_VERSION}; refit it (smnas predictor fit)")
        try:
            meta = PredictorMeta.model_validate(raw)
        except ValidationError as e:
            raise PredictorError(f"{meta_path}: {pydantic_error_line(e)}; refit the predictor") from None
        if meta.files is None:
            raise PredictorError(f"{meta_path}: files: Field required; refit the predictor")
        files = {}
        for name, digest in meta.files.items():
            file = path / name
            if not file.is_file():
                raise PredictorError(f"{path}: {name} is missing")
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise PredictorError(f"{file}: contents do not match the checksum in {META_FILE}")
            files[name] = data
        featurizer = Featurizer(meta.feature_config, _module_latencies(files[MODULES_FILE], path / MODULES_FILE))
        mean, scale = xgb.Booster(), xgb.Booster()
        for booster, name in ((mean, MEAN_FILE), (scale, SCALE_FILE)):
            # XGBoost's loader can crash the process on a damaged model: check the file in Python first.
            check_xgboost_ubj(files[name], str(path / name))
            try:
                booster.load_model(bytearray(files[name]))
            except (xgb.core.XGBoostError, ValueError) as e:  # its message decoding can fail too
                raise PredictorError(f"{path / name}: XGBoost cannot read it ({first_line(e, 120)}); refit the "
                                     "predictor") from None
            if booster.num_features() != len(featurizer.names):
                raise PredictorError(f"{path / name}: a model of {booster.num_features()} features, the schema has "
                                     f"{len(featurizer.names)}; refit the predictor")
            booster.set_param({"nthread": meta.fit_config.threads})
        prior_columns = [featurizer.column(c) for c in meta.prior.features]
        core = _Core(np.asarray(meta.prior.coefficients, dtype=np.float64), mean, scale, prior_columns)
        predictor = cls(core, meta.conformal_quantile, featurizer, meta)
        predictor.check_fingerprint(fingerprint, what="this setup", allow_foreign=allow_foreign)
        return predictor


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _module_latencies(data: bytes, where: Path) -> dict[str, float]:
    try:
        module_ms = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise PredictorError(f"{where}: not valid JSON ({first_line(e, 120)})") from None
    if not (isinstance(module_ms, dict) and all(_finite(v) and v >= 0 for v in module_ms.values())):
        raise PredictorError(f"{where}: expected an object of module keys to latencies in ms")
    return module_ms


def _xgb_version() -> str:
    import xgboost as xgb

    return str(xgb.__version__)
