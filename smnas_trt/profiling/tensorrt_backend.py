"""TensorRT backend for TensorRT 10.x and 11.x, written to the documented Python API.

`tensorrt` is imported only when this backend is built; without it, or without a CUDA GPU, the
constructor raises BackendUnavailableError with one sentence. CUDA memory and streams come from
torch (no pycuda / cuda-python dependency): buffers are torch tensors whose `data_ptr()` goes to
`set_tensor_address`, and runs are enqueued with `execute_async_v3` on a non-default torch stream,
timed with CUDA events on that stream.

Version differences handled here (see DESIGN.md):
- 10.x: FP16 through `BuilderFlag.FP16` on an FP32 graph (weak typing), or a strongly typed network
  when the graph itself is FP16.
- 11.x: networks are always strongly typed and `BuilderFlag.FP16` is gone, so an FP16 engine needs
  an FP16 ONNX graph (`smnas_trt.profiling.export` writes one).

Engines are cached on disk, keyed by the ONNX file's hash, TensorRT version, precision, input
shapes, workspace and device (GPU name + compute capability).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from smnas_trt.errors import BackendUnavailableError, ProfilingError
from smnas_trt.fileio import atomic_write_bytes, atomic_write_json
from smnas_trt.profiling.backend import Backend, Feeds, Runner, TensorSpec, ordered_feeds
from smnas_trt.profiling.cache import cache_root
from smnas_trt.profiling.fingerprint import Fingerprint, cuda_fingerprint
from smnas_trt.profiling.onnx_graph import check_onnx_path, load_graph, onnx_float_type, static_input_shapes
from smnas_trt.profiling.quantize import count_qdq
from smnas_trt.profiling.timing import CudaEventClock, LatencyStats, TimingConfig, time_runs

if TYPE_CHECKING:  # checked against the tensorrt-stubs package where it is on MYPYPATH
    import tensorrt as trt

SUPPORTED_MAJORS = (10, 11)
DEFAULT_WORKSPACE = 4 << 30  # 4 GiB: enough tactics for detector bodies at 1333x800


def default_cache_dir() -> Path:
    return cache_root() / "trt-engines"


def import_tensorrt() -> ModuleType:
    """Import the TensorRT bindings, checking for a CUDA GPU first (trt.Builder fails without one)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("backend tensorrt needs an NVIDIA GPU with CUDA; torch sees none on this machine")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise BackendUnavailableError(
            f"backend tensorrt needs the TensorRT Python package and libraries ({type(e).__name__}: {e}); "
            "install them with pip install 'smnas-trt[tensorrt]' or use --backend ort-cuda"
        ) from e
    major = trt_major(trt)
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is installed; this backend supports 10.x and 11.x")
    return trt


def trt_major(module: ModuleType) -> int:
    return int(str(module.__version__).split(".")[0])


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    """A Dims as a tuple (Dims supports len and indexing; -1 marks a dynamic or data-dependent size)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _numpy_dtype(dtype: trt.DataType) -> np.dtype:
    import tensorrt as trt

    return np.dtype(trt.nptype(dtype))


def _torch_dtype(np_dtype: np.dtype) -> Any:
    import torch

    return {
        np.dtype("float32"): torch.float32,
        np.dtype("float16"): torch.float16,
        np.dtype("int32"): torch.int32,
        np.dtype("int64"): torch.int64,
        np.dtype("int8"): torch.int8,
        np.dtype("uint8"): torch.uint8,
        np.dtype("bool"): torch.bool,
    }[np_dtype]


def _make_layer_profiler() -> Any:
    """An IProfiler collecting per-layer times (ms) of every run while it is attached."""
    import tensorrt as trt

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.times: dict[str, list[float]] = defaultdict(list)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.times[layer_name].append(float(ms))

    return LayerTimes()


def _make_output_allocator() -> Any:
    """An IOutputAllocator for data-dependent output shapes (NMS): grows torch buffers on request."""
    import tensorrt as trt
    import torch

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.numel() < size:
                buf = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
                self.buffers[tensor_name] = buf
            return int(buf.data_ptr())

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return TorchOutputAllocator()


def engine_cache_key(
    onnx_path: Path, trt_version: str, precision: str, shapes: dict[str, tuple[int, ...]], device: str, workspace: int
) -> str:
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    fields = {
        "onnx_sha256": h.hexdigest(),
        "tensorrt": trt_version,
        "precision": precision,
        "shapes": {k: list(v) for k, v in sorted(shapes.items())},
        "device": device,
        "workspace": workspace,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _onnx_input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return static_input_shapes(load_graph(path), path)


class TensorRTRunner(Runner):
    """A deserialized engine with one execution context, device buffers and a non-default stream."""

    def __init__(self, engine: trt.ICudaEngine, layer_times: bool, seed: int = 0) -> None:
        import tensorrt as trt

        self.engine: trt.ICudaEngine | None = engine
        self._context: trt.IExecutionContext | None = engine.create_execution_context()
        self.clock = CudaEventClock()
        self.stream = self.clock.stream
        self.profiler = _make_layer_profiler() if layer_times else None
        self.inputs: list[TensorSpec] = []
        self.output_names: list[str] = []
        io_dtypes: dict[str, np.dtype] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            io_dtypes[name] = _numpy_dtype(engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = _dims(engine.get_tensor_shape(name))
                self.inputs.append(TensorSpec(name, shape, io_dtypes[name].name))
                self.context.set_input_shape(name, shape)
            else:
                self.output_names.append(name)
        self._allocate(io_dtypes)
        self.set_inputs(None, seed)

    @property
    def context(self) -> trt.IExecutionContext:
        if self._context is None:
            raise ProfilingError("this TensorRT runner is closed")
        return self._context

    def _allocate(self, io_dtypes: dict[str, np.dtype]) -> None:
        import torch

        self.buffers: dict[str, Any] = {}
        self.allocator: Any = None
        for spec in self.inputs:
            self.buffers[spec.name] = torch.empty(spec.shape, dtype=_torch_dtype(io_dtypes[spec.name]), device="cuda")
            self.context.set_tensor_address(spec.name, self.buffers[spec.name].data_ptr())
        self.output_dtypes = {name: io_dtypes[name] for name in self.output_names}
        for name in self.output_names:
            shape = _dims(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                # Data-dependent size (e.g. NonMaxSuppression): TensorRT asks the allocator at run time.
                if self.allocator is None:
                    self.allocator = _make_output_allocator()
                self.context.set_output_allocator(name, self.allocator)
                continue
            self.buffers[name] = torch.empty(shape, dtype=_torch_dtype(io_dtypes[name]), device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def set_inputs(self, feeds: Feeds | None, seed: int = 0) -> None:
        import torch

        arrays = ordered_feeds(self.inputs, feeds, seed)
        for name, array in arrays.items():
            self.buffers[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
        torch.cuda.synchronize()

    def _step(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ProfilingError("TensorRT execute_async_v3 returned False (see the TensorRT log above)")

    def run(self, feeds: Feeds | None = None) -> list[np.ndarray]:
        import torch

        if feeds is not None:
            self.set_inputs(feeds)
        self._step()
        self.stream.synchronize()
        outputs: list[np.ndarray] = []
        for name in self.output_names:
            if name in self.buffers:
                outputs.append(self.buffers[name].cpu().numpy())
                continue
            shape = self.allocator.shapes[name]
            dtype = self.output_dtypes[name]
            count = int(np.prod(shape)) if shape else 1
            raw = self.allocator.buffers[name][: count * dtype.itemsize].cpu().numpy()
            outputs.append(raw.view(dtype).reshape(shape))
        torch.cuda.synchronize()
        return outputs

    def time(self, config: TimingConfig | None = None) -> LatencyStats:
        return time_runs(self._step, config, self.clock)

    def layer_times(self, runs: int = 10) -> dict[str, float]:
        """Median per-layer time (ms) over `runs` profiled runs; needs layer_times=True at build."""
        if self.profiler is None:
            raise ProfilingError("per-layer times need the backend built with layer_times=True")
        self.profiler.times.clear()
        self.context.profiler = self.profiler
        try:
            for _ in range(runs):
                self._step()
                self.stream.synchronize()
        finally:
            self.context.profiler = None  # type: ignore[assignment]  # detaches; the stubs omit None
        return {name: float(np.median(ms)) for name, ms in self.profiler.times.items()}

    def layer_information(self) -> str:
        """The engine inspector's JSON description of every layer (DETAILED when built with layer_times)."""
        import tensorrt as trt

        if self.engine is None:
            raise ProfilingError("this TensorRT runner is closed")
        inspector = self.engine.create_engine_inspector()
        return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))

    def close(self) -> None:
        self._context = None
        self.engine = None
        self.buffers = {}


class TensorRTBackend(Backend):
    """Builds serialized engines from static-shape ONNX files and times them with CUDA events."""

    name = "tensorrt"

    def __init__(
        self,
        precision: str = "fp32",
        batch: int = 1,
        device: int = 0,  # CUDA device index (BackendSpec: cuda:N)
        workspace: int = DEFAULT_WORKSPACE,
        cache_dir: str | Path | None = None,
        layer_times: bool = False,
    ) -> None:
        super().__init__(precision, batch)
        self.major = trt_major(import_tensorrt())
        import tensorrt as trt

        self.device = device
        import torch

        torch.cuda.set_device(device)  # buffers and streams come from torch: on the engine's GPU
        self.workspace = workspace
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.layer_times = layer_times
        self.logger = trt.Logger(trt.Logger.WARNING)
        # Registers the standard plugins (RoiAlign, NMS, ...) the ONNX parser maps some ops to.
        trt.init_libnvinfer_plugins(self.logger, "")

    def version(self) -> str:
        import tensorrt as trt

        return str(trt.__version__)

    def fingerprint(self) -> Fingerprint:
        return cuda_fingerprint(
            self.name, self.version(), device=self.device, precision=self.precision, batch=self.batch
        )

    def _device_id(self) -> str:
        fp = self.fingerprint()
        return f"{fp.device_name}|sm{fp.compute_capability}"

    def _network_flags(self, path: Path) -> tuple[int, bool]:
        """(create_network flags, whether to set BuilderFlag.FP16) for this precision and TensorRT major."""
        import tensorrt as trt

        graph_type = onnx_float_type(path)
        if self.precision == "int8":
            # Explicit quantization: the QDQ graph (profiling/quantize.py, symmetric s8s8) says where INT8 runs.
            # NVIDIA's guide: use it with strong typing and no precision flags; TensorRT 11 has no other mode
            # (BuilderFlag.INT8 and implicit calibrators are removed there).
            if not _has_qdq(path):
                raise ProfilingError(f"{path}: an int8 engine needs a QDQ graph (QuantizeLinear/DequantizeLinear); "
                                     "quantize it first (smnas_trt.profiling.quantize)")
            return (0 if self.major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)), False
        if self.precision == "fp32":
            if graph_type == "float16":
                raise ProfilingError(f"{path}: graph is float16 but the tensorrt backend was asked for fp32")
            return 0, False
        if self.major >= 11:
            if graph_type != "float16":
                raise ProfilingError(
                    f"{path}: TensorRT {self.version()} builds fp16 engines only from an FP16 graph "
                    "(strong typing); export the fp16 variant (smnas_trt.profiling.export)"
                )
            return 0, False  # strongly typed is the only mode in 11.x
        if graph_type == "float16":
            return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED), False
        return 0, True  # 10.x weak typing: let the builder pick FP16 kernels

    def build_serialized(self, path: Path) -> bytes:
        import tensorrt as trt

        flags, fp16_flag = self._network_flags(path)
        builder = trt.Builder(self.logger)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ProfilingError(f"{path}: TensorRT's ONNX parser failed: {errors[0] if errors else 'no detail'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        if self.layer_times:
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        # Static shapes: one optimization profile with min = opt = max.
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = _dims(tensor.shape)
            if any(d < 0 for d in shape):
                raise ProfilingError(f"{path}: input {tensor.name} has a dynamic dimension; export with static shapes")
            static = trt.Dims(list(shape))
            profile.set_shape(tensor.name, static, static, static)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ProfilingError(f"{path}: TensorRT could not build an engine (see the TensorRT log above)")
        return bytes(serialized)

    def engine_path(self, path: Path) -> Path:
        key = engine_cache_key(
            path, self.version(), self.precision, _onnx_input_shapes(path), self._device_id(), self.workspace
        )
        return self.cache_dir / f"{key}{'-detailed' if self.layer_times else ''}.engine"

    def load(self, onnx_path: str | Path) -> Runner:
        path = check_onnx_path(onnx_path)
        cached = self.engine_path(path)
        if cached.is_file():
            data = cached.read_bytes()
        else:
            data = self.build_serialized(path)
            atomic_write_bytes(cached, data)
            atomic_write_json(
                cached.with_suffix(".json"),
                {
                    "onnx": str(path),
                    "tensorrt": self.version(),
                    "precision": self.precision,
                    "device": self._device_id(),
                },
            )
        import tensorrt as trt

        runtime = trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ProfilingError(f"{cached}: TensorRT could not deserialize the cached engine; delete it to rebuild")
        runner = TensorRTRunner(engine, self.layer_times)
        runner.runtime = runtime  # type: ignore[attr-defined]  # keep the runtime alive as long as the engine
        return runner


def _has_qdq(path: Path) -> bool:
    return count_qdq(load_graph(path)) > 0


__all__: list[str] = ["TensorRTBackend", "TensorRTRunner", "default_cache_dir", "engine_cache_key", "import_tensorrt"]
