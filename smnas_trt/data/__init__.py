"""COCO-format datasets (pycocotools), plain-resize transforms and the embedded demo-data generator."""

from smnas_trt.data.coco import (
    CocoDetection,
    SplitFiles,
    build_loader,
    check_dataset,
    collate,
    load_annotations,
    resolve_split,
    to_original_boxes,
)
from smnas_trt.data.demo import generate_demo

__all__ = [
    "CocoDetection",
    "SplitFiles",
    "build_loader",
    "check_dataset",
    "collate",
    "generate_demo",
    "load_annotations",
    "resolve_split",
    "to_original_boxes",
]
