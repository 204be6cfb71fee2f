"""The traced `network` scope and its module pieces, for export and latency profiling.

The body takes images already normalised and padded (`body_input_shape`) and returns raw tensors:
backbone + neck + dense-head outputs, or for two-stage models the RPN head outputs and the RoI
stage run on a FIXED set of proposals per image. Nothing in it depends on data (no decoding to
detections, no NMS, no top-k), so `torch.onnx.export(..., dynamo=True)` handles it.

Fixed proposals: `fixed_proposals(arch, n)` draws n boxes per image from a seeded generator
(centres uniform over the image, sides log-uniform from 1/16 to 3/4 of the short side, aspect
1/2-2), stored as a buffer. Their FPN level (torchvision's LevelMapper, as MultiScaleRoIAlign
uses it) is computed once at construction and the boxes are stored sorted by level, so the RoI
stage is one `torchvision.ops.roi_align` per level on static slices: the same op and parameters
MultiScaleRoIAlign runs, without its data-dependent `where`. Cascade stages decode the refined
boxes as at inference but keep each RoI on its first level (same cost; a real run may re-map a
few boxes). n is `DetectorSettings.proposals_test`: 100 for small inputs, 300 otherwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

from smnas_trt.models.backbones import DetectorFeatures
from smnas_trt.models.cascade import CascadeRoIHeads
from smnas_trt.models.detector import (
    ROI_OUTPUT_SIZE,
    ROI_SAMPLING_RATIO,
    SIZE_DIVISIBLE,
    anchor_generator,
    build_detector,
    detector_settings,
)
from smnas_trt.models.layers import fold_weight_standardization
from smnas_trt.space.arch import Arch, is_bottleneck

DEFAULT_NUM_CLASSES = 81  # COCO: 80 classes + background
PROPOSAL_SEED = 0
PieceKind = str  # 'stem', 'stage', 'neck', 'head', 'rpn', 'roi'


def body_input_shape(arch: Arch, batch: int = 1) -> tuple[int, int, int, int]:
    """(B, 3, H, W) of the body input: the arch's size padded up to a multiple of 32, as the transform does."""
    pad = SIZE_DIVISIBLE
    return (batch, 3, math.ceil(arch.size.height / pad) * pad, math.ceil(arch.size.width / pad) * pad)


def level_hw(arch: Arch, level: int) -> tuple[int, int]:
    """Spatial size of pyramid level `level` for the padded input (P6/P7 round up, like their stride-2 ops)."""
    _, _, h, w = body_input_shape(arch)
    for _ in range(min(level, 5)):
        h, w = h // 2, w // 2
    for _ in range(level - 5):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def pooled_levels(arch: Arch) -> tuple[int, ...]:
    """Levels the RoI stage reads: P{min}..P5 (higher levels serve the RPN only)."""
    return tuple(level for level in arch.neck.levels if level <= 5)


def fixed_proposals(arch: Arch, n: int) -> torch.Tensor:
    """n deterministic boxes (x1, y1, x2, y2) inside the arch's W x H (see the module docstring)."""
    g = torch.Generator().manual_seed(PROPOSAL_SEED)
    w, h = arch.size.width, arch.size.height
    short = min(w, h)
    u = torch.rand(n, 4, generator=g, dtype=torch.float64, device="cpu")
    cx, cy = u[:, 0] * w, u[:, 1] * h
    side = short / 16 * (12.0 ** u[:, 2])  # log-uniform: short/16 .. 3/4 short
    aspect = 2.0 ** (2 * u[:, 3] - 1)  # 1/2 .. 2
    bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).float()
    return box_ops.clip_boxes_to_image(boxes, (h, w))


def decode_boxes(coder: Any, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's `BoxCoder.decode_single`, with Python floats where it builds `torch.tensor(0.5)`:
    that is a host-to-device copy on CUDA, which CUDA graph capture refuses."""
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


class RoIStage(nn.Module):
    """RoIAlign + box head(s) + predictor(s) on fixed proposals; forward(*pooled_level_features)."""

    proposals: torch.Tensor

    def __init__(self, arch: Arch, roi_heads: Any, num_proposals: int) -> None:
        super().__init__()
        settings = detector_settings(arch)
        if isinstance(roi_heads, CascadeRoIHeads):
            self.box_heads = nn.ModuleList(roi_heads.box_heads)
            self.box_predictors = nn.ModuleList(roi_heads.box_predictors)
            self.coders = list(roi_heads.stage_coders)
        else:
            self.box_heads = nn.ModuleList([roi_heads.box_head])
            self.box_predictors = nn.ModuleList([roi_heads.box_predictor])
            self.coders = [roi_heads.box_coder]
        levels = pooled_levels(arch)
        self.scales = [2.0**-level for level in levels]
        self.image_hw = (arch.size.height, arch.size.width)
        boxes = fixed_proposals(arch, num_proposals)
        mapper = LevelMapper(levels[0], levels[-1], canonical_scale=settings.canonical_scale)
        lvl = mapper([boxes])
        order = torch.argsort(lvl, stable=True)
        self.level_counts = [int((lvl == i).sum()) for i in range(len(levels))]
        device = next(self.box_heads.parameters()).device
        self.register_buffer("proposals", boxes[order].to(device), persistent=False)

    @property
    def num_proposals(self) -> int:
        return int(self.proposals.shape[0])

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # A Python int, so the legacy tracer records the slices below as constants (it mis-records
        # slice ends built from a traced size); bodies are exported at a fixed batch anyway.
        batch = int(features[0].shape[0])
        segments, start = [], 0
        for count in self.level_counts:
            segments.append((start, count))
            start += count * batch
        # Level-major, then image: level l holds `count` boxes of image 0, then of image 1, ...
        boxes = torch.cat([self.proposals[s:s + c].repeat(batch, 1) for s, c in self._proposal_slices()])
        image_idx = torch.cat([torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(c)
                               for c in self.level_counts])
        outputs: list[torch.Tensor] = []
        for stage, (head, predictor) in enumerate(zip(self.box_heads, self.box_predictors, strict=True)):
            pooled = []
            for (s, c), feat, scale in zip(segments, features, self.scales, strict=True):
                if c == 0:
                    continue
                rois = torch.cat([image_idx[s:s + c * batch, None], boxes[s:s + c * batch]], 1)
                pooled.append(roi_align(feat, rois, ROI_OUTPUT_SIZE, scale, ROI_SAMPLING_RATIO, False))
            class_logits, deltas = predictor(head(torch.cat(pooled)))
            outputs += [class_logits, deltas]
            if stage + 1 < len(self.box_heads):
                boxes = box_ops.clip_boxes_to_image(decode_boxes(self.coders[stage], deltas, boxes), self.image_hw)
        return tuple(outputs)

    def _proposal_slices(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for c in self.level_counts:
            out.append((start, c))
            start += c
        return out


class DenseHeadPiece(nn.Module):
    """torchvision RetinaNet/FCOS head on a tuple of levels; returns its raw tensors as a tuple."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.head(list(features)).values())


class RPNPiece(nn.Module):
    """torchvision RPNHead: objectness logits per level, then box deltas per level."""

    def __init__(self, rpn_head: nn.Module) -> None:
        super().__init__()
        self.rpn_head = rpn_head

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, deltas = self.rpn_head(list(features))
        return (*logits, *deltas)


class NeckPiece(nn.Module):
    """FPN on a tuple of backbone maps; returns all pyramid levels."""

    def __init__(self, features: DetectorFeatures) -> None:
        super().__init__()
        assert features.fpn is not None
        self.fpn = features.fpn
        self.names = [f"p{level}" for level in features.in_levels]

    def forward(self, *maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.fpn(dict(zip(self.names, maps, strict=True))).values())


class NetworkBody(nn.Module):
    """images [B, 3, H, W] (normalised, padded) -> tuple of raw head tensors."""

    def __init__(self, arch: Arch, model: Any, num_proposals: int | None = None) -> None:
        super().__init__()
        self.features: DetectorFeatures = model.backbone
        self.roi: RoIStage | None = None
        if arch.head.two_stage:
            self.head: nn.Module = RPNPiece(model.rpn.head)
            n = num_proposals or detector_settings(arch).proposals_test
            self.roi = RoIStage(arch, model.roi_heads, n)
            self.num_pooled = len(pooled_levels(arch))
        else:
            self.head = DenseHeadPiece(model.head)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = tuple(self.features(images).values())
        outputs = self.head(*feats)
        if self.roi is not None:
            outputs = (*outputs, *self.roi(*feats[:self.num_pooled]))
        return outputs


def network_body(model: nn.Module, arch: Arch, num_proposals: int | None = None) -> NetworkBody:
    """The `network` scope of `model` (built by build_detector for `arch`), ready for export.

    Works on a deep copy: WS folded, eval mode; `model` is untouched. Two-stage bodies run the RoI
    stage on `num_proposals` fixed boxes per image (default: the RPN's test-time post-NMS count).
    Outputs: one-stage RetinaNet (cls_logits [B, A_total, K+1], bbox_regression [B, A_total, 4]),
    FCOS (+ bbox_ctrness [B, A_total, 1]); two-stage: RPN objectness per level, RPN deltas per level,
    then per R-CNN stage (class_logits [B*P, K+1], deltas [B*P, 4(K+1)] for 2fc or [B*P, 4] cascade).
    """
    model = fold_weight_standardization(copy.deepcopy(model))
    return NetworkBody(arch, model, num_proposals).eval()


# ---------------------------------------------------------------------------------------------- pieces
@dataclass
class ModulePiece:
    """One timeable module: `key` names its type and every gene/shape it depends on (dedupes across archs)."""

    key: str
    kind: PieceKind
    name: str  # position in this arch: stem, stage1..stage4, neck, head, rpn, roi
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    output_shapes: Sequence[tuple[int, ...]] = field(default_factory=list)


def _shape(t: Sequence[int]) -> str:
    return "x".join(map(str, t))


def _block_name(arch: Arch) -> str:
    b = arch.backbone
    if b.kind == "resnext":
        return f"xbottleneck{b.groups}x{b.group_width}d"
    return "bottleneck" if is_bottleneck(b.depth) else "basic"


def _make(shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    return torch.zeros(tuple(shape), device=device)


def module_pieces(arch: Arch, batch: int = 1, num_classes: int = DEFAULT_NUM_CLASSES,
                  device: torch.device | str = "cpu", model: nn.Module | None = None,
                  from_scratch: bool = True) -> list[ModulePiece]:
    """Stem, each backbone stage, neck, dense head or RPN head, and RoI stage, WS folded, eval mode.

    Inputs are zero tensors of the shapes each piece sees inside the body (`device="meta"` gives
    shape-only tensors for counting). Summing the pieces approximates the body. Pass `model` (from
    build_detector on this arch) to reuse its modules; otherwise one is built with `from_scratch`
    (default GN+WS, what the search trains and deploys; counting uses BatchNorm, which has the same
    parameters and FLOPs and is much faster on the meta device).
    """
    if model is None:
        with torch.device(device):
            model = build_detector(arch, num_classes, from_scratch=from_scratch)
    else:
        model = copy.deepcopy(model)
    det: Any = fold_weight_standardization(model).eval()  # torchvision parts are untyped attributes
    features: DetectorFeatures = det.backbone
    body = features.body
    b = arch.backbone
    shape_in = body_input_shape(arch, batch)
    pieces: list[ModulePiece] = []

    if b.kind == "mobilenetv2":
        family = f"mbv2w{b.width_mult:g}"
        stem_key = f"stem:{family}:in{_shape(shape_in)}"
        stem_stride = 2
    else:
        family = _block_name(arch)
        stem_key = f"stem:resnet:base{b.base}:in{_shape(shape_in)}"
        stem_stride = 4
    h, w = shape_in[2] // stem_stride, shape_in[3] // stem_stride
    stem_last: Any = body.stem[-1]  # type: ignore[index]
    stem_out = (batch, int(stem_last.out_channels), h, w)
    pieces.append(ModulePiece(stem_key, "stem", "stem", body.stem, (_make(shape_in, device),), [stem_out]))

    cur = stem_out
    for i, stage in enumerate(body.stages):
        level = i + 2
        lh, lw = level_hw(arch, level)
        out = (batch, body.channels[i], lh, lw)
        if b.kind == "mobilenetv2":
            key = f"stage:{family}:s{i + 1}:in{_shape(cur)}"
        else:
            planes_before = b.stage_planes()[i][0] // (2 if b.stages[i][0] == "2" else 1)
            key = f"stage:{family}:in{_shape(cur)}:stride{1 if i == 0 else 2}:planes{planes_before}:{b.stages[i]}"
        pieces.append(ModulePiece(key, "stage", f"stage{i + 1}", stage, (_make(cur, device),), [out]))
        cur = out

    in_shapes = [(batch, body.channels[lv - 2], *level_hw(arch, lv)) for lv in features.in_levels]
    if features.fpn is not None:
        neck = arch.neck
        extra = {6: "maxpool", 7: "p6p7"}.get(neck.max_level, "none")
        key = (f"neck:fpn:in{'+'.join(_shape(s) for s in in_shapes)}:out{neck.channels}:top{neck.max_level}"
               f":{extra}")
        out_shapes = [(batch, neck.channels, *level_hw(arch, lv)) for lv in neck.levels]
        pieces.append(ModulePiece(key, "neck", "neck", NeckPiece(features), tuple(_make(s, device) for s in in_shapes),
                                  out_shapes))
        head_in = out_shapes
    else:
        head_in = in_shapes
    levels_key = "+".join(_shape(s) for s in head_in)
    head_inputs = tuple(_make(s, device) for s in head_in)
    hg = arch.head
    if hg.two_stage:
        num_anchors = anchor_generator(arch, "rpn").num_anchors_per_location()[0]
        rpn = RPNPiece(det.rpn.head)
        pieces.append(ModulePiece(f"rpn:in{levels_key}:anchors{num_anchors}", "rpn", "rpn", rpn, head_inputs,
                                  [(batch, num_anchors, *s[2:]) for s in head_in]
                                  + [(batch, 4 * num_anchors, *s[2:]) for s in head_in]))
        n = detector_settings(arch).proposals_test
        roi = RoIStage(arch, det.roi_heads, n)
        num_pooled = len(pooled_levels(arch))
        name = "2fc" if hg.kind == "2fc" else f"cascade{hg.stages}"
        # Level counts of the fixed proposals are part of the cost, so they are in the key.
        key = (f"roi:{name}:fc{hg.width}:classes{num_classes}:in{'+'.join(_shape(s) for s in head_in[:num_pooled])}"
               f":proposals{n}:levels{'-'.join(map(str, roi.level_counts))}")
        box_dim = 4 * num_classes if hg.kind == "2fc" else 4
        stage_outs: list[tuple[int, ...]] = [(batch * n, num_classes), (batch * n, box_dim)]
        outs = stage_outs * (1 if hg.kind == "2fc" else hg.stages)
        pieces.append(ModulePiece(key, "roi", "roi", roi, head_inputs[:num_pooled], outs))
    else:
        kind = "retina" if hg.kind == "retina" else "fcos"
        num_anchors = anchor_generator(arch, kind).num_anchors_per_location()[0]
        total = sum(s[2] * s[3] for s in head_in) * num_anchors
        outs = [(batch, total, num_classes), (batch, total, 4)] + ([(batch, total, 1)] if kind == "fcos" else [])
        key = f"head:{kind}:d{hg.depth}xw{hg.width}:anchors{num_anchors}:classes{num_classes}:in{levels_key}"
        pieces.append(ModulePiece(key, "head", "head", DenseHeadPiece(det.head), head_inputs, outs))
    return pieces
