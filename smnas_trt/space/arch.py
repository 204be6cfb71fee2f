"""Architecture encoding: immutable genes, one canonical string per architecture.

Canonical form (five fields joined by ``/``)::

    {W}x{H} / {backbone} / {neck} / {rpn} / {head}
    800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3:1024

Backbone codes follow SM-NAS: ``r{depth}_{base}_{stages}``; stages are separated by ``-`` and
run at strides 1, 2, 2, 2 after a stem of two 3x3 stride-2 convs. Each digit is one block: ``1``
keeps the channel count, ``2`` doubles it. ``x{depth}({groups}x{width}d)_{base}_{stages}`` is the
ResNeXt variant and ``mbv2_{width}`` is torchvision's MobileNetV2 at a width multiplier.

Short head forms (``retina``, ``fcos``, ``2fc``, ``cascade3``) parse with default widths, so the
strings people write by hand still work; ``str()`` always prints the full form.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from smnas_trt.errors import ArchError

BackboneKind = Literal["resnet", "resnext", "mobilenetv2"]
NeckKind = Literal["none", "fpn"]
HeadKind = Literal["retina", "fcos", "2fc", "cascade"]

RESNET_DEPTHS = (18, 34, 50, 101)
RESNEXT_DEPTHS = (50, 101)
DENSE_HEADS = ("retina", "fcos")
RCNN_HEADS = ("2fc", "cascade")
DEFAULT_DENSE_DEPTH = 4
DEFAULT_DENSE_WIDTH = 256
DEFAULT_FC_WIDTH = 1024
# Output strides of the four backbone stages (C2..C5): stem /4, then strides 1, 2, 2, 2.
STAGE_STRIDES = (4, 8, 16, 32)

# Upper bounds on genes, whatever the space. The paper space goes up to 1333x800 inputs, FPN 256,
# fc 1024, base 72 and 33 blocks (ResNet-101); the bounds leave 4-8x headroom over that so any
# detector someone could train still parses, while a typo (99999x99999, fpn:...:25600) is refused
# here with the field named instead of failing much later in the builder, the exporter or an
# out-of-memory kill: at 8192x8192 the stride-4 map of a 256-channel FPN alone is 4 GiB in fp32.
MIN_SIDE = 32  # the coarsest map (stride 32) must keep at least one cell
MAX_SIDE = 8192
MAX_BASE = 512  # channels after the stem (ResNet-50: 64)
MAX_PLANES = 4096  # inner width of the widest block after the doublings (ResNet-50's last stage: 512)
MAX_BLOCKS = 64  # blocks over all four stages (ResNet-101: 33, ResNet-152: 50)
MAX_GROUPS = 128  # ResNeXt cardinality (the common ones: 32x4d, 32x8d, 64x4d)
MAX_GROUP_WIDTH = 256  # ResNeXt width per group
MAX_FPN_CHANNELS = 2048
MAX_DENSE_DEPTH = 16  # conv tower depth of RetinaNet/FCOS heads (standard: 4)
MAX_DENSE_WIDTH = 2048
MAX_FC_WIDTH = 8192  # R-CNN box head fc width (standard: 1024)
MIN_WIDTH = 8  # head widths: GroupNorm needs a few channels per group
MIN_WIDTH_MULT, MAX_WIDTH_MULT = 0.1, 2.0  # MobileNetV2 width multiplier, two decimals at most

# Standard block layouts: the SM-NAS code of each torchvision ResNet.
STANDARD_STAGES: dict[int, tuple[str, str, str, str]] = {
    18: ("11", "21", "21", "21"),
    34: ("111", "2111", "211111", "211"),
    50: ("111", "2111", "211111", "211"),
    101: ("111", "2111", "2" + "1" * 22, "211"),
}


def is_bottleneck(depth: int) -> bool:
    """BasicBlock for 18/34, Bottleneck (expansion 4) for 50/101, as in torchvision."""
    return depth >= 50


def format_width_mult(w: float) -> str:
    text = f"{w:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


@dataclass(frozen=True, slots=True)
class InputSize:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True)
class Backbone:
    kind: BackboneKind
    depth: int = 0  # 18/34/50/101 (ResNet), 50/101 (ResNeXt); 0 for MobileNetV2
    base: int = 0  # channels after the stem (ResNet/ResNeXt)
    stages: tuple[str, ...] = ()  # four strings of '1'/'2'
    groups: int = 0  # ResNeXt cardinality
    group_width: int = 0  # ResNeXt width per group
    width_mult: float = 1.0  # MobileNetV2

    def __str__(self) -> str:
        if self.kind == "mobilenetv2":
            return f"mbv2_{format_width_mult(self.width_mult)}"
        code = "-".join(self.stages)
        if self.kind == "resnext":
            return f"x{self.depth}({self.groups}x{self.group_width}d)_{self.base}_{code}"
        return f"r{self.depth}_{self.base}_{code}"

    @property
    def num_blocks(self) -> int:
        return sum(len(s) for s in self.stages)

    @property
    def num_doublings(self) -> int:
        return sum(s.count("2") for s in self.stages)

    def stage_planes(self) -> list[list[int]]:
        """Inner width ("planes") of every block, stage by stage, under SM-NAS semantics."""
        planes = self.base
        out: list[list[int]] = []
        for stage in self.stages:
            row = []
            for digit in stage:
                if digit == "2":
                    planes *= 2
                row.append(planes)
            out.append(row)
        return out

    def stage_channels(self) -> list[int]:
        """Output channels of C2..C5 (ResNet families; MobileNetV2 is resolved by the builder)."""
        expansion = 4 if is_bottleneck(self.depth) else 1
        return [row[-1] * expansion for row in self.stage_planes()]


@dataclass(frozen=True, slots=True)
class Neck:
    kind: NeckKind
    min_level: int  # for "none", min_level == max_level is the single map used (4 = C4, 5 = C5)
    max_level: int
    channels: int = 0  # FPN output channels; 0 for "none"

    def __str__(self) -> str:
        if self.kind == "none":
            return f"none:C{self.min_level}"
        return f"fpn:P{self.min_level}-P{self.max_level}:{self.channels}"

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(self.min_level, self.max_level + 1))


@dataclass(frozen=True, slots=True)
class Head:
    kind: HeadKind
    stages: int = 1  # Cascade R-CNN stages (2-3); 1 otherwise
    depth: int = 0  # conv tower depth of a dense head; 0 for R-CNN heads
    width: int = 0  # conv width (dense) or fc width (R-CNN)

    def __str__(self) -> str:
        if self.kind in DENSE_HEADS:
            return f"{self.kind}:{self.depth}x{self.width}"
        name = "2fc" if self.kind == "2fc" else f"cascade{self.stages}"
        return f"{name}:{self.width}"

    @property
    def two_stage(self) -> bool:
        return self.kind in RCNN_HEADS


@dataclass(frozen=True, slots=True)
class Arch:
    size: InputSize
    backbone: Backbone
    neck: Neck
    rpn: bool
    head: Head

    def __post_init__(self) -> None:
        check_arch(self)

    def __str__(self) -> str:
        return self.canonical

    @property
    def canonical(self) -> str:
        rpn = "rpn" if self.rpn else "none"
        return f"{self.size}/{self.backbone}/{self.neck}/{rpn}/{self.head}"

    @property
    def id(self) -> str:
        """Stable short id: the first 10 hex digits of SHA-1 of the canonical string."""
        return arch_id(self.canonical)

    @property
    def two_stage(self) -> bool:
        return self.rpn

    def feature_levels(self) -> tuple[int, ...]:
        """Pyramid levels the heads see (2 = stride 4 ... 7 = stride 128)."""
        return self.neck.levels


def arch_id(canonical: str) -> str:
    return hashlib.sha1(canonical.encode()).hexdigest()[:10]


def check_arch(a: Arch) -> None:
    """Rules every architecture obeys, whatever the search space. Raises ArchError."""
    if a.size.width < MIN_SIDE or a.size.height < MIN_SIDE:
        raise ArchError(f"size: {a.size} is too small (at least {MIN_SIDE}x{MIN_SIDE})")
    if a.size.width > MAX_SIDE or a.size.height > MAX_SIDE:
        raise ArchError(f"size: {a.size} is too large (at most {MAX_SIDE} per side)")
    check_backbone(a.backbone)
    n = a.neck
    if n.kind == "none":
        if n.min_level != n.max_level or n.min_level not in (4, 5):
            raise ArchError(f"neck: {n} is invalid; without FPN use a single map, allowed: none:C4, none:C5")
    elif n.kind == "fpn":
        if not (2 <= n.min_level <= 5 and max(n.min_level, 5) <= n.max_level <= 7):
            raise ArchError(f"neck: {n} is invalid; FPN levels run from P2..P5 up to P5..P7 (e.g. P2-P5, P3-P7)")
        if n.channels <= 0:
            raise ArchError(f"neck: FPN channels must be positive, got {n.channels}")
        if n.channels > MAX_FPN_CHANNELS:
            raise ArchError(f"neck: FPN channels {n.channels} is too large (at most {MAX_FPN_CHANNELS})")
    else:
        raise ArchError(f"neck: unknown kind {n.kind!r}; allowed: none, fpn")
    h = a.head
    if h.kind not in DENSE_HEADS + RCNN_HEADS:
        raise ArchError(f"head: unknown kind {h.kind!r}; allowed: retina, fcos, 2fc, cascade2, cascade3")
    if a.rpn and not h.two_stage:
        raise ArchError(f"head: {h.kind} is a one-stage dense head and cannot follow an RPN; "
                        "with rpn use 2fc or cascade2/cascade3, or set rpn to none")
    if not a.rpn and h.two_stage:
        raise ArchError(f"rpn: the {h.kind} R-CNN head needs an RPN (set rpn) or use a dense head: retina, fcos")
    if h.kind == "cascade" and h.stages not in (2, 3):
        raise ArchError(f"head: cascade{h.stages} is invalid; allowed: cascade2, cascade3")
    if h.kind in DENSE_HEADS:
        if h.depth < 1 or h.width < MIN_WIDTH:
            raise ArchError(f"head: {h} needs depth >= 1 and width >= {MIN_WIDTH}")
        if h.depth > MAX_DENSE_DEPTH:
            raise ArchError(f"head: {h} depth {h.depth} is too large (at most {MAX_DENSE_DEPTH})")
        if h.width > MAX_DENSE_WIDTH:
            raise ArchError(f"head: {h} width {h.width} is too large (at most {MAX_DENSE_WIDTH})")
    if h.two_stage:
        if h.width < MIN_WIDTH:
            raise ArchError(f"head: {h} needs an fc width >= {MIN_WIDTH}")
        if h.width > MAX_FC_WIDTH:
            raise ArchError(f"head: {h} fc width {h.width} is too large (at most {MAX_FC_WIDTH})")


_STAGES_RE = re.compile(r"[12]+-[12]+-[12]+-[12]+")


def check_backbone(b: Backbone) -> None:
    if b.kind == "mobilenetv2":
        if not MIN_WIDTH_MULT <= b.width_mult <= MAX_WIDTH_MULT:
            raise ArchError(f"backbone: MobileNetV2 width multiplier {b.width_mult} is outside "
                            f"{MIN_WIDTH_MULT}-{MAX_WIDTH_MULT}")
        if round(b.width_mult, 2) != b.width_mult:
            # The canonical string prints two decimals; more would not survive a round trip.
            raise ArchError(f"backbone: MobileNetV2 width multiplier {b.width_mult} has more than two decimals")
        return
    depths = RESNET_DEPTHS if b.kind == "resnet" else RESNEXT_DEPTHS
    if b.kind not in ("resnet", "resnext"):
        raise ArchError(f"backbone: unknown family {b.kind!r}; allowed: r (ResNet), x (ResNeXt), mbv2")
    if b.depth not in depths:
        raise ArchError(f"backbone: depth {b.depth} is not a {b.kind} depth; allowed: {', '.join(map(str, depths))}")
    if b.base < 8 or b.base % 8:
        raise ArchError(f"backbone: base channels {b.base} must be a positive multiple of 8")
    if b.base > MAX_BASE:
        raise ArchError(f"backbone: base channels {b.base} is too large (at most {MAX_BASE})")
    code = "-".join(b.stages)
    if len(b.stages) != 4 or not _STAGES_RE.fullmatch(code):
        raise ArchError(f"backbone: stage code {_show(code)} must be four non-empty groups of 1/2 "
                        "separated by '-', e.g. 111-2111-211111-211")
    if b.num_blocks > MAX_BLOCKS:
        raise ArchError(f"backbone: stage code has {b.num_blocks} blocks, too many (at most {MAX_BLOCKS})")
    if b.num_doublings and b.base << b.num_doublings > MAX_PLANES:
        raise ArchError(f"backbone: base {b.base} doubled {b.num_doublings} times is {b.base << b.num_doublings} "
                        f"channels, too wide (at most {MAX_PLANES} per block)")
    if b.kind == "resnext":
        if b.groups < 1 or b.group_width < 1:
            raise ArchError(f"backbone: ResNeXt needs groups and width, e.g. x50(32x4d), got "
                            f"{b.groups}x{b.group_width}d")
        if b.groups > MAX_GROUPS or b.group_width > MAX_GROUP_WIDTH:
            raise ArchError(f"backbone: ResNeXt {b.groups}x{b.group_width}d is too large (at most {MAX_GROUPS} "
                            f"groups of width {MAX_GROUP_WIDTH})")
        if b.base * b.group_width < 64:
            # torchvision's grouped width is int(planes * width / 64) * groups: below 64 it is zero.
            raise ArchError(f"backbone: ResNeXt base {b.base} x width {b.group_width}d gives zero-width groups; "
                            "need base * width >= 64")
        grouped = (b.base << b.num_doublings) * b.group_width // 64 * b.groups
        if grouped > MAX_PLANES * 4:
            raise ArchError(f"backbone: ResNeXt {b.groups}x{b.group_width}d at base {b.base} makes {grouped}-channel "
                            f"grouped convs, too wide (at most {MAX_PLANES * 4})")


def _show(text: str, limit: int = 60) -> str:
    """repr() of a piece of user input, shortened: messages stay one readable line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------------------------
# Parsing

# ASCII digits only, at most 9 of them (int() refuses 4300+; anything past 9 digits is over every bound).
_INT = r"([0-9]{1,9})"
_SIZE_RE = re.compile(rf"{_INT}x{_INT}")
_RESNET_RE = re.compile(rf"r{_INT}_{_INT}_([12]+(?:-[12]+)*)")
_RESNEXT_RE = re.compile(rf"x{_INT}\({_INT}x{_INT}d\)_{_INT}_([12]+(?:-[12]+)*)")
_MBV2_RE = re.compile(r"mbv2_([0-9]{1,3}(?:\.[0-9]{1,9})?)")
_FPN_RE = re.compile(rf"fpn:P([0-9])-P([0-9]):{_INT}")
_NONE_NECK_RE = re.compile(r"none:C([0-9])")
_DENSE_RE = re.compile(rf"(retina|fcos)(?::{_INT}x{_INT})?")
_RCNN_RE = re.compile(rf"(2fc|cascade([0-9]))(?::{_INT})?")


def parse_backbone(text: str) -> Backbone:
    if m := _RESNET_RE.fullmatch(text):
        return Backbone("resnet", int(m[1]), int(m[2]), tuple(m[3].split("-")))
    if m := _RESNEXT_RE.fullmatch(text):
        return Backbone("resnext", int(m[1]), int(m[4]), tuple(m[5].split("-")), int(m[2]), int(m[3]))
    if m := _MBV2_RE.fullmatch(text):
        return Backbone("mobilenetv2", width_mult=float(m[1]))
    raise ArchError(f"backbone: cannot parse {_show(text)}; expected r{{depth}}_{{base}}_{{stages}} "
                    "(e.g. r50_64_111-2111-211111-211), x{depth}({g}x{w}d)_{base}_{stages} or mbv2_{width}")


def parse_neck(text: str) -> Neck:
    if m := _FPN_RE.fullmatch(text):
        return Neck("fpn", int(m[1]), int(m[2]), int(m[3]))
    if m := _NONE_NECK_RE.fullmatch(text):
        return Neck("none", int(m[1]), int(m[1]))
    raise ArchError(f"neck: cannot parse {_show(text)}; expected none:C4, none:C5 or fpn:P{{lo}}-P{{hi}}:{{channels}}")


def parse_head(text: str) -> Head:
    if m := _DENSE_RE.fullmatch(text):
        depth = int(m[2]) if m[2] else DEFAULT_DENSE_DEPTH
        width = int(m[3]) if m[3] else DEFAULT_DENSE_WIDTH
        return Head(m[1], 1, depth, width)  # type: ignore[arg-type]
    if m := _RCNN_RE.fullmatch(text):
        width = int(m[3]) if m[3] else DEFAULT_FC_WIDTH
        if m[1] == "2fc":
            return Head("2fc", 1, 0, width)
        return Head("cascade", int(m[2]), 0, width)
    raise ArchError(f"head: cannot parse {_show(text)}; allowed: retina[:DxW], fcos[:DxW], 2fc[:W], cascade2[:W], "
                    "cascade3[:W]")


def parse(text: str) -> Arch:
    """Parse an architecture string; the error names the field that is wrong."""
    if not isinstance(text, str):
        raise ArchError(f"arch: expected a string like 800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/2fc, "
                        f"got {type(text).__name__}")
    parts = text.strip().split("/")
    if len(parts) != 5:
        raise ArchError(f"arch: {_show(text)} has {len(parts)} fields; expected 5: size/backbone/neck/rpn/head, "
                        "e.g. 800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3")
    size_s, backbone_s, neck_s, rpn_s, head_s = parts
    m = _SIZE_RE.fullmatch(size_s)
    if not m:
        raise ArchError(f"size: cannot parse {_show(size_s)}; expected WIDTHxHEIGHT, e.g. 800x600")
    if rpn_s not in ("rpn", "none"):
        raise ArchError(f"rpn: cannot parse {_show(rpn_s)}; allowed: rpn, none")
    return Arch(InputSize(int(m[1]), int(m[2])), parse_backbone(backbone_s), parse_neck(neck_s),
                rpn_s == "rpn", parse_head(head_s))
