"""ONNX export for timing and engines: static shapes, checked, with exporter and opset recorded.

- Bodies and module pieces (raw tensors in and out) go through `torch.onnx.export(dynamo=True)`.
- `end2end` graphs (decoding + NMS inside) go through the legacy TorchScript exporter
  (`dynamo=False`), which still exports torchvision detectors with NonMaxSuppression/RoiAlign
  inside If-subgraphs that ONNX Runtime runs; the dynamo exporter stops at their data-dependent NMS.
- `precision="fp16"` exports a half-precision copy of the module, so the graph itself is FP16
  (what TensorRT 11's strongly typed networks need); the exporter places casts where ops need them.

Every file passes `onnx.checker` (with shape inference) and carries `smnas.*` metadata properties
(exporter, opset, precision, torch version) so a file found on disk says how it was made.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from smnas_trt.errors import ProfilingError
from smnas_trt.fileio import atomic_path, sha256_file
from smnas_trt.profiling.fingerprint import check_precision

Exporter = Literal["dynamo", "legacy"]
LEGACY_OPSET = 17  # torchvision detection ops (RoiAlign, NonMaxSuppression) need >= 11; 17 is well tested in ORT


@dataclass(frozen=True, slots=True)
class ExportInfo:
    path: str
    exporter: str
    opset: int
    precision: str
    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_names: tuple[str, ...]
    sha256: str
    torch_version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress lines and warn about things we decided on purpose (e.g. legacy)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _cast_inputs(inputs: tuple[Any, ...], precision: str) -> tuple[Any, ...]:
    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.half() if precision == "fp16" else x.float()
        if isinstance(x, list | tuple):
            return type(x)(cast(v) for v in x)
        return x

    return tuple(cast(x) for x in inputs)


def check_exported(path: Path) -> Any:
    """onnx.checker with shape inference, and static input shapes; returns the loaded model."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # checker.ValidationError, shape inference errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProfilingError(f"{path}: exported graph fails onnx.checker: {first}") from e
    model = onnx.load(str(path), load_external_data=False)
    static_input_shapes(model, path)
    return model


def static_input_shapes(model: Any, path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of a loaded ONNX model's real inputs (initializers excluded); refuses dynamic dimensions."""
    initializers = {i.name for i in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ProfilingError(f"{path}: input {value.name} has a dynamic dimension; export with static shapes")
        shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _record(model: Any, path: Path, exporter: str, precision: str) -> ExportInfo:
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    props = {
        "smnas.exporter": exporter,
        "smnas.opset": str(opset),
        "smnas.precision": precision,
        "smnas.torch": str(torch.__version__),
    }
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return ExportInfo(
        path=str(path),
        exporter=exporter,
        opset=opset,
        precision=precision,
        input_names=tuple(v.name for v in inputs),
        input_shapes=tuple(tuple(int(d.dim_value) for d in v.type.tensor_type.shape.dim) for v in inputs),
        output_names=tuple(v.name for v in model.graph.output),
        sha256=sha256_file(path),
        torch_version=str(torch.__version__),
    )


def export_onnx(
    module: Any,
    example_inputs: Any,
    path: str | Path,
    *,
    exporter: Exporter = "dynamo",
    precision: str = "fp32",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
) -> ExportInfo:
    """Export `module` at the shapes of `example_inputs` (static) and check the file.

    `exporter="dynamo"` for raw-tensor bodies and module pieces; `"legacy"` for graphs with
    torchvision NMS/RoiAlign (end2end). The module is copied, never changed.
    """
    check_precision(precision)
    path = Path(path)
    module = copy.deepcopy(module).eval()
    module = module.half() if precision == "fp16" else module.float()
    inputs = _cast_inputs(_as_tuple(example_inputs), precision)
    kwargs: dict[str, Any] = {"input_names": list(input_names) if input_names else None}
    if output_names:
        kwargs["output_names"] = list(output_names)
    with atomic_path(path) as tmp:
        try:
            with _quiet(), torch.no_grad():
                if exporter == "dynamo":
                    torch.onnx.export(
                        module, inputs, str(tmp), dynamo=True, opset_version=opset, verbose=False, **kwargs
                    )
                elif exporter == "legacy":
                    torch.onnx.export(
                        module, inputs, str(tmp), dynamo=False, opset_version=opset or LEGACY_OPSET, **kwargs
                    )
                else:
                    raise ProfilingError(f"exporter {exporter!r} is not one of dynamo, legacy")
        except ProfilingError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProfilingError(f"{path}: torch.onnx.export ({exporter}) failed: {first[:300]}") from e
        model = check_exported(tmp)
    return _record(model, path, exporter, precision)


def onnx_outputs(path: str | Path, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Run a graph once in ONNX Runtime on CPU (for checks against PyTorch)."""
    from smnas_trt.profiling.backends import get_backend

    precision = "fp16" if any(np.asarray(v).dtype == np.float16 for v in feeds.values()) else "fp32"
    with get_backend("ort-cpu", threads=threads, precision=precision).load(path) as runner:
        return runner.run(feeds)


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over paired outputs (shapes must match)."""
    if len(a) != len(b):
        raise ProfilingError(f"output count differs: {len(a)} vs {len(b)}")
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ProfilingError(f"output shape differs: {x.shape} vs {y.shape}")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


class End2End(torch.nn.Module):
    """A torchvision detector on one image [3, H, W] -> (boxes [N, 4], scores [N], labels [N]).

    Includes the detector's own transform (normalisation, resize), decoding and NMS: the `end2end`
    scope. Export it with `exporter="legacy"` (the dynamo exporter stops at data-dependent NMS).
    """

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.detector([image])[0]
        return detections["boxes"], detections["scores"], detections["labels"]
