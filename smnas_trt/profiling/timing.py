"""One timing loop for every backend: warm-up by count and time, then repeat until a budget or a count.

The loop is clock-agnostic. `HostClock` brackets each run with `time.perf_counter_ns` (CPU backends,
where the call returns when the work is done). `CudaEventClock` records CUDA events on a non-default
stream around each run and synchronizes on the end event before reading it, so the figure is device
time of that run only, without host launch jitter between runs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from smnas_trt.checks import check_field_types
from smnas_trt.errors import ProfilingError


@dataclass(frozen=True, slots=True)
class TimingConfig:
    """How long to warm up and how many timed runs to take.

    Warm-up runs until BOTH `warmup_runs` runs and `warmup_s` seconds are done (caches, allocator
    arenas, cuDNN/TensorRT tactic selection and CPU frequency all settle). Timed runs stop at
    `max_runs`, or once `budget_s` has passed and at least `min_runs` were taken.
    """

    warmup_runs: int = 10
    warmup_s: float = 0.2
    min_runs: int = 10
    max_runs: int = 200
    budget_s: float = 1.0

    def __post_init__(self) -> None:
        check_field_types(self, ProfilingError, "timing")
        if self.warmup_runs < 0 or self.warmup_s < 0:
            raise ProfilingError("timing: warmup_runs and warmup_s must be >= 0")
        if self.min_runs < 1 or self.max_runs < self.min_runs:
            raise ProfilingError(
                f"timing: need 1 <= min_runs <= max_runs, got min_runs={self.min_runs}, max_runs={self.max_runs}"
            )
        if self.budget_s < 0:
            raise ProfilingError("timing: budget_s must be >= 0")

    @classmethod
    def quick(cls) -> TimingConfig:
        """A short schedule for tests and smoke runs."""
        return cls(warmup_runs=2, warmup_s=0.0, min_runs=5, max_runs=20, budget_s=0.05)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Summary of timed runs, in milliseconds. `median_ms` is the figure every table and predictor uses."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, n={self.n})"


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Stats of a list of per-run latencies (ms)."""
    if not samples_ms:
        raise ProfilingError("timing: no samples to summarize")
    values = sorted(float(v) for v in samples_ms)
    return LatencyStats(
        median_ms=statistics.median(values),
        p10_ms=_quantile(values, 0.10),
        p90_ms=_quantile(values, 0.90),
        mean_ms=statistics.fmean(values),
        std_ms=statistics.pstdev(values) if len(values) > 1 else 0.0,
        min_ms=values[0],
        max_ms=values[-1],
        n=len(values),
    )


class Clock(Protocol):
    """Times one call of `step`; returns milliseconds."""

    def measure(self, step: Callable[[], object]) -> float: ...


class HostClock:
    """Wall clock around a call that returns when its work is done (CPU backends, or a synchronizing run)."""

    def measure(self, step: Callable[[], object]) -> float:
        t0 = time.perf_counter_ns()
        step()
        return (time.perf_counter_ns() - t0) / 1e6


class CudaEventClock:
    """CUDA events recorded on `stream` around the call; reads them after synchronizing the end event.

    `step` must enqueue its work on the same stream (ORT `user_compute_stream`, TensorRT
    `execute_async_v3(stream.cuda_stream)`, or torch code under `torch.cuda.stream(stream)`).
    """

    def __init__(self, stream: Any | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            from smnas_trt.errors import BackendUnavailableError

            raise BackendUnavailableError("CUDA timing needs a CUDA GPU and a CUDA build of torch; none found")
        # A non-default stream: the legacy default stream synchronizes with every other stream.
        self.stream = stream if stream is not None else torch.cuda.Stream()
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def measure(self, step: Callable[[], object]) -> float:
        import torch

        with torch.cuda.stream(self.stream):
            self._start.record(self.stream)
            step()
            self._end.record(self.stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


def time_runs(
    step: Callable[[], object], config: TimingConfig | None = None, clock: Clock | None = None
) -> LatencyStats:
    """Warm `step` up, time it repeatedly with `clock` (host clock by default), return the stats.

    The loop's own stopping rule uses host time, so a budget bounds the wall time spent.
    """
    config = config or TimingConfig()
    clock = clock or HostClock()
    t_start = time.perf_counter()
    runs = 0
    while runs < config.warmup_runs or time.perf_counter() - t_start < config.warmup_s:
        clock.measure(step)
        runs += 1
    samples: list[float] = []
    t_timed = time.perf_counter()
    while len(samples) < config.max_runs:
        samples.append(clock.measure(step))
        if len(samples) >= config.min_runs and time.perf_counter() - t_timed >= config.budget_s:
            break
    return summarize(samples)
