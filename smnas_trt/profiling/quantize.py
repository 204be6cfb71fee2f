"""INT8 graphs: explicit (QDQ) static quantization of an exported fp32 ONNX graph.

`quantize_onnx(fp32, out, feeds, scheme)` runs ONNX Runtime's `quantize_static` (QuantFormat.QDQ,
per-channel weights, MinMax calibration by default) over calibration feeds and writes a graph with
QuantizeLinear/DequantizeLinear pairs around every quantized op. One graph serves both runtimes:

- `u8s8` (ort-cpu): activations QUInt8 (asymmetric), weights QInt8 (symmetric, per channel, 7-bit:
  `reduce_range`): ONNX Runtime's CPU kernels (MLAS) fuse DQ -> Conv -> Q into QLinearConv with U8S8
  GEMMs. On x86 CPUs without VNNI (AVX2 only, such as this project's AMD EPYC Zen 3 machine: it has no
  AVX-512 and no VNNI, whatever issue #16 says) those GEMMs use VPMADDUBSW, whose int16 pairwise sums
  saturate with full 8-bit weights (255 * 127 * 2 > 32767); 7-bit weights cannot saturate. Measured on
  a tiny FPN body: output correlation with fp32 0.955 with 8-bit weights (0.985 for the same graph
  with ORT's optimisations off, i.e. exact QDQ arithmetic), 0.977 with 7-bit weights, optimised or not.
  The 7-bit graph is kept on VNNI machines too, so one graph (and one table row) means one thing.
- `s8s8` (tensorrt, ort-cuda): activations and weights QInt8, symmetric (zero point 0): what
  TensorRT's explicit quantization requires (its DequantizeLinear needs a zero `x_zero_point`); a
  TensorRT 10 strongly typed network (or 11, where strong typing is the only mode) builds the QDQ
  graph as INT8 with no calibrator (TensorRT 11 has none). ORT's own CPU kernels run S8S8 badly on
  AVX2 without VNNI (activations shifted to u8 saturate VPMADDUBSW: output correlation 0.63 vs 0.97
  with exact QDQ arithmetic on the tiny FPN body), which is why ort-cpu gets `u8s8`.

Ops quantized (`QUANTIZED_OPS`): the compute ops (Conv, Gemm, MatMul) and the ops around them that
INT8 kernels run without leaving INT8 (Relu, Clip, MaxPool, AveragePool). Everything else stays in
float (`FLOAT_OPS_NOTE`): Resize (FPN upsampling), Add/Concat (ORT's QDQ registry has no Add; the
quantizer would put a Q/DQ pair around it, pure overhead on CPU), RoiAlign, and the shape, index and
box-decoding ops (Gather, Slice, Reshape, TopK, Where, Exp of the cascade's box decoding, ...).
The final decoding and NMS run in torch outside the graphs anyway (`deploy/decoder.py`).

Calibration feeds come from one of two places:
- `random_feeds` for profiling: seeded pseudo-random inputs shaped like the graph's example inputs.
  The latency of a QDQ graph does not depend on the data values (the ops, shapes and kernels are the
  same whatever the scales are), only on the graph, so timing calibrates on random data and stays
  fast and deterministic; the graph is still the QDQ graph a deploy ships (same ops, same places).
- real inputs for deploy: the graph inputs the float model sees on the run's training images
  (`smnas_trt.deploy.deployer`), so the scales fit the data the model will meet.

`quant_pre_process` (ORT's symbolic shape inference + optimisation pass) is not run: our exported
graphs are already constant-folded with BatchNorm fused into Conv by the exporter, have static
shapes, and it would rewrite the graph that fp32 rows time (ORT's own session optimiser folds the
same patterns at load time).

Deterministic: the same fp32 graph, feeds and scheme give the same bytes (MinMax is exact; tested).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smnas_trt.errors import ProfilingError, first_line
from smnas_trt.fileio import atomic_path
from smnas_trt.profiling.onnx_graph import load_graph

Scheme = Literal["u8s8", "s8s8"]
SCHEMES: tuple[str, ...] = ("u8s8", "s8s8")
# Activation ranges: MinMax (the observed range) or Percentile (99.999% of the values, 2048-bin histogram). No
# Entropy: quantize_static gives ORT's entropy calibrator no bin counts, and with its default 128 bins for 128
# quantized bins the one threshold it tries is the full range, so it equals MinMax (checked: identical scales).
CalibrationMethod = Literal["minmax", "percentile"]
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile")
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "AveragePool")
FLOAT_OPS_NOTE = ("Resize, Add, Concat, RoiAlign, Sigmoid/Softmax and the shape, index and box-decoding ops "
                  "(Gather, Slice, Reshape, TopK, Where, Exp) stay in float; decoding and NMS run in torch")
PROFILE_CALIBRATION_SAMPLES = 4  # random feeds for timing: scales do not change latency, a few suffice
QUANT_FORMAT = 1  # bump when the quantization recipe changes (part of the ONNX cache key)
Feed = dict[str, np.ndarray]


def scheme_for(backend: str) -> Scheme:
    """The INT8 scheme a backend runs: u8s8 on ort-cpu, symmetric s8s8 on tensorrt and ort-cuda."""
    return "u8s8" if backend == "ort-cpu" else "s8s8"


@dataclass(frozen=True, slots=True)
class QuantInfo:
    """What a quantized graph was made with (recorded in its metadata and in deploy manifests)."""

    scheme: str
    method: str
    samples: int
    per_channel: bool
    quantized_ops: tuple[str, ...]
    float_ops: str
    qdq_nodes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds (subclassed lazily at use)."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._next = 0

    def get_next(self) -> Feed | None:
        if self._next >= len(self._feeds):
            return None
        feed = self._feeds[self._next]
        self._next += 1
        return feed

    def rewind(self) -> None:
        self._next = 0


def random_feeds(names: Sequence[str], examples: Sequence[Any], n: int = PROFILE_CALIBRATION_SAMPLES,
                 seed: int = 0) -> list[Feed]:
    """`n` seeded calibration feeds shaped like `examples` (for timing only: latency ignores the values).

    4-D float inputs (images, feature maps) are drawn from a normal distribution with the example's mean
    and standard deviation (clipped at its minimum, so a post-ReLU map stays non-negative); any other
    input (the RoI graph's proposals: boxes must stay boxes) is the example itself.
    """
    if n < 1:
        raise ProfilingError(f"calibration samples must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    arrays = [_numpy(x) for x in examples]
    feeds: list[Feed] = []
    for _ in range(n):
        feed: Feed = {}
        for name, x in zip(names, arrays, strict=True):
            if x.ndim == 4 and np.issubdtype(x.dtype, np.floating):
                std = float(x.std()) or 1.0
                drawn = rng.normal(float(x.mean()), std, size=x.shape)
                feed[name] = np.maximum(drawn, float(x.min())).astype(x.dtype)
            else:
                feed[name] = x
        feeds.append(feed)
    return feeds


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    return np.ascontiguousarray(array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs progress and warnings (e.g. 'please consider pre-processing') at INFO/WARNING."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def count_qdq(model: Any) -> int:
    return sum(1 for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def quantize_onnx(fp32: str | Path, out: str | Path, feeds: Sequence[Feed], scheme: Scheme,
                  method: CalibrationMethod = "minmax") -> QuantInfo:
    """Write the QDQ INT8 graph of the fp32 graph `fp32` to `out` (may be the same path), calibrated on `feeds`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if scheme not in SCHEMES:
        raise ProfilingError(f"INT8 scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if method not in CALIBRATION_METHODS:
        raise ProfilingError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if not feeds:
        raise ProfilingError(f"{fp32}: no calibration data to quantize with")
    fp32, out = Path(fp32), Path(out)
    source = load_graph(fp32)
    if count_qdq(source):
        raise ProfilingError(f"{fp32}: graph is already quantized (has QuantizeLinear/DequantizeLinear)")

    class _Reader(FeedReader, CalibrationDataReader):  # type: ignore[misc]  # ORT's ABC, untyped
        pass

    symmetric = scheme == "s8s8"
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="smnas-quant-") as tmp, _quiet():
        staged = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(fp32), str(staged), _Reader(feeds), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=not symmetric,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=calibrate, calibration_providers=["CPUExecutionProvider"],
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                               "CalibTensorRangeSymmetric": symmetric,  # percentile defaults to symmetric
                               # TensorRT fuses a Q/DQ pair per consumer; ORT CPU shares one.
                               "DedicatedQDQPair": symmetric},
            )
        except ProfilingError:
            raise
        except Exception as e:  # ORT raises plain RuntimeError/ValueError from calibration and the quantizer
            raise ProfilingError(f"{fp32}: INT8 quantization failed: {first_line(e)}") from e
        model = onnx.load(str(staged))
    info = QuantInfo(scheme=scheme, method=method, samples=len(feeds), per_channel=True,
                     quantized_ops=QUANTIZED_OPS, float_ops=FLOAT_OPS_NOTE, qdq_nodes=count_qdq(model))
    props = {p.key: p.value for p in source.metadata_props}
    props.update({"smnas.precision": "int8", "smnas.quant.scheme": scheme, "smnas.quant.method": method,
                  "smnas.quant.samples": str(len(feeds)), "smnas.quant.format": str(QUANT_FORMAT)})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    with atomic_path(out) as tmp_out:
        onnx.save(model, str(tmp_out))
    return info


def quant_metadata(path: str | Path) -> dict[str, str]:
    """The `smnas.quant.*` properties of a graph ({} for a float graph)."""
    return {p.key.removeprefix("smnas.quant."): p.value for p in load_graph(path).metadata_props
            if p.key.startswith("smnas.quant.")}
