"""The deployed model's own COCO AP: its runtime's detections on a split, scored by pycocotools.

`score_deployed` runs the deployed pipeline (`Detector`: the graphs on their backend, torch decoding
and NMS) and the trained PyTorch model over the same images of a split, maps both sets of boxes back
to the original image pixels and the dataset's category ids, and scores each with COCOeval
(`training.evaluate.coco_bbox_metrics`). ΔAP = deployed AP - PyTorch AP: what deploying cost (for
int8, the quantization; for fp32, nothing but kernel rounding). Both sides use the model's own score
threshold and detections per image (verification lowers them; scoring does not).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from smnas_trt.data.coco import CocoDetection, to_original_boxes
from smnas_trt.deploy.runtime import Detector
from smnas_trt.training.evaluate import coco_bbox_metrics, predict

REPORTED = ("AP", "AP50")


@torch.no_grad()
def deployed_detections(detector: Detector, dataset: CocoDetection) -> list[dict[str, Any]]:
    """COCO result dicts (image_id, category_id, bbox xywh in original pixels, score) of the deployed model."""
    results: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        pixels, target = dataset[index]
        det = detector.detect_prepared(detector.normalise(pixels))
        boxes = to_original_boxes(det["boxes"].float(), dataset.input_size, target["orig_size"])
        boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
            if not 1 <= label <= dataset.num_categories:
                continue
            results.append({"image_id": target["image_id"], "category_id": dataset.label_to_category(int(label)),
                            "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)})
    return results


def score_deployed(model: Any, detector: Detector, dataset: CocoDetection) -> dict[str, Any]:
    """AP and AP50 of the deployed model and of PyTorch on `dataset`, and their differences (a manifest record)."""
    start = time.perf_counter()
    deployed = deployed_detections(detector, dataset)
    reference = predict(model, dataset)
    ours = coco_bbox_metrics(dataset.coco, deployed, image_ids=dataset.image_ids)
    theirs = coco_bbox_metrics(dataset.coco, reference, image_ids=dataset.image_ids)
    return {
        "split": dataset.split, "images": len(dataset),
        "deployed": {k: ours[k] for k in REPORTED}, "pytorch": {k: theirs[k] for k in REPORTED},
        "delta_ap": ours["AP"] - theirs["AP"], "delta_ap50": ours["AP50"] - theirs["AP50"],
        "detections": {"deployed": len(deployed), "pytorch": len(reference)},
        "what": "COCO bbox AP (pycocotools) of the deployed runtime's own detections vs the PyTorch model's",
        "seconds": round(time.perf_counter() - start, 2),
    }
