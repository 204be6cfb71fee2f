"""Analytic cost counts of a detector's timed body, from its genes alone.

Mirrors `smnas_trt.models` (builder and `detector_graphs`); a test checks FLOPs and parameters against
`smnas_trt.models.counts.count_flops` (torch's FlopCounterMode on the real modules). FLOPs follow
FlopCounterMode: 2 x multiply-accumulates of every conv and linear layer; norms, activations,
pooling and RoIAlign are not counted. Alongside: parameters, output elements of conv/linear layers
(activation traffic), elements passing through a GroupNorm, and the number of conv/linear layers
(per-kernel overhead dominates small models on CPU).

The body runs on the input padded to a multiple of 32, so levels 1..5 are exact halvings of the
padded size and P6/P7 round up.

Stage counts are split so the featuriser can cache them without the input size and (for plain
ResNets) without the base width: `stage_coefficients` gives FLOPs/elements per pixel of the stage's
input and output resolution at base 1; FLOPs and weights scale with base^2, elements, norm/bias
parameters with base. ResNeXt widths round (`int(planes * width / 64) * groups`), so they are
computed at their actual base.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cache

from torchvision.models._utils import _make_divisible

from smnas_trt.models.backbones import MBV2_BOUNDS
from smnas_trt.models.detector import ROI_OUTPUT_SIZE
from smnas_trt.models.piece_keys import (
    backbone_channels,
    head_anchors,
    level_shapes,
    mbv2_channels,
    mbv2_layers,
    proposals_for,
)
from smnas_trt.space.arch import Arch, Backbone, InputSize, is_bottleneck

__all__ = ["backbone_channels", "head_anchors", "level_shapes", "mbv2_channels", "proposals_for"]  # re-exported

# What every count tuple holds, in order.
COUNT_FIELDS = ("flops", "params", "act_elems", "norm_elems", "layers")
N_COUNTS = len(COUNT_FIELDS)
ZERO: tuple[float, ...] = (0.0,) * N_COUNTS



class Counter:
    """Accumulates the counts of conv/linear layers as they are described."""

    __slots__ = ("act_elems", "flops", "layers", "norm_elems", "params", "params_lin")

    def __init__(self) -> None:
        self.flops = 0.0
        self.params = 0.0  # weights
        self.params_lin = 0.0  # biases and norm affine parameters (linear in width)
        self.act_elems = 0.0
        self.norm_elems = 0.0
        self.layers = 0.0

    def conv(self, cin: int, cout: int, k: int, hw_out: float, *, groups: int = 1, bias: bool = False,
             norm: bool = False, shared: bool = False) -> None:
        """`shared`: the weights were counted already (heads run the same layers on every level)."""
        self.flops += 2.0 * cout * (cin // groups) * k * k * hw_out
        if not shared:
            self.params += cout * (cin // groups) * k * k
            self.params_lin += (cout if bias else 0) + (2 * cout if norm else 0)
        self.act_elems += cout * hw_out
        self.norm_elems += cout * hw_out if norm else 0
        self.layers += 1

    def linear(self, rows: int, fin: int, fout: int) -> None:
        self.flops += 2.0 * rows * fin * fout
        self.params += fin * fout
        self.params_lin += fout
        self.act_elems += rows * fout
        self.layers += 1

    def totals(self) -> tuple[float, ...]:
        return (self.flops, self.params + self.params_lin, self.act_elems, self.norm_elems, self.layers)


def add(*parts: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(map(sum, zip(*parts, strict=True))) if parts else ZERO



def level_pixels(size: InputSize, level: int) -> int:
    h, w = level_shapes(size.width, size.height)[level]
    return h * w


# ------------------------------------------------------------------------------------------- backbone
def stem_channels(base: int) -> int:
    return max(8, base // 2)


@cache
def resnet_stem(base: int, width: int, height: int) -> tuple[float, ...]:
    size = InputSize(width, height)
    c = Counter()
    mid = stem_channels(base)
    c.conv(3, mid, 3, level_pixels(size, 1), norm=True)
    c.conv(mid, base, 3, level_pixels(size, 2), norm=True)
    return c.totals()


# Fields of `stage_coefficients`.
STAGE_COEF_FIELDS = ("flops_in", "flops_out", "act_in", "act_out", "norm_in", "norm_out", "params_quad",
                     "params_lin", "layers")


@cache
def stage_coefficients(bottleneck: bool, groups: int, group_width: int, base: int, code: str, doublings_before: int,
                       stage: int) -> tuple[float, ...]:
    """Per-pixel counts of one ResNet stage (torchvision Basic/Bottleneck blocks, SM-NAS code semantics).

    FLOPs and elements are per pixel of the stage's input (`_in`, only the strided first 1x1 of a
    bottleneck runs there) and output resolution (`_out`). Pass base=1 for plain ResNets and scale
    (FLOPs and `params_quad` by base^2, the rest by base); ResNeXt needs its real base (rounding).
    """
    expansion = 4 if bottleneck else 1
    planes = base * 2**doublings_before
    inplanes = base if stage == 0 else planes * expansion
    total = (0.0,) * len(STAGE_COEF_FIELDS)
    for j, digit in enumerate(code):
        if digit == "2":
            planes *= 2
        block = _block_coefficients(bottleneck, groups, group_width, inplanes, planes, stage > 0 and j == 0)
        total = tuple(map(operator.add, total, block))
        inplanes = planes * expansion
    return total


@cache
def _block_coefficients(bottleneck: bool, groups: int, group_width: int, inplanes: int, planes: int,
                        strided: bool) -> tuple[float, ...]:
    """`stage_coefficients` of one block (cached: far fewer distinct blocks than stage codes)."""
    at_in, at_out = Counter(), Counter()
    out = planes * (4 if bottleneck else 1)
    if bottleneck:
        mid = int(planes * (group_width / 64.0)) * groups
        (at_in if strided else at_out).conv(inplanes, mid, 1, 1, norm=True)  # torchvision strides the 3x3
        at_out.conv(mid, mid, 3, 1, groups=groups, norm=True)
        at_out.conv(mid, out, 1, 1, norm=True)
    else:
        at_out.conv(inplanes, planes, 3, 1, norm=True)
        at_out.conv(planes, planes, 3, 1, norm=True)
    if strided or inplanes != out:
        at_out.conv(inplanes, out, 1, 1, norm=True)
    return (at_in.flops, at_out.flops, at_in.act_elems, at_out.act_elems, at_in.norm_elems, at_out.norm_elems,
            at_in.params + at_out.params, at_in.params_lin + at_out.params_lin, at_in.layers + at_out.layers)


def stage_counts_from_coefficients(coef: tuple[float, ...], scale: int, hw_in: int, hw_out: int
                                   ) -> tuple[float, ...]:
    fi, fo, ai, ao, ni, no, pq, pl, layers = coef
    sq = scale * scale
    return (sq * (fi * hw_in + fo * hw_out), sq * pq + scale * pl, scale * (ai * hw_in + ao * hw_out),
            scale * (ni * hw_in + no * hw_out), layers)


def resnet_stage_counts(b: Backbone, stage: int, doublings_before: int, size: InputSize) -> tuple[float, ...]:
    bottleneck = is_bottleneck(b.depth)
    if b.kind == "resnext":
        coef = stage_coefficients(bottleneck, b.groups, b.group_width, b.base, b.stages[stage], doublings_before,
                                  stage)
        scale = 1
    else:
        coef = stage_coefficients(bottleneck, 1, 64, 1, b.stages[stage], doublings_before, stage)
        scale = b.base
    hw_in = level_pixels(size, stage + 1 if stage else 2)
    return stage_counts_from_coefficients(coef, scale, hw_in, level_pixels(size, stage + 2))



@cache
def mbv2_part(width_mult: float, part: int, width: int, height: int) -> tuple[float, ...]:
    """Counts of the MobileNetV2 stem (part -1: features[0:2]) or stage `part` (0..3)."""
    size = InputSize(width, height)
    lo, hi = MBV2_BOUNDS[part + 1], MBV2_BOUNDS[part + 2]
    c = Counter()
    if lo == 0:
        c.conv(3, _make_divisible(32 * width_mult, 8), 3, level_pixels(size, 1), norm=True)
    level = 1  # resolution level of the input to features[1]; followed through every earlier layer
    for index, (cin, hidden, cout, stride) in enumerate(mbv2_layers(width_mult), start=1):
        if index >= hi:
            break
        level_in = level
        level += 1 if stride == 2 else 0
        if index < lo:
            continue
        if hidden != cin:
            c.conv(cin, hidden, 1, level_pixels(size, level_in), norm=True)
        c.conv(hidden, hidden, 3, level_pixels(size, level), groups=hidden, norm=True)
        c.conv(hidden, cout, 1, level_pixels(size, level), norm=True)
    return c.totals()




def built_stages(arch: Arch) -> int:
    """Stages the detector builds: none:C4 never reads C5."""
    return 4 if arch.neck.kind == "fpn" else arch.neck.max_level - 1


def backbone_stage_counts(arch: Arch) -> list[tuple[float, ...]]:
    """Counts of the stem, then each of the four stages (zeros for a stage the detector does not build)."""
    b, size = arch.backbone, arch.size
    built = built_stages(arch)
    if b.kind == "mobilenetv2":
        parts = [mbv2_part(b.width_mult, -1, size.width, size.height)]
        return parts + [mbv2_part(b.width_mult, s, size.width, size.height) if s < built else ZERO for s in range(4)]
    parts = [resnet_stem(b.base, size.width, size.height)]
    before = 0
    for s, code in enumerate(b.stages):
        parts.append(resnet_stage_counts(b, s, before, size) if s < built else ZERO)
        before += code.count("2")
    return parts


# ----------------------------------------------------------------------------------- neck and heads



@cache
def neck_counts(size: InputSize, channels: tuple[int, ...], min_level: int, max_level: int,
                neck_channels: int) -> tuple[float, ...]:
    """FPN (torchvision FeaturePyramidNetwork with norm, LastLevelP6P7 convs for P7)."""
    neck = Counter()
    for level in range(min_level, 6):
        neck.conv(channels[level - 2], neck_channels, 1, level_pixels(size, level), norm=True)  # lateral
        neck.conv(neck_channels, neck_channels, 3, level_pixels(size, level), norm=True)  # output
    if max_level == 7:
        neck.conv(neck_channels, neck_channels, 3, level_pixels(size, 6), bias=True)
        neck.conv(neck_channels, neck_channels, 3, level_pixels(size, 7), bias=True)
    return neck.totals()


@dataclass(frozen=True, slots=True)
class HeadCounts:
    dense_head: tuple[float, ...]  # RetinaNet / FCOS towers and predictors (zeros for two-stage)
    rpn: tuple[float, ...]
    roi: tuple[float, ...]  # RoI box heads and predictors, on the fixed proposal count
    anchors: int  # anchors per location of the dense head or RPN
    proposals: int  # RoIs of the timed RoI stage (0 for one-stage)
    locations: int  # head locations, summed over levels


@cache
def head_counts(size: InputSize, fpn: bool, min_level: int, max_level: int, in_channels: int, head_kind: str,
                head_stages: int, head_depth: int, head_width: int, num_classes: int) -> HeadCounts:
    levels = tuple(range(min_level, max_level + 1))
    dense, rpn, roi = Counter(), Counter(), Counter()
    proposals = 0
    anchors = head_anchors(size, fpn, head_kind)
    if head_kind in ("retina", "fcos"):
        # Classes and boxes (and FCOS centerness, on the regression tower).
        outputs = (anchors * num_classes, anchors * 4) + ((1,) if head_kind == "fcos" else ())
        for level in levels:
            hw, shared = level_pixels(size, level), level != levels[0]
            for _ in range(2):  # classification and regression towers
                for i in range(head_depth):
                    dense.conv(in_channels if i == 0 else head_width, head_width, 3, hw, norm=True, shared=shared)
            for cout in outputs:
                dense.conv(head_width, cout, 3, hw, bias=True, shared=shared)
    else:
        for level in levels:
            hw, shared = level_pixels(size, level), level != levels[0]
            rpn.conv(in_channels, in_channels, 3, hw, bias=True, shared=shared)
            rpn.conv(in_channels, anchors, 1, hw, bias=True, shared=shared)
            rpn.conv(in_channels, anchors * 4, 1, hw, bias=True, shared=shared)
        proposals = proposals_for(size)
        stages = head_stages if head_kind == "cascade" else 1
        box_outputs = 4 if head_kind == "cascade" else 4 * num_classes  # cascade boxes are class-agnostic
        for _ in range(stages):
            roi.linear(proposals, in_channels * ROI_OUTPUT_SIZE**2, head_width)
            roi.linear(proposals, head_width, head_width)
            roi.linear(proposals, head_width, num_classes)
            roi.linear(proposals, head_width, box_outputs)
    locations = sum(level_pixels(size, level) for level in levels)
    return HeadCounts(dense.totals(), rpn.totals(), roi.totals(), anchors, proposals, locations)


def head_in_channels(arch: Arch) -> int:
    if arch.neck.kind == "fpn":
        return arch.neck.channels
    return backbone_channels(arch.backbone)[arch.neck.min_level - 2]


def arch_head_counts(arch: Arch, num_classes: int) -> HeadCounts:
    n, h = arch.neck, arch.head
    return head_counts(arch.size, n.kind == "fpn", n.min_level, n.max_level, head_in_channels(arch), h.kind,
                       h.stages, h.depth, h.width, num_classes)


def arch_counts(arch: Arch, num_classes: int) -> dict[str, dict[str, float]]:
    """Counts per module (`backbone`, `neck`, `dense_head`, `rpn`, `roi`) and `total`, as dicts."""
    n = arch.neck
    neck = neck_counts(arch.size, backbone_channels(arch.backbone), n.min_level, n.max_level,
                       n.channels) if n.kind == "fpn" else ZERO
    heads = arch_head_counts(arch, num_classes)
    modules = {"backbone": add(*backbone_stage_counts(arch)), "neck": neck, "dense_head": heads.dense_head,
               "rpn": heads.rpn, "roi": heads.roi}
    modules["total"] = add(*modules.values())
    return {name: dict(zip(COUNT_FIELDS, values, strict=True)) for name, values in modules.items()}
