"""A torchvision detector cut into the graph(s) an engine runs and the post-processing kept in torch.

One-stage (RetinaNet, FCOS): one graph ``body`` (backbone, neck, dense head; raw per-anchor
outputs concatenated over levels). Decoding, score threshold, top-k and NMS are the model's own
``postprocess_detections`` on those outputs, with anchors from its own anchor generator.

Two-stage (Faster R-CNN 2-FC, Cascade R-CNN): graph ``rpn`` (backbone, neck, RPN head; the RoI
feature maps, objectness and box deltas out), then the RPN's own proposal decoding and
``filter_proposals`` (NMS) in torch, then graph ``roi`` (multi-scale RoIAlign and the box head(s)
on a fixed number of proposals, padded, so the graph has static shapes), then RoIHeads'
``postprocess_detections``. RoIAlign, the FC layers and cascade refinement act on each RoI alone,
so padding changes nothing for the real proposals.

So the network runs in the engine and the boxes come out of the same code as in PyTorch.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from smnas_trt.errors import DeployError
from smnas_trt.models import fold_weight_standardization
from smnas_trt.models.body import body_input_shape, network_body
from smnas_trt.space import Arch

# Padding box for unused proposal slots: a valid 1x1 box at the origin (RoIAlign needs finite boxes).
PAD_BOX = (0.0, 0.0, 1.0, 1.0)


@dataclass
class GraphSpec:
    """One exportable piece: a module, named example inputs and named outputs."""

    name: str
    module: nn.Module
    input_names: list[str]
    example_inputs: tuple[torch.Tensor, ...]
    output_names: list[str]


def is_two_stage(model: Any) -> bool:
    return not isinstance(model, RetinaNet | FCOS)


def head_output_names(model: Any) -> list[str]:
    if isinstance(model, FCOS):
        return ["cls_logits", "bbox_regression", "bbox_ctrness"]
    if isinstance(model, RetinaNet):
        return ["cls_logits", "bbox_regression"]
    raise DeployError(f"model {type(model).__name__} has no dense head")


def roi_level_names(model: Any) -> list[str]:
    """Feature maps the RoI stage pools from (P{min}..P5, named as the backbone names them)."""
    return list(model.roi_heads.box_roi_pool.featmap_names)


class RpnBody(nn.Module):
    """Image -> RoI feature maps, objectness [A, 1] and RPN box deltas [A, 4] (levels concatenated)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head: Any = model.rpn.head
        self.roi_levels = roi_level_names(model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        objectness, deltas = self.rpn_head(list(features.values()))
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        return (*[features[k] for k in self.roi_levels], objectness, deltas)


class RoiBody(nn.Module):
    """RoI feature maps + proposals [R, 4] -> what RoIHeads.postprocess_detections reads.

    2-FC: class logits [R, C] and class-specific deltas [R, 4C]. Cascade: log of the stage-averaged
    class probabilities [R, C], the last stage's agnostic deltas [R, 4] and the proposals that stage
    refined [R, 4] (the cascade's own refine step runs inside the graph).
    """

    def __init__(self, model: Any, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.roi_heads: Any = model.roi_heads
        self.roi_levels = roi_level_names(model)
        self.image_size = image_size  # (h, w) before padding: what the RPN and RoI pool clip to
        self.cascade = hasattr(self.roi_heads, "stage_forward")

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *maps, proposals = inputs
        features = OrderedDict(zip(self.roi_levels, maps, strict=True))
        shapes = [self.image_size]
        heads = self.roi_heads
        if not self.cascade:
            x = heads.box_roi_pool(features, [proposals], shapes)
            x = heads.box_head(x)
            class_logits, box_regression = heads.box_predictor(x)
            return class_logits, box_regression
        props = [proposals]
        probs = []
        deltas = proposals
        for stage in range(heads.num_stages):
            if stage > 0:
                props = heads.refine(stage - 1, deltas, props, shapes)
            logits, deltas = heads.stage_forward(stage, features, props, shapes)
            probs.append(F.softmax(logits, -1))
        mean_logp = torch.stack(probs).mean(0).clamp_min(1e-12).log()
        return mean_logp, deltas, props[0]


def graph_specs(model: Any, arch: Arch) -> list[GraphSpec]:
    """The graphs of `model` at batch 1, on a copy with weight standardisation folded, in eval mode.

    One-stage models use the profiling layer's `network_body` unchanged (so the deployed graph is
    the `network` scope that was timed); two-stage models are cut around the RPN's NMS.
    """
    image = torch.rand(body_input_shape(arch))
    if not is_two_stage(model):
        return [GraphSpec("body", network_body(model, arch), ["images"], (image,), head_output_names(model))]
    model = fold_weight_standardization(copy.deepcopy(model)).eval()
    rpn = RpnBody(model).eval()
    with torch.no_grad():
        outs = rpn(image)
    levels = roi_level_names(model)
    n = model.rpn.post_nms_top_n()
    proposals = random_proposals(n, arch)
    roi_outputs = ["mean_logp", "deltas", "refined_proposals"] if hasattr(model.roi_heads, "stage_forward") \
        else ["class_logits", "box_regression"]
    image_size = (arch.size.height, arch.size.width)
    return [
        GraphSpec("rpn", rpn, ["images"], (image,), [*levels, "objectness", "rpn_deltas"]),
        GraphSpec("roi", RoiBody(model, image_size).eval(), [*levels, "proposals"],
                  (*[t.detach() for t in outs[: len(levels)]], proposals), roi_outputs),
    ]


def random_proposals(n: int, arch: Arch, seed: int = 0) -> torch.Tensor:
    """`n` plausible boxes inside the image (example input for the RoI graph)."""
    g = torch.Generator().manual_seed(seed)
    w, h = arch.size.width, arch.size.height
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
    return torch.cat([xy, (xy + wh).minimum(torch.tensor([float(w), float(h)]))], 1)


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

    def dense(self, outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detections (boxes in input pixels, scores, labels 1..K) from the body's outputs."""
        keys = head_output_names(self.model)
        split = {k: list(t.float().split(self.anchors_per_level, dim=1)) for k, t in zip(keys, outputs, strict=True)}
        anchors = [list(self.anchors.split(self.anchors_per_level))]
        return self.model.postprocess_detections(split, anchors, [self.image_size])[0]

    def proposals(self, objectness: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN proposals after the RPN's own filtering: (valid [n, 4], padded to the RoI graph's [R, 4])."""
        rpn = self.model.rpn
        boxes = rpn.box_coder.decode(deltas.float(), [self.anchors]).view(1, -1, 4)
        kept, _ = rpn.filter_proposals(boxes, objectness.float(), [self.image_size], self.anchors_per_level)
        valid = kept[0]
        padded = torch.tensor(PAD_BOX).repeat(self.num_proposals, 1)
        padded[: len(valid)] = valid
        return valid, padded

    def rcnn(self, outputs: list[torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detections from the RoI graph's outputs for the first len(valid) (real) proposals."""
        n = len(valid)
        heads = self.model.roi_heads
        if len(outputs) == 3:  # cascade: averaged log-probabilities, agnostic deltas, refined proposals
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
