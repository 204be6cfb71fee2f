"""The graphs of a detector: what is profiled, predicted, deployed and verified, built by one function.

`detector_graphs(model, arch)` cuts a torchvision detector built by `build_detector` into the graph(s)
an inference engine runs; post-processing (box decoding, proposal filtering, NMS) stays in torch.

- One-stage (RetinaNet, FCOS): `body`: images [B, 3, H, W] (normalised, padded to a multiple of 32)
  -> the dense head's raw outputs, levels concatenated: cls_logits [B, A, C], bbox_regression
  [B, A, 4], and for FCOS bbox_ctrness [B, A, 1].
- Two-stage (2-FC Faster R-CNN, Cascade R-CNN), cut around the RPN's NMS:
  `rpn`: images -> the feature maps the RoI stage pools (P{min}..P5), objectness [B*A, 1] and RPN
  box deltas [B*A, 4]; then torch decodes and filters the proposals and pads them to R per image;
  `roi`: those maps + proposals [B, R, 4] -> 2-FC: class_logits [B*R, C], box_regression [B*R, 4C];
  cascade: the log of the stage-averaged class probabilities [B*R, C], the last stage's agnostic
  deltas [B*R, 4] and the boxes that stage scored [B*R, 4] (the cascade's own `predict_boxes`).
  R is the RPN's test-time post-NMS proposal count; RoIAlign, the FC layers and the cascade act on
  each RoI alone, so padding changes nothing for the real proposals.

Every graph has static shapes and no data-dependent indexing: RoIs are pooled by `LevelRoIAlign`
(each RoI at every level, the level torchvision's LevelMapper assigns it kept), which equals
torchvision's MultiScaleRoIAlign, and exports to ONNX, builds as a TensorRT engine and replays as a
CUDA graph alike. The `network` latency of a model is the sum of its graphs' latencies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from smnas_trt.models.cascade import CascadeRoIHeads
from smnas_trt.models.detector import ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO, SIZE_DIVISIBLE, detector_settings
from smnas_trt.models.layers import fold_weight_standardization
from smnas_trt.space.arch import Arch

PROPOSAL_SEED = 0
CANONICAL_LEVEL = 4  # LevelMapper: a box of side canonical_scale maps to P4
LEVEL_EPS = 1e-6


@dataclass
class GraphSpec:
    """One exportable graph: a module, named example inputs and named outputs."""

    name: str  # body | rpn | roi
    module: nn.Module
    input_names: list[str]
    example_inputs: tuple[torch.Tensor, ...]
    output_names: list[str]


def body_input_shape(arch: Arch, batch: int = 1) -> tuple[int, int, int, int]:
    """(B, 3, H, W) of the graph input: the arch's size padded up to a multiple of 32, as the transform does."""
    pad = SIZE_DIVISIBLE
    return (batch, 3, math.ceil(arch.size.height / pad) * pad, math.ceil(arch.size.width / pad) * pad)


def pooled_levels(arch: Arch) -> tuple[int, ...]:
    """Levels the RoI stage reads: P{min}..P5 (higher levels serve the RPN only)."""
    return tuple(level for level in arch.neck.levels if level <= 5)


def num_proposals(arch: Arch) -> int:
    """R: proposals per image the RoI graph takes (the RPN's test-time post-NMS count)."""
    return detector_settings(arch).proposals_test


def fixed_proposals(arch: Arch, n: int) -> torch.Tensor:
    """n deterministic boxes (x1, y1, x2, y2) inside the arch's W x H: the RoI graph's example input.

    Centres uniform over the image, sides log-uniform from 1/16 to 3/4 of the short side, aspect 1/2-2.
    """
    g = torch.Generator().manual_seed(PROPOSAL_SEED)
    w, h = arch.size.width, arch.size.height
    short = min(w, h)
    u = torch.rand(n, 4, generator=g, dtype=torch.float64, device="cpu")
    cx, cy = u[:, 0] * w, u[:, 1] * h
    side = short / 16 * (12.0 ** u[:, 2])
    aspect = 2.0 ** (2 * u[:, 3] - 1)
    bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).float()
    return box_ops.clip_boxes_to_image(boxes, (h, w))


class LevelRoIAlign(nn.Module):
    """MultiScaleRoIAlign with static shapes: every RoI is pooled at every level and the result of the
    level LevelMapper assigns it is kept (with Python floats, no host-to-device copies). Costs one
    RoIAlign per level instead of one in all; gives the same numbers (tested)."""

    def __init__(self, levels: Sequence[int], canonical_scale: int) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.scales = [2.0**-level for level in self.levels]
        self.canonical_scale = float(canonical_scale)

    def level_index(self, boxes: torch.Tensor) -> torch.Tensor:
        """0-based index into `levels` of each box (torchvision's LevelMapper)."""
        side = torch.sqrt(box_ops.box_area(boxes))
        level = torch.floor(CANONICAL_LEVEL + torch.log2(side / self.canonical_scale) + LEVEL_EPS)
        return torch.clamp(level, min=self.levels[0], max=self.levels[-1]) - self.levels[0]

    def forward(self, maps: Sequence[torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], 1)
        level = self.level_index(boxes)[:, None, None, None]
        out: torch.Tensor | None = None
        for i, (feature, scale) in enumerate(zip(maps, self.scales, strict=True)):
            pooled = roi_align(feature, rois, ROI_OUTPUT_SIZE, scale, ROI_SAMPLING_RATIO, False)
            out = pooled if out is None else torch.where(level == i, pooled, out)
        assert out is not None
        return out


class DenseBody(nn.Module):
    """images -> the dense head's raw outputs (levels concatenated), as RetinaNet/FCOS post-process them."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(images).values())
        return tuple(self.head(features).values())


class RpnGraph(nn.Module):
    """images -> RoI feature maps, objectness [B*A, 1] and RPN box deltas [B*A, 4] (levels concatenated)."""

    def __init__(self, model: Any, arch: Arch) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head: Any = model.rpn.head
        self.num_pooled = len(pooled_levels(arch))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(images).values())
        objectness, deltas = self.rpn_head(features)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        return (*features[: self.num_pooled], objectness, deltas)


class RoiGraph(nn.Module):
    """RoI feature maps + proposals [B, R, 4] -> what RoIHeads' post-processing reads (see module docstring)."""

    def __init__(self, model: Any, arch: Arch) -> None:
        super().__init__()
        self.roi_heads: Any = model.roi_heads
        self.pool = LevelRoIAlign(pooled_levels(arch), detector_settings(arch).canonical_scale)
        self.image_hw = (arch.size.height, arch.size.width)  # before padding: what proposals are clipped to
        self.cascade = isinstance(model.roi_heads, CascadeRoIHeads)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *maps, proposals = inputs
        # Python ints, so the legacy tracer records constants (graphs have static shapes anyway).
        batch, per_image = int(proposals.shape[0]), int(proposals.shape[1])
        boxes = proposals.reshape(batch * per_image, 4)
        image_index = torch.arange(batch, device=boxes.device).repeat_interleave(per_image)

        def pool(props: list[torch.Tensor]) -> torch.Tensor:
            return self.pool(maps, torch.cat(props), image_index)

        heads = self.roi_heads
        if self.cascade:
            mean_logp, deltas, scored = heads.predict_boxes(pool, [boxes], [self.image_hw])
            return mean_logp, deltas, scored[0]
        class_logits, box_regression = heads.box_predictor(heads.box_head(pool([boxes])))
        return class_logits, box_regression


def dense_output_names(model: Any) -> list[str]:
    if isinstance(model, FCOS):
        return ["cls_logits", "bbox_regression", "bbox_ctrness"]
    if isinstance(model, RetinaNet):
        return ["cls_logits", "bbox_regression"]
    raise TypeError(f"model {type(model).__name__} has no dense head")


def roi_output_names(model: Any) -> list[str]:
    if isinstance(model.roi_heads, CascadeRoIHeads):
        return ["mean_logp", "deltas", "scored_proposals"]
    return ["class_logits", "box_regression"]


def roi_map_names(arch: Arch) -> list[str]:
    return [f"p{level}" for level in pooled_levels(arch)]


def detector_graphs(model: nn.Module, arch: Arch, batch: int = 1) -> list[GraphSpec]:
    """The graph(s) of `model` (built by build_detector for `arch`) on a copy with weight standardisation
    folded, in eval mode; `model` is untouched. Example inputs are seeded images (and for the RoI graph the
    RPN graph's maps and `fixed_proposals`) at batch `batch`."""
    folded: Any = fold_weight_standardization(copy.deepcopy(model)).eval()
    images = torch.rand(body_input_shape(arch, batch), generator=torch.Generator().manual_seed(0))
    if not arch.two_stage:
        return [GraphSpec("body", DenseBody(folded).eval(), ["images"], (images,), dense_output_names(folded))]
    rpn = RpnGraph(folded, arch).eval()
    with torch.no_grad():
        maps = [t.detach() for t in rpn(images)[: rpn.num_pooled]]
    proposals = fixed_proposals(arch, num_proposals(arch)).repeat(batch, 1, 1)
    names = roi_map_names(arch)
    return [
        GraphSpec("rpn", rpn, ["images"], (images,), [*names, "objectness", "rpn_deltas"]),
        GraphSpec("roi", RoiGraph(folded, arch).eval(), [*names, "proposals"], (*maps, proposals),
                  roi_output_names(folded)),
    ]


class End2End(nn.Module):
    """A detector on one image [3, H, W] in [0, 1] -> (boxes [N, 4], scores [N], labels [N]): the `end2end`
    scope, the detector's own transform, network, decoding and NMS. Only the legacy exporter exports it
    (NMS has a data-dependent output size)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.detector([image])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


def end2end_graph(model: nn.Module, arch: Arch) -> GraphSpec:
    image = torch.rand(3, arch.size.height, arch.size.width, generator=torch.Generator().manual_seed(0))
    return GraphSpec("end2end", End2End(fold_weight_standardization(copy.deepcopy(model))), ["image"], (image,),
                     ["boxes", "scores", "labels"])
