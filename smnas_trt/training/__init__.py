"""From-scratch trainer and COCO evaluation (pycocotools COCOeval, bbox)."""

from smnas_trt.training.arch import build_for_data, evaluate_checkpoint, load_trained, train_arch
from smnas_trt.training.evaluate import METRIC_KEYS, coco_bbox_metrics, evaluate, predict
from smnas_trt.training.trainer import (
    TrainConfig,
    TrainingError,
    TrainResult,
    load_checkpoint,
    lr_factor,
    train_detector,
)

__all__ = [
    "METRIC_KEYS",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "build_for_data",
    "coco_bbox_metrics",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_trained",
    "lr_factor",
    "predict",
    "train_arch",
    "train_detector",
]
