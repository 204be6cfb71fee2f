"""The backend interface every latency backend implements: build a runner from a graph, run it, time it.

    runner = backend.load("body.onnx")          # or backend.load_module(module, example_inputs) for torch
    outputs = runner.run()                      # seeded random inputs unless feeds are given
    stats = runner.time(TimingConfig())         # LatencyStats, median_ms is the figure used
    fp = backend.fingerprint()                  # what the figure was measured on

Backends are built from one typed spec, `profiling.spec.BackendSpec` (`ort-cpu`, `ort-cuda`, `torch`
in `backends.py`; `tensorrt` in `tensorrt_backend.py`, imported only when asked for).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from smnas_trt.errors import ProfilingError
from smnas_trt.profiling.fingerprint import Fingerprint, check_precision
from smnas_trt.profiling.timing import LatencyStats, TimingConfig

Feeds = Mapping[str, np.ndarray] | Sequence[np.ndarray]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "float16", "int64", ...


ONNX_TYPE_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
}


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for the given specs: floats in [0, 1) (image-like), integers in [0, 4)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, spec.shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 4, spec.shape).astype(dtype)
    return feeds


def ordered_feeds(specs: Sequence[TensorSpec], feeds: Feeds | None, seed: int) -> dict[str, np.ndarray]:
    if feeds is None:
        return random_inputs(specs, seed)
    if isinstance(feeds, Mapping):
        missing = [s.name for s in specs if s.name not in feeds]
        if missing:
            raise ProfilingError(f"inputs missing: {missing}; expected {[s.name for s in specs]}")
        return {s.name: np.asarray(feeds[s.name]) for s in specs}
    arrays = list(feeds)
    if len(arrays) != len(specs):
        raise ProfilingError(f"got {len(arrays)} inputs, expected {len(specs)} ({[s.name for s in specs]})")
    return {s.name: np.asarray(a) for s, a in zip(specs, arrays, strict=True)}





class Runner(ABC):
    """A loaded model ready to run and time. Inputs are fixed (seeded) unless `set_inputs` changes them."""

    inputs: list[TensorSpec]

    @abstractmethod
    def run(self, feeds: Feeds | None = None) -> list[np.ndarray]:
        """One inference; outputs copied to host numpy arrays, in the graph's output order."""

    @abstractmethod
    def time(self, config: TimingConfig | None = None) -> LatencyStats:
        """Warm up and time repeated runs on this runner's current inputs."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, engines and device buffers."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """Builds runners from ONNX files (and, for `torch`, from modules) and says what it measures on."""

    name: ClassVar[str]

    def __init__(self, precision: str = "fp32", batch: int = 1) -> None:
        self.precision = check_precision(precision)
        if batch < 1:
            raise ProfilingError(f"batch must be >= 1, got {batch}")
        self.batch = batch

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def fingerprint(self) -> Fingerprint: ...

    @abstractmethod
    def load(self, onnx_path: str | Path) -> Runner:
        """Build a session/engine from an ONNX file with static shapes."""

    def load_module(self, module: Any, example_inputs: Any) -> Runner:
        raise ProfilingError(f"backend {self.name} loads ONNX files; only the torch backend loads nn.Modules")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.precision} batch={self.batch}>"


