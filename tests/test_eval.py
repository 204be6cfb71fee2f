"""COCO bbox evaluation: ground truth scores 1.0, nothing scores 0, predictions map back to originals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smnas_trt.data import CocoDetection, generate_demo
from smnas_trt.training import METRIC_KEYS, coco_bbox_metrics, evaluate


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("e") / "demo", n_train=2, n_val=12, size=256, seed=1)


def _gt_as_detections(ds: CocoDetection) -> list[dict]:  # type: ignore[type-arg]
    anns = ds.coco.loadAnns(ds.coco.getAnnIds())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in anns]


def test_ground_truth_as_predictions_scores_one(demo: Path) -> None:
    ds = CocoDetection(demo, "val", (128, 128))
    metrics = coco_bbox_metrics(ds.coco, _gt_as_detections(ds))
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    # Each area range is 1.0 where it has objects, -1 (COCOeval's "none") where it has none.
    assert all(metrics[k] == pytest.approx(1.0) or metrics[k] == -1 for k in ("APs", "APm", "APl"))
    assert metrics["APm"] == pytest.approx(1.0)


def test_empty_and_wrong_predictions_score_zero(demo: Path) -> None:
    ds = CocoDetection(demo, "val", (128, 128))
    empty = coco_bbox_metrics(ds.coco, [])
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0 and empty["APm"] == 0.0
    # Right boxes, wrong category: still nothing.
    wrong = [dict(d, category_id=d["category_id"] % 10 + 1) for d in _gt_as_detections(ds)]
    assert coco_bbox_metrics(ds.coco, wrong)["AP"] == 0.0
    # Boxes shifted by half their width: matched at IoU 0.5 only partly, so AP drops strictly below 1.
    shifted = [dict(d, bbox=[d["bbox"][0] + d["bbox"][2] * 0.3, *d["bbox"][1:]]) for d in _gt_as_detections(ds)]
    partial = coco_bbox_metrics(ds.coco, shifted)
    assert 0.0 < partial["AP"] < 0.9 and partial["AP50"] == pytest.approx(1.0)


class _Oracle(torch.nn.Module):
    """Returns a dataset's targets (in resized-input pixels) for the images, in loader order."""

    def __init__(self, ds: CocoDetection) -> None:
        super().__init__()
        self.targets = [ds[i][1] for i in range(len(ds))]
        self.cursor = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            t = self.targets[self.cursor]
            self.cursor += 1
            out.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
        return out


def test_evaluate_maps_predictions_back_to_original_coordinates(demo: Path, tmp_path: Path) -> None:
    # A non-square input size: wrong back-mapping in x or y would lose the IoU >= 0.75 matches.
    ds = CocoDetection(demo, "val", (96, 160))
    out = tmp_path / "m.json"
    metrics = evaluate(_Oracle(ds), None, dataset=ds, batch_size=5, out_json=out)
    assert metrics["AP"] > 0.95 and metrics["AP75"] > 0.95
    written = json.loads(out.read_text())
    assert written["metrics"]["AP"] == metrics["AP"]
    assert written["images"] == 12 and written["detections"] == len(ds.coco.getAnnIds())


def test_evaluate_subset_only_scores_those_images(demo: Path) -> None:
    ds = CocoDetection(demo, "val", (128, 128), max_images=3)
    metrics = evaluate(_Oracle(ds), None, dataset=ds)
    assert metrics["AP"] == pytest.approx(1.0)  # the other 9 images' objects are not counted as missed
