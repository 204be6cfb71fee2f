"""Cascade R-CNN (Cai & Vasconcelos, 2018) on top of torchvision's RoIHeads.

Each stage has its own 2-FC box head and class-agnostic box predictor, its own IoU threshold
(0.5/0.6/0.7) and box-coder weights. In training each stage samples its RoIs (RoIHeads'
`select_training_samples`, with the stage's matcher and coder) from the previous stage's refined,
detached boxes; in evaluation class probabilities are averaged over stages and boxes come from the
last stage (as mmdetection does). The evaluation cascade is `predict_boxes`, written once: the
detector's own forward and the deployed RoI graph (`models/graphs.py`) both run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import boxes as box_ops

CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
CASCADE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)


def decode_boxes(coder: Any, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's `BoxCoder.decode_single`, with Python floats where it builds `torch.tensor(0.5)`:
    that is a host-to-device copy on CUDA, which CUDA graph capture refuses. Bit-identical (tested)."""
    boxes = boxes.to(deltas.dtype)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = coder.weights
    dw = torch.clamp(deltas[:, 2::4] / ww, max=coder.bbox_xform_clip)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=coder.bbox_xform_clip)
    pred_ctr_x = deltas[:, 0::4] / wx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = deltas[:, 1::4] / wy * heights[:, None] + ctr_y[:, None]
    half_w, half_h = 0.5 * (torch.exp(dw) * widths[:, None]), 0.5 * (torch.exp(dh) * heights[:, None])
    corners = (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h)
    return torch.stack(corners, dim=2).flatten(1)


class AgnosticBoxPredictor(nn.Module):
    """Class scores (num_classes, background included) and one class-agnostic box delta per RoI."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(RoIHeads):
    """Cascade box stages; same forward contract as RoIHeads (boxes only, no masks/keypoints)."""

    def __init__(self, box_roi_pool: nn.Module, box_heads: list[nn.Module], box_predictors: list[nn.Module],
                 batch_size_per_image: int, positive_fraction: float, score_thresh: float, nms_thresh: float,
                 detections_per_img: int) -> None:
        n = len(box_heads)
        if not 2 <= n <= 3 or len(box_predictors) != n:
            raise ValueError(f"cascade needs 2-3 stages with one predictor each, got {n} heads")
        super().__init__(box_roi_pool, None, None, CASCADE_IOUS[0], CASCADE_IOUS[0], batch_size_per_image,
                         positive_fraction, CASCADE_BOX_WEIGHTS[n - 1], score_thresh, nms_thresh, detections_per_img)
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        # Cascade R-CNN uses fg = bg threshold per stage, no low-quality matches.
        self.stage_matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in CASCADE_IOUS[:n]]
        self.stage_coders = [det_utils.BoxCoder(w) for w in CASCADE_BOX_WEIGHTS[:n]]
        self.stage_loss_weights = CASCADE_LOSS_WEIGHTS[:n]
        # postprocess_detections decodes with self.box_coder: the last stage's coder.
        self.box_coder = self.stage_coders[-1]

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def stage_forward(self, stage: int, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits [N, K+1] and agnostic deltas [N, 4] of one stage for pooled RoI features."""
        return self.box_predictors[stage](self.box_heads[stage](pooled))

    def refine(self, stage: int, deltas: torch.Tensor, proposals: list[torch.Tensor],
               image_shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Next stage's proposals: this stage's boxes, clipped and detached."""
        boxes = decode_boxes(self.stage_coders[stage], deltas.detach(), torch.cat(proposals).detach())
        per_image = boxes.split([len(p) for p in proposals])
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(per_image, image_shapes, strict=True)]

    def predict_boxes(self, pool: Callable[[list[torch.Tensor]], torch.Tensor], proposals: list[torch.Tensor],
                      image_shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The evaluation cascade: each stage pools (`pool(proposals per image)`) and scores the previous
        stage's refined boxes. Returns the log of the stage-averaged class probabilities [N, K+1], the last
        stage's agnostic deltas [N, 4] and the proposals (per image) that stage scored."""
        probs: list[torch.Tensor] = []
        deltas = torch.empty(0)
        for stage in range(self.num_stages):
            if stage > 0:
                proposals = self.refine(stage - 1, deltas, proposals, image_shapes)
            logits, deltas = self.stage_forward(stage, pool(proposals))
            probs.append(F.softmax(logits, -1))
        return torch.stack(probs).mean(0).clamp_min(1e-12).log(), deltas, proposals

    def _sample(self, stage: int, proposals: list[torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                  list[torch.Tensor]]:
        self.proposal_matcher = self.stage_matchers[stage]
        self.box_coder = self.stage_coders[stage]
        try:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        finally:
            self.proposal_matcher = self.stage_matchers[0]
            self.box_coder = self.stage_coders[-1]
        return proposals, labels, regression_targets

    def forward(  # type: ignore[override]
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        def pool(props: list[torch.Tensor]) -> torch.Tensor:
            return self.box_roi_pool(features, props, image_shapes)

        if not self.training:
            # postprocess_detections applies softmax: the log of the averaged probabilities gives them back.
            mean_logp, deltas, scored = self.predict_boxes(pool, proposals, image_shapes)
            num_classes = mean_logp.shape[-1]
            boxes, scores, labels_out = self.postprocess_detections(mean_logp, deltas.repeat(1, num_classes),
                                                                    scored, image_shapes)
            return [{"boxes": b, "labels": lab, "scores": s}
                    for b, s, lab in zip(boxes, scores, labels_out, strict=True)], {}
        if targets is None:
            raise ValueError("targets are required in training mode")
        losses: dict[str, torch.Tensor] = {}
        deltas = torch.empty(0)
        for stage in range(self.num_stages):
            if stage > 0:
                proposals = self.refine(stage - 1, deltas, proposals, image_shapes)
            proposals, labels, regression_targets = self._sample(stage, proposals, targets)
            class_logits, deltas = self.stage_forward(stage, pool(proposals))
            # fastrcnn_loss reads class-specific deltas: give every class the agnostic one.
            num_classes = class_logits.shape[-1]
            loss_cls, loss_box = fastrcnn_loss(class_logits, deltas.repeat(1, num_classes), labels, regression_targets)
            weight = self.stage_loss_weights[stage]
            losses[f"loss_classifier_s{stage + 1}"] = weight * loss_cls
            losses[f"loss_box_reg_s{stage + 1}"] = weight * loss_box
        return [], losses
