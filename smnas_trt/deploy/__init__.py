"""Deploy frontier models: export, build, verify against PyTorch, time, manifest; and the runtime that runs them."""

from smnas_trt.deploy.deployer import (
    BACKENDS,
    DeployedModel,
    DeployOptions,
    DeployResult,
    DeployTarget,
    deploy_models,
    deploy_spec,
    target_from_checkpoint,
    targets_from_run,
)
from smnas_trt.deploy.manifest import MANIFEST, DeployedManifest, check_files, read_manifest, sha256_file, write_index
from smnas_trt.deploy.runtime import Detections, Detector
from smnas_trt.deploy.verify import TOLERANCES, Tolerance, Verification, match_detections

__all__ = [
    "BACKENDS",
    "MANIFEST",
    "TOLERANCES",
    "DeployOptions",
    "DeployResult",
    "DeployTarget",
    "DeployedManifest",
    "DeployedModel",
    "Detections",
    "Detector",
    "Tolerance",
    "Verification",
    "check_files",
    "deploy_models",
    "deploy_spec",
    "match_detections",
    "read_manifest",
    "sha256_file",
    "target_from_checkpoint",
    "targets_from_run",
    "write_index",
]
