"""Detector builder: Arch -> torch.nn.Module from torchvision's detection components.

Also the traced `network` body and its module pieces (for export and profiling), and analytic
counts (params, FLOPs, activation bytes) per module.
"""

from smnas_trt.models.body import (
    DEFAULT_NUM_CLASSES,
    ModulePiece,
    NetworkBody,
    body_input_shape,
    fixed_proposals,
    module_pieces,
    network_body,
)
from smnas_trt.models.counts import ArchCounts, ModuleCounts, count_flops, count_params, time_detector_build
from smnas_trt.models.detector import (
    ArchTransform,
    DetectorSettings,
    anchor_sizes,
    build_detector,
    detector_settings,
)
from smnas_trt.models.layers import WSConv2d, convert_to_ws, fold_weight_standardization

__all__ = [
    "DEFAULT_NUM_CLASSES",
    "ArchCounts",
    "ArchTransform",
    "DetectorSettings",
    "ModuleCounts",
    "ModulePiece",
    "NetworkBody",
    "WSConv2d",
    "anchor_sizes",
    "body_input_shape",
    "build_detector",
    "convert_to_ws",
    "count_flops",
    "count_params",
    "detector_settings",
    "fixed_proposals",
    "fold_weight_standardization",
    "module_pieces",
    "network_body",
    "time_detector_build",
]
