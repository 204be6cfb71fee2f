"""The search's jobs, run by any executor: train+evaluate one candidate, time one candidate on the real
backend (the graphs and jobs `smnas profile-lut` uses), and time the latency table's anchors (drift).

Jobs and outcomes are small frozen dataclasses of plain values so that a Ray worker can run
`train_candidate` / `time_candidate` anywhere the package is installed.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smnas_trt.profiling.drift import Drift

CANDIDATE_DIR = "candidates"


@dataclass(frozen=True)
class TrainJob:
    arch_id: str
    arch: str
    data_dir: str
    out_dir: str  # the candidate's folder in the run directory: last.pt, metrics.json, eval.json
    epochs: int  # length of the learning-rate schedule: the top rung's epochs
    stop_after: int  # epochs reached when this job ends: its rung's
    seed: int
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    eval_split: str = "val"
    eval_max_images: int | None = None
    eval_batch_size: int = 8
    device: str = "auto"
    threads: int | None = None
    resume: bool = False  # continue from out_dir/last.pt when it exists (a later rung, or a killed training)


@dataclass(frozen=True)
class TrainOutcome:
    arch_id: str
    ap: float
    ap50: float
    metrics: dict[str, float]
    train_seconds: float  # all epochs so far (earlier rungs included)
    cpu_seconds: float  # likewise, CPU time of the training process
    epochs: int  # epochs completed
    checkpoint: str  # absolute path of the final checkpoint
    worker: str = ""  # host:pid of the process that trained it


@dataclass(frozen=True)
class TimeJob:
    arch_id: str
    arch: str
    spec: dict[str, Any]  # profiling.spec.BackendSpec fields
    scope: str
    num_classes: int  # classes incl. background the heads are timed with (the table's)
    timing: dict[str, Any] = field(default_factory=dict)  # TimingConfig fields (warm-up, runs, budget)
    passes: int = 1
    onnx_cache: str | None = None  # exported graphs kept here (None: a temporary folder)


@dataclass(frozen=True)
class TimeOutcome:
    arch_id: str
    ms: float  # the median, the figure the search uses
    stats: dict[str, Any]  # p10/p90/std/n and whatever else the backend reports
    record: Any = None  # the profiling layer's row, added to the run's latency table by the driver


def candidate_seed(seed: int, arch_id: str) -> int:
    """A per-candidate training seed: the same arch in the same run always starts from the same weights."""
    return (seed * 1_000_003 + int(arch_id[:8], 16)) % 2**31


def train_candidate(job: TrainJob) -> TrainOutcome:
    """Build the detector, train it from scratch (or on from its checkpoint) to `job.stop_after` epochs of a
    `job.epochs`-epoch schedule, and evaluate it with COCO AP."""
    import torch

    from smnas_trt.training import TrainConfig, evaluate_checkpoint, train_arch

    if job.threads:
        torch.set_num_threads(job.threads)
    # auto: the GPU Ray assigned to this task (CUDA_VISIBLE_DEVICES), or this machine's, else the CPU.
    device = ("cuda" if torch.cuda.is_available() else "cpu") if job.device == "auto" else job.device
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), **job.training, "epochs": job.epochs,
                                    "seed": job.seed, "device": device, "threads": job.threads,
                                    "progress": False})
    torch.manual_seed(job.seed)  # the initial weights: the builder draws them before the trainer seeds
    out = Path(job.out_dir)
    result = train_arch(job.arch, job.data_dir, out, config, resume=job.resume, stop_after=job.stop_after)
    metrics = evaluate_checkpoint(result.checkpoint, job.data_dir, split=job.eval_split, out_json=out / "eval.json",
                                  batch_size=job.eval_batch_size, device=device, max_images=job.eval_max_images)
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    # COCOeval reports -1 where a metric is undefined (no detections at all): that is no accuracy.
    return TrainOutcome(job.arch_id, max(clean.get("AP", 0.0), 0.0), max(clean.get("AP50", 0.0), 0.0), clean,
                        float(result.train_seconds), float(result.cpu_seconds), int(result.epochs),
                        str(result.checkpoint),
                        f"{socket.gethostname()}:{os.getpid()}")


def time_candidate(job: TimeJob) -> TimeOutcome:
    """Export the arch's graphs (those `smnas deploy` ships) and time them, as `profile-lut` does.

    Weights do not change latency, so a freshly initialised detector is timed."""
    from smnas_trt.errors import ProfilingError
    from smnas_trt.profiling.cache import OnnxCache
    from smnas_trt.profiling.profile import model_job, time_jobs
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.profiling.timing import TimingConfig
    from smnas_trt.space import parse

    if job.scope != "network":
        raise ProfilingError(f"latency.scope: the search times the network scope only so far, not {job.scope!r}")
    spec = BackendSpec.model_validate(job.spec)
    backend = spec.build()
    timing = TimingConfig.model_validate(job.timing)
    with OnnxCache(job.onnx_cache) as cache:
        [result] = list(time_jobs(backend, [model_job(parse(job.arch), job.num_classes, spec.batch, spec.precision,
                                                      "legacy")], timing, cache, job.passes))
    if result.stats is None:
        raise ProfilingError(f"timing {job.arch}: {result.error}")
    stats = result.stats.as_dict()
    record = {"arch": job.arch, "scope": job.scope, "stats": stats, "extra": result.extra,
              "fingerprint": backend.fingerprint().to_json()}
    return TimeOutcome(job.arch_id, float(result.stats.median_ms), stats, record)


@dataclass(frozen=True)
class DriftJob:
    """Time the anchors of `table` on this worker's backend (plain values, for any executor)."""

    table: str
    spec: dict[str, Any]
    timing: dict[str, Any] = field(default_factory=dict)
    passes: int = 1
    onnx_cache: str | None = None


def measure_drift(job: DriftJob) -> tuple[Drift | None, str]:
    """(this run's drift against the table, one line saying what was measured or why not); recorded in the table."""
    from smnas_trt.profiling.cache import OnnxCache
    from smnas_trt.profiling.profile import measure_drift as measure
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.profiling.timing import TimingConfig

    backend = BackendSpec.model_validate(job.spec).build()
    with OnnxCache(job.onnx_cache) as cache:
        return measure(backend, job.table, TimingConfig.model_validate(job.timing), cache, "search", job.passes)

