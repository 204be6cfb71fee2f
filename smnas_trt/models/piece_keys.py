"""The latency-table key grammar of module pieces, spelled from the genes alone: the one place it lives.

`smnas_trt.models.pieces.module_pieces` names the pieces it builds with these functions, and the
latency predictor looks pieces up with them without building anything (featurising 100,000 archs
cannot afford tens of milliseconds of module building each). A key names the piece's type and every
gene and input shape its cost depends on, so equal keys mean equal computations. Also the shape
facts the keys need (level sizes, channels, anchors per location, RoI count), derived from the
builder's own constants. Batch is 1, as in the whole-model timings the predictor learns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

from torchvision.models._utils import _make_divisible

from smnas_trt.models.backbones import MBV2_BOUNDS
from smnas_trt.models.detector import ASPECT_RATIOS, SIZE_DIVISIBLE, size_settings
from smnas_trt.space.arch import Arch, Backbone, Head, InputSize, Neck, is_bottleneck

# torchvision MobileNetV2 inverted residual settings: expansion t, channels c, repeats n, stride s.
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))
RETINA_OCTAVES = 3  # RetinaNet anchor scales 2^0, 2^(1/3), 2^(2/3) per FPN level (detector.anchor_sizes)


# ---------------------------------------------------------------------------------------------- shapes
@cache
def level_shapes(width: int, height: int) -> tuple[tuple[int, int], ...]:
    """(h, w) at levels 0..7 of the padded body input: floor halvings to P5, then rounding up (P6, P7)."""
    h = math.ceil(height / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    w = math.ceil(width / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    shapes = [(h, w)]
    for level in range(1, 8):
        h, w = (h // 2, w // 2) if level <= 5 else ((h + 1) // 2, (w + 1) // 2)
        shapes.append((h, w))
    return tuple(shapes)


@cache
def mbv2_layers(width_mult: float) -> tuple[tuple[int, int, int, int], ...]:
    """Inverted residual layers of torchvision's MobileNetV2 features[1:18]: (cin, hidden, cout, stride)."""
    cin = _make_divisible(32 * width_mult, 8)
    layers = []
    for t, ch, n, s in MBV2_SETTINGS:
        cout = _make_divisible(ch * width_mult, 8)
        for i in range(n):
            layers.append((cin, round(cin * t), cout, s if i == 0 else 1))
            cin = cout
    return tuple(layers)


@cache
def mbv2_channels(width_mult: float) -> tuple[int, ...]:
    """Output channels of the MobileNetV2 stem and of its four stages."""
    layers = mbv2_layers(width_mult)
    return tuple(layers[MBV2_BOUNDS[i + 1] - 2][2] for i in range(5))


def backbone_channels(backbone: Backbone) -> tuple[int, ...]:
    """C2..C5 output channels."""
    if backbone.kind == "mobilenetv2":
        return mbv2_channels(backbone.width_mult)[1:]
    return tuple(backbone.stage_channels())


def single_map_anchor_sizes(short: int) -> int:
    """Anchor sizes on a single C4/C5 map: powers of two from ~short/25 up to 3/4 of the short side."""
    lo = 2 ** math.ceil(math.log2(short / 25))
    return max(1, sum(1 for i in range(8) if lo * 2**i <= 0.75 * short))


def proposals_for(size: InputSize) -> int:
    """RoIs per image of the RoI graph (the RPN's test-time post-NMS count)."""
    return size_settings(size).proposals_test


def head_anchors(size: InputSize, fpn: bool, head_kind: str) -> int:
    """Anchors per location of a head (detector.anchor_sizes x aspect ratios)."""
    if head_kind == "fcos":
        return 1
    if not fpn:
        return single_map_anchor_sizes(min(size.width, size.height)) * len(ASPECT_RATIOS)
    return (RETINA_OCTAVES if head_kind == "retina" else 1) * len(ASPECT_RATIOS)


# ---------------------------------------------------------------------------------------------- keys

PIECE_KINDS = ("stem", "stage", "neck", "head", "rpn", "roi")


def _shape(dims: Sequence[int]) -> str:
    return "x".join(map(str, dims))


def _level(size: InputSize, level: int) -> tuple[int, int]:
    return level_shapes(size.width, size.height)[level]


def _family(b: Backbone) -> str:
    if b.kind == "mobilenetv2":
        return f"mbv2w{b.width_mult:g}"
    if b.kind == "resnext":
        return f"xbottleneck{b.groups}x{b.group_width}d"
    return "bottleneck" if is_bottleneck(b.depth) else "basic"


def stem_key(size: InputSize, b: Backbone) -> str:
    shape_in = (1, 3, *_level(size, 0))
    if b.kind == "mobilenetv2":
        return f"stem:mbv2w{b.width_mult:g}:in{_shape(shape_in)}"
    return f"stem:resnet:base{b.base}:in{_shape(shape_in)}"


def stage_key(size: InputSize, b: Backbone, stage: int, doublings_before: int) -> str:
    """Key of backbone stage `stage` (0..3); its input is the stem output or the previous stage's."""
    if stage == 0:
        if b.kind == "mobilenetv2":
            cur = (1, mbv2_channels(b.width_mult)[0], *_level(size, 1))
        else:
            cur = (1, b.base, *_level(size, 2))
    elif b.kind == "mobilenetv2":
        cur = (1, mbv2_channels(b.width_mult)[stage], *_level(size, stage + 1))
    else:  # the previous stage's output: its last planes (base doubled per "2" so far) times the expansion
        cur = (1, b.base * 2**doublings_before * (4 if is_bottleneck(b.depth) else 1), *_level(size, stage + 1))
    if b.kind == "mobilenetv2":
        return f"stage:{_family(b)}:s{stage + 1}:in{_shape(cur)}"
    planes_before = b.base * 2**doublings_before
    return (f"stage:{_family(b)}:in{_shape(cur)}:stride{1 if stage == 0 else 2}:planes{planes_before}"
            f":{b.stages[stage]}")


def _neck_shapes(size: InputSize, channels: tuple[int, ...], neck: Neck) -> tuple[list[str], list[str]]:
    """(input map shapes, shapes the heads see) as key fragments."""
    top = 5 if neck.kind == "fpn" else neck.max_level
    ins = [_shape((1, channels[lv - 2], *_level(size, lv))) for lv in range(neck.min_level, top + 1)]
    if neck.kind != "fpn":
        return ins, ins
    return ins, [_shape((1, neck.channels, *_level(size, lv))) for lv in neck.levels]


@cache
def neck_key(size: InputSize, channels: tuple[int, ...], neck: Neck) -> str | None:
    if neck.kind != "fpn":
        return None
    ins, _ = _neck_shapes(size, channels, neck)
    extra = {6: "maxpool", 7: "p6p7"}.get(neck.max_level, "none")
    return f"neck:fpn:in{'+'.join(ins)}:out{neck.channels}:top{neck.max_level}:{extra}"


@cache
def head_keys(size: InputSize, channels: tuple[int, ...], neck: Neck, head: Head, num_classes: int
              ) -> tuple[tuple[str, str], ...]:
    """(kind, key) of the dense head, or of the RPN head and the RoI stage."""
    _, head_in = _neck_shapes(size, channels, neck)
    levels_key = "+".join(head_in)
    fpn = neck.kind == "fpn"
    if head.two_stage:
        anchors = head_anchors(size, fpn, "rpn")
        n = proposals_for(size)
        pooled = tuple(lv for lv in neck.levels if lv <= 5)
        name = "2fc" if head.kind == "2fc" else f"cascade{head.stages}"
        # Every RoI is pooled at every level (graphs.LevelRoIAlign): the cost does not depend on where
        # the proposals fall, so the key holds only their count.
        roi = (f"roi:{name}:fc{head.width}:classes{num_classes}:in{'+'.join(head_in[:len(pooled)])}"
               f":proposals{n}")
        return (("rpn", f"rpn:in{levels_key}:anchors{anchors}"), ("roi", roi))
    anchors = head_anchors(size, fpn, head.kind)
    return (("head", f"head:{head.kind}:d{head.depth}xw{head.width}:anchors{anchors}:classes{num_classes}"
                     f":in{levels_key}"),)


def arch_piece_keys(arch: Arch, num_classes: int) -> list[tuple[str, str]]:
    """(kind, key) of every piece of `arch`, in module_pieces order."""
    b, size, neck = arch.backbone, arch.size, arch.neck
    built = 4 if neck.kind == "fpn" else neck.max_level - 1
    out = [("stem", stem_key(size, b))]
    before = 0
    for s in range(built):
        out.append(("stage", stage_key(size, b, s, before)))
        if b.kind != "mobilenetv2":
            before += b.stages[s].count("2")
    channels = backbone_channels(b)
    nk = neck_key(size, channels, neck)
    if nk is not None:
        out.append(("neck", nk))
    out += head_keys(size, channels, neck, arch.head, num_classes)
    return out
