"""Module pieces of a detector, timed one by one for the latency table's per-module entries.

A piece is one module of the `network` scope at the input shapes it sees inside the detector's
graphs (`models/graphs.py`): the stem, each backbone stage, the FPN, the dense head or the RPN head,
and the RoI graph on its fixed proposals. Its key (`models/piece_keys.py`) names the type and every
gene and shape its cost depends on, so pieces dedupe across architectures. Summing the pieces
approximates the whole graph (the LUT-sum baseline); the predictor uses the sums as features.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from smnas_trt.models import piece_keys
from smnas_trt.models.backbones import DetectorFeatures
from smnas_trt.models.detector import anchor_generator, build_detector
from smnas_trt.models.graphs import RoiGraph, body_input_shape, fixed_proposals, num_proposals, pooled_levels
from smnas_trt.models.layers import fold_weight_standardization
from smnas_trt.space.arch import Arch

DEFAULT_NUM_CLASSES = 81  # COCO: 80 classes + background
PieceKind = str  # 'stem', 'stage', 'neck', 'head', 'rpn', 'roi'


def level_hw(arch: Arch, level: int) -> tuple[int, int]:
    """Spatial size of pyramid level `level` for the padded input (P6/P7 round up, like their stride-2 ops)."""
    return piece_keys.level_shapes(arch.size.width, arch.size.height)[level]


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


def _make(shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    return torch.zeros(tuple(shape), device=device)


def module_pieces(arch: Arch, batch: int = 1, num_classes: int = DEFAULT_NUM_CLASSES,
                  device: torch.device | str = "cpu", model: nn.Module | None = None,
                  from_scratch: bool = True) -> list[ModulePiece]:
    """Stem, each backbone stage, neck, dense head or RPN head, and the RoI graph, WS folded, eval mode.

    Inputs are zero tensors of the shapes each piece sees inside the graphs (`device="meta"` gives
    shape-only tensors for counting); the RoI graph gets its fixed proposals. Keys come from
    `piece_keys` (batch 1: a table is per batch size). Pass `model` (from build_detector on this arch)
    to reuse its modules; otherwise one is built with `from_scratch` (default GN+WS, what the search
    trains and deploys; counting uses BatchNorm, which has the same parameters and FLOPs and is much
    faster on the meta device).
    """
    if model is None:
        with torch.device(device):
            model = build_detector(arch, num_classes, from_scratch=from_scratch)
    else:
        model = copy.deepcopy(model)
    det: Any = fold_weight_standardization(model).eval()  # torchvision parts are untyped attributes
    features: DetectorFeatures = det.backbone
    body = features.body
    keys = iter(piece_keys.arch_piece_keys(arch, num_classes))
    shape_in = body_input_shape(arch, batch)
    pieces: list[ModulePiece] = []

    def add(kind: str, name: str, module: nn.Module, inputs: tuple[torch.Tensor, ...],
            outputs: Sequence[tuple[int, ...]]) -> None:
        key_kind, key = next(keys)
        assert key_kind == kind, (key_kind, kind)
        pieces.append(ModulePiece(key, kind, name, module, inputs, list(outputs)))

    stem_stride = 2 if arch.backbone.kind == "mobilenetv2" else 4
    stem_last: Any = body.stem[-1]  # type: ignore[index]
    stem_out = (batch, int(stem_last.out_channels), shape_in[2] // stem_stride, shape_in[3] // stem_stride)
    add("stem", "stem", body.stem, (_make(shape_in, device),), [stem_out])
    cur = stem_out
    for i, stage in enumerate(body.stages):
        out = (batch, body.channels[i], *level_hw(arch, i + 2))
        add("stage", f"stage{i + 1}", stage, (_make(cur, device),), [out])
        cur = out

    in_shapes = [(batch, body.channels[lv - 2], *level_hw(arch, lv)) for lv in features.in_levels]
    head_in = in_shapes
    if features.fpn is not None:
        head_in = [(batch, arch.neck.channels, *level_hw(arch, lv)) for lv in arch.neck.levels]
        add("neck", "neck", NeckPiece(features), tuple(_make(s, device) for s in in_shapes), head_in)
    head_inputs = tuple(_make(s, device) for s in head_in)
    hg = arch.head
    if hg.two_stage:
        num_anchors = anchor_generator(arch, "rpn").num_anchors_per_location()[0]
        add("rpn", "rpn", RPNPiece(det.rpn.head), head_inputs,
            [(batch, num_anchors, *s[2:]) for s in head_in] + [(batch, 4 * num_anchors, *s[2:]) for s in head_in])
        n = num_proposals(arch)
        proposals = fixed_proposals(arch, n).to(device).repeat(batch, 1, 1)
        num_pooled = len(pooled_levels(arch))
        box_dim = 4 * num_classes if hg.kind == "2fc" else 4
        outs: list[tuple[int, ...]] = [(batch * n, num_classes), (batch * n, box_dim)]
        if hg.kind != "2fc":
            outs.append((batch * n, 4))
        add("roi", "roi", RoiGraph(det, arch), (*head_inputs[:num_pooled], proposals), outs)
    else:
        kind = "retina" if hg.kind == "retina" else "fcos"
        num_anchors = anchor_generator(arch, kind).num_anchors_per_location()[0]
        total = sum(s[2] * s[3] for s in head_in) * num_anchors
        outs = [(batch, total, num_classes), (batch, total, 4)] + ([(batch, total, 1)] if kind == "fcos" else [])
        add("head", "head", DenseHeadPiece(det.head), head_inputs, outs)
    return pieces
