"""Reading exported ONNX graphs: the file's existence, its float type and its static input shapes.

Shared by every backend (ONNX Runtime checks the precision, TensorRT keys its engine cache on the
input shapes) and by the exporter's own checks, so the graph is inspected one way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smnas_trt.errors import ProfilingError


def check_onnx_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ProfilingError(f"ONNX file not found: {path}")
    return path


def load_graph(path: str | Path) -> Any:
    """The ONNX model proto (without external data); a damaged file is a one-line ProfilingError."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ProfilingError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e


def onnx_float_type(path: str | Path) -> str | None:
    """The element type ("float32"/"float16") of the graph's first floating-point input, if any."""
    import onnx

    for value in load_graph(path).graph.input:
        elem = value.type.tensor_type.elem_type
        if elem == onnx.TensorProto.FLOAT:
            return "float32"
        if elem == onnx.TensorProto.FLOAT16:
            return "float16"
    return None


def check_graph_precision(path: Path, precision: str, backend: str) -> None:
    """An fp16 run needs an FP16 graph (ORT runs what the graph says; TensorRT 11 is strongly typed).
    An int8 graph is an fp32 graph with QuantizeLinear/DequantizeLinear inside (explicit quantization)."""
    float_type = onnx_float_type(path)
    wanted = "float16" if precision == "fp16" else "float32"
    if float_type is not None and float_type != wanted:
        raise ProfilingError(
            f"{path}: graph inputs are {float_type} but backend {backend} was asked for {precision}; "
            f"export the {precision} variant of the graph"
        )


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
