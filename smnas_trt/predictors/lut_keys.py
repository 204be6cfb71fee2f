"""Latency-table shape keys of an arch's module pieces, without building any module.

`smnas_trt.models.body.module_pieces` builds the detector to name its pieces; that takes tens of
milliseconds, far too slow for featurising 100,000 archs. These functions spell the same keys from
the genes (a test compares them with `module_pieces` on many archs, so a change in the builder's key
format is caught). Batch is 1, as in the whole-model timings the predictor learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from smnas_trt.predictors.analytic import backbone_channels, head_anchors, level_shapes, mbv2_channels, proposals_for
from smnas_trt.space.arch import Arch, Backbone, Head, InputSize, Neck, is_bottleneck

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
def roi_level_counts(size: InputSize, levels: tuple[int, ...], proposals: int) -> tuple[int, ...]:
    """How the body's fixed proposals split over the pooled levels (part of the RoI key; torch, cached)."""
    from torchvision.ops.poolers import LevelMapper

    from smnas_trt.models.body import fixed_proposals
    from smnas_trt.models.detector import detector_settings
    from smnas_trt.space.arch import Head as HeadGene
    from smnas_trt.space.arch import Neck as NeckGene

    # fixed_proposals and detector_settings read only the size of the arch.
    arch = Arch(size, Backbone("mobilenetv2", width_mult=1.0), NeckGene("none", 4, 4), True, HeadGene("2fc", 1, 0, 8))
    boxes = fixed_proposals(arch, proposals)
    mapper = LevelMapper(levels[0], levels[-1], canonical_scale=detector_settings(arch).canonical_scale)
    lvl = mapper([boxes])
    return tuple(int((lvl == i).sum()) for i in range(len(levels)))


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
        counts = roi_level_counts(size, pooled, n)
        name = "2fc" if head.kind == "2fc" else f"cascade{head.stages}"
        roi = (f"roi:{name}:fc{head.width}:classes{num_classes}:in{'+'.join(head_in[:len(pooled)])}"
               f":proposals{n}:levels{'-'.join(map(str, counts))}")
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
