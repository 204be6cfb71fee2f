"""Detector builder: Arch -> torch.nn.Module from torchvision's detection components.

Also the graphs every engine runs (`graphs.detector_graphs`: profiled, deployed and verified alike),
the module pieces of the latency table and their key grammar, and counts (params, FLOPs, activation
bytes) per module.
"""

from smnas_trt.models.counts import ArchCounts, ModuleCounts, count_flops, count_params, time_detector_build
from smnas_trt.models.detector import (
    ArchTransform,
    DetectorSettings,
    anchor_sizes,
    build_detector,
    detector_settings,
)
from smnas_trt.models.graphs import GraphSpec, body_input_shape, detector_graphs, fixed_proposals
from smnas_trt.models.layers import WSConv2d, convert_to_ws, fold_weight_standardization
from smnas_trt.models.pieces import DEFAULT_NUM_CLASSES, ModulePiece, module_pieces

__all__ = [
    "DEFAULT_NUM_CLASSES",
    "ArchCounts",
    "ArchTransform",
    "DetectorSettings",
    "GraphSpec",
    "ModuleCounts",
    "ModulePiece",
    "WSConv2d",
    "anchor_sizes",
    "body_input_shape",
    "build_detector",
    "convert_to_ws",
    "count_flops",
    "count_params",
    "detector_graphs",
    "detector_settings",
    "fixed_proposals",
    "fold_weight_standardization",
    "module_pieces",
    "time_detector_build",
]
