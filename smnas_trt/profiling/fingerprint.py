"""Device fingerprint: what a latency figure was measured on, and a short hash of what must match.

Two tables (or a table and a predictor) are comparable when their `key` hashes agree. The hash
covers the device identity (CPU model, core count and intra-op threads, or GPU name and compute
capability), the backend and its major.minor version, precision and batch. Driver and CUDA
versions and the full backend version are recorded for the reader but left out of the hash, so
a patch upgrade does not orphan a table.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from smnas_trt.errors import ProfilingError

DeviceKind = Literal["cpu", "cuda"]
PRECISIONS = ("fp32", "fp16", "int8")
# Fields that must agree for two measurements to be comparable (see module docstring).
KEY_FIELDS = (
    "device_kind",
    "device_name",
    "cores",
    "threads",
    "compute_capability",
    "backend",
    "backend_minor",
    "precision",
    "batch",
)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    device_kind: DeviceKind
    device_name: str  # CPU model or GPU name
    backend: str
    backend_version: str
    precision: str
    batch: int
    cores: int | None = None  # logical CPUs this process may use (CPU backends)
    threads: int | None = None  # intra-op threads the backend was fixed to (CPU backends)
    compute_capability: str | None = None  # "9.0" (GPU backends)
    driver: str | None = None  # NVIDIA driver version (GPU backends)
    cuda: str | None = None  # CUDA runtime version torch was built with (GPU backends)

    @property
    def backend_minor(self) -> str:
        return ".".join(self.backend_version.split(".")[:2])

    def key_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in KEY_FIELDS}

    @property
    def key(self) -> str:
        """12 hex digits of SHA-256 over the fields that must match."""
        payload = json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for messages: device, backend, precision, batch, key."""
        if self.device_kind == "cpu":
            device = f"{self.device_name} ({self.cores} cores, {self.threads} threads)"
        else:
            device = f"{self.device_name} (sm {self.compute_capability}, driver {self.driver}, CUDA {self.cuda})"
        return f"{device} · {self.backend} {self.backend_version} · {self.precision} · batch {self.batch} [{self.key}]"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = self.key
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        if not isinstance(d, dict):
            raise ProfilingError(f"fingerprint: expected an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        missing = {"device_kind", "device_name", "backend", "backend_version", "precision", "batch"} - d.keys()
        if missing:
            raise ProfilingError(f"fingerprint: missing fields {sorted(missing)}")
        fp = cls(**{k: v for k, v in d.items() if k in names})
        # Written by this code, read back from tables and predictors: a wrong type means a damaged file.
        for name in ("device_kind", "device_name", "backend", "backend_version", "precision"):
            if not isinstance(getattr(fp, name), str):
                raise ProfilingError(f"fingerprint: {name} is not text")
        for name in ("batch", "cores", "threads"):
            value = getattr(fp, name)
            if not ((value is None and name != "batch") or (isinstance(value, int) and not isinstance(value, bool))):
                raise ProfilingError(f"fingerprint: {name} is not an integer")
        for name in ("compute_capability", "driver", "cuda"):
            if not (getattr(fp, name) is None or isinstance(getattr(fp, name), str)):
                raise ProfilingError(f"fingerprint: {name} is not text")
        return fp

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError, RecursionError) as e:
            raise ProfilingError(f"fingerprint: not valid JSON ({str(e).splitlines()[0][:80] if str(e) else e!r})") \
                from None


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ProfilingError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_count() -> int:
    """Logical CPUs usable by this process (affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_fingerprint(
    backend: str, backend_version: str, *, threads: int, precision: str = "fp32", batch: int = 1
) -> Fingerprint:
    return Fingerprint(
        device_kind="cpu",
        device_name=cpu_model(),
        cores=cpu_count(),
        threads=threads,
        backend=backend,
        backend_version=backend_version,
        precision=check_precision(precision),
        batch=batch,
    )


def nvidia_driver_version() -> str | None:
    """The kernel module's version from /proc, else nvidia-smi; None when neither answers."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_fingerprint(
    backend: str, backend_version: str, *, device: int = 0, precision: str = "fp32", batch: int = 1
) -> Fingerprint:
    import torch

    if not torch.cuda.is_available():
        from smnas_trt.errors import BackendUnavailableError

        raise BackendUnavailableError(f"backend {backend} needs a CUDA GPU; torch sees none on this machine")
    props = torch.cuda.get_device_properties(device)
    return Fingerprint(
        device_kind="cuda",
        device_name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        driver=nvidia_driver_version(),
        cuda=torch.version.cuda,
        backend=backend,
        backend_version=backend_version,
        precision=check_precision(precision),
        batch=batch,
    )


def _valid_record(d: dict[str, Any]) -> dict[str, Any]:
    try:
        Fingerprint.from_dict(d)
    except ProfilingError as e:
        raise ValueError(str(e).removeprefix("fingerprint: ")) from None
    return d


# A fingerprint as persisted records hold it (`Fingerprint.to_dict()`, kept as written): a field type of the
# pydantic models of latency predictors and deployed models, checked by `Fingerprint.from_dict`.
FingerprintRecord = Annotated[dict[str, Any], AfterValidator(_valid_record)]
