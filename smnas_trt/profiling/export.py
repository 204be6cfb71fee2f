"""ONNX export for timing and engines: static shapes, checked, with exporter and opset recorded.

Every graph (detector graphs, module pieces, end2end graphs) goes through the legacy TorchScript
exporter (`torch.onnx.export(dynamo=False)`) by default: on the 2-core benchmark machine it exports a
demo-space detector graph in 0.8-1.4 s where the dynamo exporter takes 7-15 s, and both give graphs
whose outputs agree exactly on the same inputs (tested for every structural kind), so profiling
spends its time timing rather than exporting. `exporter="dynamo"` remains available. The legacy
exporter also exports torchvision detectors with NMS/RoiAlign inside (the `end2end` scope), where
the dynamo exporter stops at their data-dependent NMS.

`precision="fp16"` exports a half-precision copy of the module, so the graph itself is FP16 (what
TensorRT 11's strongly typed networks need). Every file passes `onnx.checker` (with shape inference)
and carries `smnas.*` metadata properties (exporter, opset, precision, torch version), so a file
found on disk says how it was made.
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

import torch

from smnas_trt.errors import ProfilingError, first_line
from smnas_trt.fileio import atomic_path, sha256_file
from smnas_trt.profiling.fingerprint import check_precision
from smnas_trt.profiling.onnx_graph import load_graph, static_input_shapes

Exporter = Literal["dynamo", "legacy"]
EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
DEFAULT_EXPORTER: Exporter = "legacy"
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
        raise ProfilingError(f"{path}: exported graph fails onnx.checker: {first_line(e)}") from e
    model = load_graph(path)
    static_input_shapes(model, path)
    return model


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
    exporter: Exporter = DEFAULT_EXPORTER,
    precision: str = "fp32",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
) -> ExportInfo:
    """Export `module` at the shapes of `example_inputs` (static) and check the file.

    The module is copied, never changed. An int8 graph is exported as fp32 and quantized afterwards.
    """
    check_precision(precision)
    if precision == "int8":
        precision = "fp32"  # quantization (QuantizeLinear/DequantizeLinear) is applied to the fp32 graph
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
            raise ProfilingError(f"{path}: torch.onnx.export ({exporter}) failed: {first_line(e)}") from e
        model = check_exported(tmp)
    return _record(model, path, exporter, precision)
