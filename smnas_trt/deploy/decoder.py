"""The torch post-processing around a deployed model's graphs (`models/graphs.py` cuts the detector).

One-stage: the body's raw outputs -> the model's own `postprocess_detections` (decoding, score
threshold, top-k, NMS), with anchors from its own anchor generator, computed once. Two-stage: the
`rpn` graph's objectness and deltas -> the RPN's own proposal decoding and `filter_proposals` (NMS),
padded to the `roi` graph's fixed proposal count -> the `roi` graph -> RoIHeads'
`postprocess_detections` on the real proposals. So the network runs in the engine and the boxes come
out of the same code as in PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.image_list import ImageList

from smnas_trt.errors import DeployError
from smnas_trt.models.graphs import body_input_shape, dense_output_names
from smnas_trt.space import Arch

# Padding box for unused proposal slots: a valid 1x1 box at the origin (RoIAlign needs finite boxes).
PAD_BOX = (0.0, 0.0, 1.0, 1.0)


def is_two_stage(model: Any) -> bool:
    return not isinstance(model, RetinaNet | FCOS)


class Decoder:
    """The model's own post-processing on graph outputs; holds the anchors, computed once.

    `model` needs no trained weights: only its anchor generator, box coders, thresholds and
    transform are used (it may be built on the meta device).
    """

    def __init__(self, model: Any, arch: Arch, feature_sizes: list[tuple[int, int]]) -> None:
        self.model = model
        self.arch = arch
        self.two_stage = is_two_stage(model)
        shape = body_input_shape(arch)
        self.image_size = (arch.size.height, arch.size.width)
        dummy = ImageList(torch.empty(shape), [self.image_size])
        maps = [torch.empty(1, 1, h, w) for h, w in feature_sizes]
        anchor_generator = model.rpn.anchor_generator if self.two_stage else model.anchor_generator
        self.anchors = anchor_generator(dummy, maps)[0]
        per_location = anchor_generator.num_anchors_per_location()
        self.anchors_per_level = [h * w * a for (h, w), a in zip(feature_sizes, per_location, strict=True)]
        if sum(self.anchors_per_level) != len(self.anchors):
            raise DeployError(f"anchors: {len(self.anchors)} generated but feature sizes {feature_sizes} give "
                              f"{sum(self.anchors_per_level)}")
        self.num_proposals = int(model.rpn.post_nms_top_n()) if self.two_stage else 0

    @property
    def nms_thresh(self) -> float:
        """The IoU above which the model's own NMS drops the lower-scored of two boxes of one class."""
        return float(self.model.roi_heads.nms_thresh if self.two_stage else self.model.nms_thresh)

    def dense(self, outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detections (boxes in input pixels, scores, labels 1..K) from the body's outputs."""
        keys = dense_output_names(self.model)
        split = {k: list(t.float().split(self.anchors_per_level, dim=1)) for k, t in zip(keys, outputs, strict=True)}
        anchors = [list(self.anchors.split(self.anchors_per_level))]
        return self.model.postprocess_detections(split, anchors, [self.image_size])[0]

    def proposals(self, objectness: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN proposals after the RPN's own filtering: (valid [n, 4], padded to the RoI graph's [1, R, 4])."""
        rpn = self.model.rpn
        boxes = rpn.box_coder.decode(deltas.float(), [self.anchors]).view(1, -1, 4)
        kept, _ = rpn.filter_proposals(boxes, objectness.float(), [self.image_size], self.anchors_per_level)
        valid = kept[0]
        padded = torch.tensor(PAD_BOX).repeat(self.num_proposals, 1)
        padded[: len(valid)] = valid
        return valid, padded[None]

    def rcnn(self, outputs: list[torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detections from the RoI graph's outputs for the first len(valid) (real) proposals."""
        n = len(valid)
        heads = self.model.roi_heads
        if len(outputs) == 3:  # cascade: averaged log-probabilities, agnostic deltas, the boxes it scored
            mean_logp, deltas, refined = (t[:n].float() for t in outputs)
            num_classes = mean_logp.shape[-1]
            boxes, scores, labels = heads.postprocess_detections(mean_logp, deltas.repeat(1, num_classes),
                                                                 [refined], [self.image_size])
        else:
            logits, regression = (t[:n].float() for t in outputs)
            boxes, scores, labels = heads.postprocess_detections(logits, regression, [valid], [self.image_size])
        return {"boxes": boxes[0], "scores": scores[0], "labels": labels[0]}


def feature_sizes(model: Any, arch: Arch) -> list[tuple[int, int]]:
    """(h, w) of every feature map the anchors are laid on, for the arch's padded input size."""
    with torch.no_grad():
        feats = model.backbone(torch.zeros(body_input_shape(arch)))
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in feats.values()]
