"""Latency predictor: features from the genes and the latency table, XGBoost on log latency with a
calibrated interval, baselines, and an accuracy report."""

from smnas_trt.predictors.evaluate import device_note, evaluate_on_table, fit_predictor
from smnas_trt.predictors.features import SCHEMA_VERSION, FeatureConfig, Featurizer
from smnas_trt.predictors.metrics import FlopsLinear, accuracy, coverage
from smnas_trt.predictors.predictor import (
    FitConfig,
    FitResult,
    LatencyPredictor,
    PredictorMeta,
    TrainingData,
    load_training_data,
)

__all__ = [
    "SCHEMA_VERSION",
    "FeatureConfig",
    "Featurizer",
    "FitConfig",
    "FitResult",
    "FlopsLinear",
    "LatencyPredictor",
    "PredictorMeta",
    "TrainingData",
    "accuracy",
    "coverage",
    "device_note",
    "evaluate_on_table",
    "fit_predictor",
    "load_training_data",
]
