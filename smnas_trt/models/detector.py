"""Arch -> torchvision detector (RetinaNet, FCOS, Faster R-CNN, Cascade R-CNN) at the arch's input size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from smnas_trt.errors import ArchError, ConfigError
from smnas_trt.models.backbones import DetectorFeatures, level_name
from smnas_trt.models.cascade import AgnosticBoxPredictor, CascadeRoIHeads
from smnas_trt.models.layers import NormFactory, conv_tower, convert_to_ws, norm_factory
from smnas_trt.space.arch import Arch, InputSize, check_arch, parse

IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
SIZE_DIVISIBLE = 32
ROI_OUTPUT_SIZE = 7
ROI_SAMPLING_RATIO = 2
ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCORE_THRESH = 0.05  # COCO-eval convention, for every head
RCNN_NMS_THRESH = 0.5
# Short sides below this are "small" (demo) inputs: anchors per level are halved.
SMALL_INPUT = 400


@dataclass(frozen=True)
class DetectorSettings:
    """Size-dependent settings, derived from the arch alone (so every component agrees)."""

    small: bool
    proposals_test: int  # RPN post-NMS proposals per image at inference = fixed RoI count of the body
    proposals_train: int
    pre_nms_train: int
    pre_nms_test: int
    box_batch_size_per_image: int
    detections_per_img: int
    canonical_scale: int  # MultiScaleRoIAlign level mapping: box side that maps to P4


def detector_settings(arch: Arch) -> DetectorSettings:
    return size_settings(arch.size)


def size_settings(size: InputSize) -> DetectorSettings:
    """The settings depend on the input size alone."""
    short = min(size.width, size.height)
    small = short < SMALL_INPUT
    return DetectorSettings(
        small=small,
        proposals_test=100 if small else 300,
        proposals_train=500 if small else 2000,
        pre_nms_train=1000 if small else 2000,
        pre_nms_test=500 if small else 1000,
        box_batch_size_per_image=128 if small else 512,
        detections_per_img=100,
        # 224 px at 600+ px (FPN paper), shrunk with the image so small inputs use all levels.
        canonical_scale=max(16, round(224 * min(1.0, short / 600))),
    )


def feature_strides(arch: Arch) -> list[int]:
    return [2 ** level for level in arch.neck.levels]


def anchor_sizes(arch: Arch, kind: str) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes per level for kind 'retina', 'rpn' or 'fcos'.

    FPN: RetinaNet uses 4x stride with octave scales 2^0, 2^(1/3), 2^(2/3); the RPN uses 8x stride
    (torchvision's defaults, sized for ~800 px inputs); both are halved for small inputs
    (short side < 400 px, objects of 10-100 px). A single C4/C5 map gets powers of two from
    1/25 to 3/4 of the short side (32-512 at 800 px, 8-64 at 128 px). FCOS: one anchor per location,
    the size of the stride (torchvision's FCOS assigns objects by multiples of it).
    """
    strides = feature_strides(arch)
    if kind == "fcos":
        return tuple((float(s),) for s in strides)
    short = min(arch.size.width, arch.size.height)
    if len(strides) == 1:
        lo = 2 ** math.ceil(math.log2(short / 25))
        sizes = [float(lo * 2**i) for i in range(8) if lo * 2**i <= 0.75 * short] or [float(lo)]
        return (tuple(sizes),)
    small = short < SMALL_INPUT
    if kind == "retina":
        mult = 2 if small else 4
        return tuple(tuple(mult * s * 2 ** (i / 3) for i in range(3)) for s in strides)
    if kind == "rpn":
        mult = 4 if small else 8
        return tuple((float(mult * s),) for s in strides)
    raise ValueError(f"unknown anchor kind {kind!r}")


def anchor_generator(arch: Arch, kind: str) -> AnchorGenerator:
    sizes = anchor_sizes(arch, kind)
    ratios = (1.0,) if kind == "fcos" else ASPECT_RATIOS
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


class ArchTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform at the arch's size: an image already W x H is not resized again.

    Other images are resized to fit inside W x H keeping their aspect (min_size/max_size), then
    every batch is padded to a multiple of 32.
    """

    def __init__(self, arch: Arch) -> None:
        w, h = arch.size.width, arch.size.height
        super().__init__(min(w, h), max(w, h), IMAGE_MEAN, IMAGE_STD, size_divisible=SIZE_DIVISIBLE)
        self.arch_hw = (h, w)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if tuple(image.shape[-2:]) == self.arch_hw:
            return image, target
        return super().resize(image, target)


def _dense_head(arch: Arch, in_channels: int, num_classes: int, norm: NormFactory) -> nn.Module:
    """torchvision's RetinaNet/FCOS head with its conv towers replaced by depth x width towers."""
    h = arch.head
    if h.kind == "retina":
        num_anchors = anchor_generator(arch, "retina").num_anchors_per_location()[0]
        head: Any = RetinaNetHead(h.width, num_anchors, num_classes, norm_layer=norm)
        head.classification_head.conv = conv_tower(in_channels, h.width, h.depth, norm)
        head.regression_head.conv = conv_tower(in_channels, h.width, h.depth, norm)
        return head
    head = FCOSHead(h.width, 1, num_classes, num_convs=0)
    head.classification_head.conv = conv_tower(in_channels, h.width, h.depth, norm)
    head.regression_head.conv = conv_tower(in_channels, h.width, h.depth, norm)
    return head


def _roi_pool(arch: Arch, settings: DetectorSettings) -> MultiScaleRoIAlign:
    """RoIAlign 7x7 over P{min}..P5 (levels above P5 serve the RPN only, as in FPN Faster R-CNN)."""
    names = [level_name(level) for level in arch.neck.levels if level <= 5]
    return MultiScaleRoIAlign(names, ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO, canonical_scale=settings.canonical_scale)


def _rcnn(arch: Arch, features: DetectorFeatures, num_classes: int, settings: DetectorSettings) -> FasterRCNN:
    """FasterRCNN with our RPN anchors and a 2-FC head, or with its RoIHeads replaced by a cascade."""
    rpn_anchors = anchor_generator(arch, "rpn")
    roi_pool = _roi_pool(arch, settings)
    roi_features = features.out_channels * ROI_OUTPUT_SIZE**2
    width = arch.head.width
    cascade = arch.head.kind == "cascade"
    model = FasterRCNN(
        features, None,
        min_size=min(arch.size.width, arch.size.height), max_size=max(arch.size.width, arch.size.height),
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
        rpn_anchor_generator=rpn_anchors,
        rpn_head=RPNHead(features.out_channels, rpn_anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=settings.pre_nms_train, rpn_pre_nms_top_n_test=settings.pre_nms_test,
        rpn_post_nms_top_n_train=settings.proposals_train, rpn_post_nms_top_n_test=settings.proposals_test,
        box_roi_pool=roi_pool,
        # The cascade replaces RoIHeads below; FasterRCNN only needs placeholders to construct.
        box_head=nn.Identity() if cascade else TwoMLPHead(roi_features, width),
        box_predictor=nn.Identity() if cascade else FastRCNNPredictor(width, num_classes),
        box_batch_size_per_image=settings.box_batch_size_per_image,
        box_score_thresh=SCORE_THRESH, box_nms_thresh=RCNN_NMS_THRESH,
        box_detections_per_img=settings.detections_per_img,
    )
    if cascade:
        n = arch.head.stages
        model.roi_heads = CascadeRoIHeads(
            roi_pool,
            [TwoMLPHead(roi_features, width) for _ in range(n)],
            [AgnosticBoxPredictor(width, num_classes) for _ in range(n)],
            batch_size_per_image=settings.box_batch_size_per_image, positive_fraction=0.25,
            score_thresh=SCORE_THRESH, nms_thresh=RCNN_NMS_THRESH, detections_per_img=settings.detections_per_img,
        )
    return model


def build_detector(arch: Arch, num_classes: int, from_scratch: bool = True) -> nn.Module:
    """A torchvision detector for `arch`, running at the arch's input size.

    `num_classes` counts the background: K object classes use labels 1..K and num_classes = K + 1,
    for every head. `from_scratch` (default) uses GroupNorm + Weight Standardization in backbone,
    neck and head towers; otherwise BatchNorm. Train mode returns a loss dict, eval mode a list of
    dicts with boxes (x1, y1, x2, y2 in input pixels), scores and labels.
    """
    check_arch(arch)
    if parse(arch.canonical) != arch:
        raise ArchError(f"arch: {arch} does not survive a parse round trip; build from parse(text)")
    b = arch.backbone
    if b.kind == "resnext" and b.base * b.group_width < 64:
        # torchvision's grouped Bottleneck has int(planes * width / 64) channels per group.
        raise ArchError(f"backbone: {b} has zero-width grouped convs; ResNeXt {b.groups}x{b.group_width}d needs "
                        f"base channels >= {math.ceil(64 / b.group_width)}")
    if num_classes < 2:
        raise ConfigError(f"num_classes: {num_classes} must be at least 2 (K object classes + background)")
    norm = norm_factory(from_scratch)
    features = DetectorFeatures(arch, norm)
    settings = detector_settings(arch)
    model: nn.Module
    if arch.head.two_stage:
        model = _rcnn(arch, features, num_classes, settings)
    else:
        kind = arch.head.kind
        head = _dense_head(arch, features.out_channels, num_classes, norm)
        size = {"min_size": min(arch.size.width, arch.size.height),
                "max_size": max(arch.size.width, arch.size.height),
                "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD}
        if kind == "retina":
            model = RetinaNet(features, num_classes, anchor_generator=anchor_generator(arch, "retina"), head=head,
                              score_thresh=SCORE_THRESH, detections_per_img=settings.detections_per_img, **size)
        else:
            model = FCOS(features, num_classes, anchor_generator=anchor_generator(arch, "fcos"), head=head,
                         score_thresh=SCORE_THRESH, detections_per_img=settings.detections_per_img, **size)
    model.transform = ArchTransform(arch)
    if from_scratch:
        convert_to_ws(model)
    model.arch = arch  # type: ignore[assignment]
    return model
