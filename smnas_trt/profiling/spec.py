"""One typed spec of a latency backend: what every command builds a backend from and records as is.

`BackendSpec` is built once from the CLI (`profile-lut`, `deploy`, `predict`), the search config's
`latency` section, the deploy options and a deployed model's manifest; `build()` makes the backend.
Devices have one vocabulary everywhere: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.

`threads` defaults to 1: on a small shared machine one intra-op thread repeats (two timings of one
model on 2 cores with both threads differ by a median 16%, with one thread by under 3%), and the
latency table, the predictor and the search then agree on what is being predicted. A server that
runs a model with more threads profiles with those.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smnas_trt.errors import BackendUnavailableError, ProfilingError
from smnas_trt.profiling.backend import Backend

BackendName = Literal["ort-cpu", "ort-cuda", "torch", "tensorrt"]
BACKEND_NAMES: tuple[str, ...] = ("ort-cpu", "ort-cuda", "torch", "tensorrt")
Precision = Literal["fp32", "fp16", "int8"]
DEFAULT_THREADS = 1
GPU_BACKENDS = ("ort-cuda", "tensorrt")


def parse_device(device: str) -> tuple[str, int]:
    """('cpu', 0) or ('cuda', N) from cpu | cuda | cuda:N; anything else is a ProfilingError."""
    if device == "cpu":
        return "cpu", 0
    if device == "cuda":
        return "cuda", 0
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return "cuda", int(index)
    raise ProfilingError(f"device {device!r} is not one of cpu, cuda, cuda:N")


class BackendSpec(BaseModel):
    """Backend name, precision, batch, CPU threads, device and CUDA graphs of latency measurements."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendName = "ort-cpu"
    precision: Precision = "fp32"
    batch: int = Field(1, ge=1)
    threads: int = Field(DEFAULT_THREADS, ge=1, description="Intra-op threads of CPU backends.")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cpu for ort-cpu and torch, "
                               "cuda:0 for ort-cuda and tensorrt).")
    cuda_graphs: bool = Field(False, description="torch on CUDA only: time replays of one captured CUDA graph.")

    @model_validator(mode="after")
    def _consistent(self) -> BackendSpec:
        if self.device is not None:
            try:
                kind, _ = parse_device(self.device)
            except ProfilingError as e:
                raise ValueError(str(e)) from None
            if self.backend == "ort-cpu" and kind != "cpu":
                raise ValueError(f"backend ort-cpu runs on the cpu, not on {self.device}; use ort-cuda or tensorrt")
            if self.backend in GPU_BACKENDS and kind != "cuda":
                raise ValueError(f"backend {self.backend} runs on a CUDA device, not on {self.device}")
        if self.cuda_graphs and (self.backend != "torch" or self.device_kind != "cuda"):
            raise ValueError("cuda_graphs needs the torch backend on a CUDA device")
        if self.precision == "fp16" and self.device_kind == "cpu":
            raise ValueError(f"precision fp16 needs a GPU backend ({self.backend} on the cpu has FP16 kernels for "
                             "few ops); use fp32 or int8 here, or ort-cuda / tensorrt / torch on cuda")
        if self.precision == "int8" and self.backend == "torch":
            raise ValueError("precision int8 runs quantized (QDQ) ONNX graphs: use ort-cpu, ort-cuda or tensorrt")
        return self

    @property
    def resolved_device(self) -> str:
        if self.device is not None:
            return self.device
        return "cuda:0" if self.backend in GPU_BACKENDS else "cpu"

    @property
    def device_kind(self) -> str:
        return parse_device(self.resolved_device)[0]

    @property
    def device_index(self) -> int:
        return parse_device(self.resolved_device)[1]

    def check_here(self) -> None:
        """Refuse, in one line, a CUDA device this machine does not have (before any work starts)."""
        if self.device_kind != "cuda":
            return
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {self.resolved_device} ({self.backend}) needs a CUDA GPU; "
                                          "torch sees none on this machine")
        if self.device_index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {self.resolved_device}: this machine has "
                                          f"{torch.cuda.device_count()} CUDA device(s)")

    def build(self, **extra: Any) -> Backend:
        """The backend (extra: backend-specific tuning such as TensorRT's cache_dir or layer_times)."""
        self.check_here()
        if self.backend == "ort-cpu":
            from smnas_trt.profiling.backends import OrtCpuBackend

            return OrtCpuBackend(threads=self.threads, precision=self.precision, batch=self.batch, **extra)
        if self.backend == "ort-cuda":
            from smnas_trt.profiling.backends import OrtCudaBackend

            return OrtCudaBackend(device=self.device_index, precision=self.precision, batch=self.batch, **extra)
        if self.backend == "torch":
            from smnas_trt.profiling.backends import TorchBackend

            return TorchBackend(device=self.resolved_device, threads=self.threads, cuda_graphs=self.cuda_graphs,
                                precision=self.precision, batch=self.batch, **extra)
        from smnas_trt.profiling.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(precision=self.precision, batch=self.batch, device=self.device_index, **extra)

    def describe(self) -> str:
        """One line for messages and tables: ort-cpu fp32 batch 1, 1 thread."""
        where = f"{self.threads} thread{'s' if self.threads > 1 else ''}" if self.device_kind == "cpu" \
            else self.resolved_device
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return f"{self.backend} {self.precision} batch {self.batch}, {where}{graphs}"


def parse_backend_spec(values: dict[str, Any], source: str = "backend") -> BackendSpec:
    """A BackendSpec from loose values (None = default); a bad field is a one-line ProfilingError."""
    from pydantic import ValidationError

    from smnas_trt.space.config import pydantic_error_line

    try:
        return BackendSpec.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise ProfilingError(f"{source}: {pydantic_error_line(e).removeprefix('config: ')}") from None
