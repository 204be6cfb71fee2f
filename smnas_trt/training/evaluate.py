"""COCO bbox evaluation with pycocotools' COCOeval.

Predictions come out of the model in resized-input pixels; they are mapped back to each image's
original size (undoing the plain resize) and to the dataset's category ids before COCOeval runs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from smnas_trt.data.coco import CocoDetection, Size, build_loader, to_original_boxes
from smnas_trt.fileio import atomic_write_json

# COCOeval.stats indices of the figures we report.
METRIC_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
METRIC_KEYS = tuple(METRIC_INDEX)


def coco_bbox_metrics(coco_gt: COCO, detections: Sequence[dict[str, Any]],
                      image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCOeval bbox figures for `detections` (COCO result dicts: image_id, category_id, bbox xywh, score).

    `image_ids` restricts the evaluation to those images (default: every image of `coco_gt`).
    No detections at all gives AP 0 for every area range that has ground truth (COCOeval's -1
    stays where a range has none).
    """
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
    else:
        # loadRes cannot take an empty list; an empty result set is still a valid COCO object.
        coco_dt = COCO()
        coco_dt.dataset = {"images": copy.deepcopy(coco_gt.dataset["images"]), "annotations": [],
                           "categories": copy.deepcopy(coco_gt.dataset["categories"])}
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(evaluator.stats[i]) for key, i in METRIC_INDEX.items()}


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: CocoDetection, batch_size: int = 8, workers: int = 0,
            device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Run `model` (eval mode) over `dataset`; COCO result dicts in original image coordinates."""
    loader = build_loader(None, dataset.split, dataset.input_size, batch_size=batch_size, train=False,
                          workers=workers, dataset=dataset)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for images, targets in loader:
            outputs = model([im.to(device) for im in images])
            for out, target in zip(outputs, targets, strict=True):
                boxes = to_original_boxes(out["boxes"].float().cpu(), dataset.input_size, target["orig_size"])
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                for box, score, label in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist(),
                                             strict=True):
                    if not 1 <= label <= dataset.num_categories:
                        continue  # background slot (never a real category)
                    results.append({"image_id": target["image_id"],
                                    "category_id": dataset.label_to_category(int(label)),
                                    "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)})
    finally:
        model.train(was_training)
    return results


def evaluate(
    model: torch.nn.Module,
    data_dir: str | Path | None,
    split: str = "val",
    input_size: Size = (128, 128),
    batch_size: int = 8,
    workers: int = 0,
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    out_json: str | Path | None = None,
    dataset: CocoDetection | None = None,
) -> dict[str, float]:
    """COCO bbox metrics of `model` on a split: keys AP, AP50, AP75, APs, APm, APl, AR100.

    Images are plainly resized to `input_size` (width, height); boxes are mapped back before
    scoring. `max_images` evaluates the first N images only. With `out_json` the metrics are
    also written (atomically) as ``{"metrics": {...}, "split", "images", "detections",
    "annotation_counts", "seconds"}`` (annotation counts: see `load_annotations`).
    """
    if dataset is None:
        if data_dir is None:
            raise ValueError("evaluate needs data_dir or dataset")
        dataset = CocoDetection(data_dir, split, input_size, train=False, max_images=max_images)
    start = time.perf_counter()
    detections = predict(model, dataset, batch_size=batch_size, workers=workers, device=device)
    metrics = coco_bbox_metrics(dataset.coco, detections, image_ids=dataset.image_ids)
    if out_json is not None:
        atomic_write_json(out_json, {
            "metrics": metrics, "split": dataset.split, "data": str(dataset.files.ann_file),
            "images": len(dataset), "detections": len(detections),
            "annotation_counts": dict(dataset.annotation_counts), "seconds": round(time.perf_counter() - start, 2),
        })
    return metrics
