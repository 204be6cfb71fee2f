"""Backbones built from SM-NAS codes (ResNet/ResNeXt) or torchvision's MobileNetV2, plus the FPN neck.

Every backbone exposes ``stem`` (stride 4 for ResNet codes, 2 for MobileNetV2), ``stages`` (an
``nn.ModuleList`` producing C2..C5 at strides 4, 8, 16, 32) and ``channels`` (their output channels).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)
from torchvision.ops.misc import Conv2dNormActivation

from smnas_trt.models.layers import NormFactory
from smnas_trt.space.arch import Arch, Backbone, is_bottleneck

# torchvision MobileNetV2 `features` indices that end at strides 2 (stem), 4, 8, 16, 32. The final
# 1x1 conv to 1280 channels (index 18) is a classifier feature and is dropped.
MBV2_BOUNDS = (0, 2, 4, 7, 14, 18)


def stem_channels(base: int) -> int:
    """Width of the first stem conv: half the base width (at least 8), as in deep-stem ResNets."""
    return max(8, base // 2)


class CodeResNet(nn.Module):
    """ResNet/ResNeXt from an SM-NAS code: two 3x3 stride-2 stem convs (no max-pool), stage strides 1,2,2,2.

    The first block of stages 2-4 is strided; a ``2`` digit doubles the block's planes (SM-NAS
    semantics, `Backbone.stage_planes`). Blocks are torchvision's BasicBlock (18/34) or Bottleneck
    (50/101; grouped for ResNeXt). Only the first `num_stages` stages are built.
    """

    def __init__(self, gene: Backbone, norm: NormFactory, num_stages: int = 4) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if is_bottleneck(gene.depth) else BasicBlock
        groups, base_width = (gene.groups, gene.group_width) if gene.kind == "resnext" else (1, 64)
        mid = stem_channels(gene.base)
        self.stem = nn.Sequential(
            Conv2dNormActivation(3, mid, 3, stride=2, norm_layer=norm),
            Conv2dNormActivation(mid, gene.base, 3, stride=2, norm_layer=norm),
        )
        inplanes = gene.base
        stages, channels = [], []
        for i, row in enumerate(gene.stage_planes()[:num_stages]):
            blocks: list[nn.Module] = []
            for j, planes in enumerate(row):
                stride = 2 if i > 0 and j == 0 else 1
                out = planes * block.expansion
                downsample = None
                if stride != 1 or inplanes != out:
                    downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm(out))
                blocks.append(block(inplanes, planes, stride, downsample, groups, base_width, 1, norm))
                inplanes = out
            stages.append(nn.Sequential(*blocks))
            channels.append(inplanes)
        self.stages = nn.ModuleList(stages)
        self.channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # meta: shape-only copies for counting
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 at a width multiplier, cut into a stride-2 stem and four stages."""

    def __init__(self, width_mult: float, norm: NormFactory, num_stages: int = 4) -> None:
        super().__init__()
        features = MobileNetV2(width_mult=width_mult, norm_layer=norm).features
        self.stem = features[MBV2_BOUNDS[0]:MBV2_BOUNDS[1]]
        self.stages = nn.ModuleList(features[MBV2_BOUNDS[i + 1]:MBV2_BOUNDS[i + 2]] for i in range(num_stages))
        last_blocks: list[Any] = [stage[-1] for stage in self.stages]  # type: ignore[index]
        self.channels = [int(block.out_channels) for block in last_blocks]


def build_backbone(gene: Backbone, norm: NormFactory, num_stages: int = 4) -> CodeResNet | MobileNetV2Backbone:
    if gene.kind == "mobilenetv2":
        return MobileNetV2Backbone(gene.width_mult, norm, num_stages)
    return CodeResNet(gene, norm, num_stages)


def level_name(level: int) -> str:
    return f"p{level}"


def extra_fpn_block(arch: Arch) -> ExtraFPNBlock | None:
    """Levels above P5: P6 alone is a stride-2 max-pool of P5 (torchvision's LastLevelMaxPool, as in FPN
    Faster R-CNN); P6 and P7 come from torchvision's LastLevelP6P7 convs on P5 (as in RetinaNet)."""
    top = arch.neck.max_level
    if top == 6:
        return LastLevelMaxPool()
    if top == 7:
        return LastLevelP6P7(arch.neck.channels, arch.neck.channels)
    return None


class DetectorFeatures(nn.Module):
    """Backbone plus neck: image tensor -> OrderedDict of the levels the heads see.

    Without a neck the single C4 or C5 map is returned as is (key ``p4``/``p5``); with FPN the
    keys are ``p{min}``..``p5`` then ``pool`` (P6 by max-pool) or ``p6``, ``p7``.
    """

    def __init__(self, arch: Arch, norm: NormFactory) -> None:
        super().__init__()
        neck = arch.neck
        top_stage = 5 if neck.kind == "fpn" else neck.max_level
        # none:C4 never reads C5, so the last stage is not built (no dead parameters).
        self.body = build_backbone(arch.backbone, norm, num_stages=top_stage - 1)
        self.in_levels = tuple(range(neck.min_level, top_stage + 1))
        in_channels = [self.body.channels[level - 2] for level in self.in_levels]
        self.fpn: FeaturePyramidNetwork | None = None
        if neck.kind == "fpn":
            self.fpn = FeaturePyramidNetwork(in_channels, neck.channels, extra_blocks=extra_fpn_block(arch),
                                             norm_layer=norm)
            self.out_channels = neck.channels
        else:
            self.out_channels = in_channels[0]

    def backbone_features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.body.stem(x)
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.body.stages):
            x = stage(x)
            if i + 2 in self.in_levels:
                feats[level_name(i + 2)] = x
        return feats

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.backbone_features(x)
        return self.fpn(feats) if self.fpn is not None else feats
