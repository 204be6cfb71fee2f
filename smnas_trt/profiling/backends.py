"""The ONNX Runtime and PyTorch latency backends (TensorRT lives in `tensorrt_backend.py`).

- `ort-cpu`: ONNX Runtime's CPU provider, fixed intra-op threads, sequential execution;
- `ort-cuda`: ONNX Runtime's CUDA provider on our own non-default stream, timed with CUDA events;
- `torch`: PyTorch eager on CPU (fixed threads) or CUDA (events, optional CUDA graph replay).

Build them from `profiling.spec.BackendSpec`; the interface is `profiling.backend`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smnas_trt.errors import BackendUnavailableError, ProfilingError, first_line
from smnas_trt.profiling.backend import (
    ONNX_TYPE_TO_NUMPY,
    Backend,
    Feeds,
    Runner,
    TensorSpec,
    ordered_feeds,
)
from smnas_trt.profiling.fingerprint import Fingerprint, cpu_count, cpu_fingerprint, cuda_fingerprint
from smnas_trt.profiling.onnx_graph import check_graph_precision, check_onnx_path
from smnas_trt.profiling.timing import Clock, CudaEventClock, HostClock, LatencyStats, TimingConfig, time_runs


# ---------------------------------------------------------------------------------------- ONNX Runtime
class OrtRunner(Runner):
    def __init__(self, session: Any, clock: Clock, seed: int = 0, device: str = "cpu") -> None:
        self.session = session
        self.clock = clock
        self.device = device
        self.inputs = [
            TensorSpec(
                i.name,
                tuple(int(d) if isinstance(d, int) else 1 for d in i.shape),
                ONNX_TYPE_TO_NUMPY.get(i.type, "float32"),
            )
            for i in session.get_inputs()
        ]
        self.output_names = [o.name for o in session.get_outputs()]
        self._binding: Any = None
        self.set_inputs(None, seed)

    def set_inputs(self, feeds: Feeds | None, seed: int = 0) -> None:
        self.feeds = ordered_feeds(self.inputs, feeds, seed)
        if self.device == "cuda":
            import onnxruntime as ort

            # Inputs live on the GPU and outputs stay there, so a timed run is compute only.
            binding = self.session.io_binding()
            self._device_inputs = {
                k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", 0) for k, v in self.feeds.items()
            }
            for name, value in self._device_inputs.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.output_names:
                binding.bind_output(name, "cuda")
            self._binding = binding

    def run(self, feeds: Feeds | None = None) -> list[np.ndarray]:
        if feeds is not None:
            self.set_inputs(feeds)
        return [np.asarray(o) for o in self.session.run(None, self.feeds)]

    def _step(self) -> None:
        if self._binding is not None:
            self.session.run_with_iobinding(self._binding)
        else:
            self.session.run(None, self.feeds)

    def time(self, config: TimingConfig | None = None) -> LatencyStats:
        return time_runs(self._step, config, self.clock)

    def close(self) -> None:
        self._binding = None
        self.session = None


class OrtCpuBackend(Backend):
    """ONNX Runtime on CPU: fixed intra-op threads, sequential execution, all graph optimizations."""

    name = "ort-cpu"

    def __init__(self, threads: int | None = None, precision: str = "fp32", batch: int = 1) -> None:
        super().__init__(precision, batch)
        self.threads = threads if threads is not None else cpu_count()
        if self.threads < 1:
            raise ProfilingError(f"threads must be >= 1, got {self.threads}")

    def version(self) -> str:
        import onnxruntime as ort

        return str(ort.__version__)

    def fingerprint(self) -> Fingerprint:
        return cpu_fingerprint(
            self.name, self.version(), threads=self.threads, precision=self.precision, batch=self.batch
        )

    def session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT warns about unused initializers on every load
        return opts

    def providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort

        check_graph_precision(path, self.precision, self.name)
        try:
            return ort.InferenceSession(str(path), sess_options=self.session_options(), providers=self.providers())
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ProfilingError(f"{path}: ONNX Runtime cannot load it: {first_line(e)}") from e

    def load(self, onnx_path: str | Path) -> Runner:
        path = check_onnx_path(onnx_path)
        return OrtRunner(self._session(path), HostClock())


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime's CUDA execution provider on our own non-default stream, timed with CUDA events."""

    name = "ort-cuda"

    def __init__(self, device: int = 0, precision: str = "fp32", batch: int = 1, threads: int | None = None) -> None:
        super().__init__(threads=threads or 1, precision=precision, batch=batch)
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                "backend ort-cuda needs the onnxruntime-gpu package and a CUDA GPU; "
                f"this onnxruntime offers only {', '.join(ort.get_available_providers())}"
            )
        self.device = device
        self._clock: CudaEventClock | None = None

    def fingerprint(self) -> Fingerprint:
        return cuda_fingerprint(
            self.name, self.version(), device=self.device, precision=self.precision, batch=self.batch
        )

    def clock(self) -> CudaEventClock:
        if self._clock is None:
            self._clock = CudaEventClock()
        return self._clock

    def providers(self) -> list[Any]:
        stream = self.clock().stream
        return [
            (
                "CUDAExecutionProvider",
                {
                    "device_id": self.device,
                    # ORT enqueues its kernels on our stream, so events on that stream bracket them.
                    "user_compute_stream": str(stream.cuda_stream),
                    "has_user_compute_stream": "1",
                },
            )
        ]

    def load(self, onnx_path: str | Path) -> Runner:
        path = check_onnx_path(onnx_path)
        session = self._session(path)
        if "CUDAExecutionProvider" not in session.get_providers():
            raise BackendUnavailableError(
                f"{path}: ONNX Runtime could not start its CUDA provider on device {self.device}"
            )
        return OrtRunner(session, self.clock(), device="cuda")


# ---------------------------------------------------------------------------------------------- torch
def _flatten(obj: Any) -> list[Any]:
    """Tensors of a nested output (tensor, list/tuple, dict in insertion order) in a flat list."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flatten(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _flatten(v)]
    return []


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside the block (None: left as they are), restored after."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRunner(Runner):
    def __init__(self, module: Any, example_inputs: Sequence[Any], backend: TorchBackend) -> None:
        import torch

        self.backend = backend
        self.device = torch.device(backend.device)
        self.dtype = torch.float16 if backend.precision == "fp16" else torch.float32
        module = copy.deepcopy(module).eval().to(self.device)
        if backend.precision == "fp16":
            module = module.half()
        self.module = module
        self._graph: Any = None
        self._graph_outputs: Any = None
        self._static_inputs = [self._to_device(t) for t in example_inputs]
        self.inputs = [
            TensorSpec(f"input_{i}", tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for i, t in enumerate(self._static_inputs)
        ]
        self.clock: Clock = CudaEventClock() if self.device.type == "cuda" else HostClock()

    def _to_device(self, t: Any) -> Any:
        import torch

        t = torch.as_tensor(t).to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    def set_inputs(self, feeds: Feeds | None, seed: int = 0) -> None:
        import torch

        if feeds is None:
            return
        arrays = ordered_feeds(self.inputs, feeds, seed)
        for static, array in zip(self._static_inputs, arrays.values(), strict=True):
            static.copy_(self._to_device(torch.from_numpy(np.ascontiguousarray(array))))  # in place: graphs read these

    def _forward(self) -> Any:
        return self.module(*self._static_inputs)

    def run(self, feeds: Feeds | None = None) -> list[np.ndarray]:
        import torch

        self.set_inputs(feeds)
        with torch_threads(self.backend.threads), torch.inference_mode():
            if self._graph is not None:  # once captured, run what is timed: a replay on the static inputs
                self._graph.replay()
                outputs = self._graph_outputs
            else:
                outputs = self._forward()
            return [t.detach().float().cpu().numpy() for t in _flatten(outputs)]

    def _capture_graph(self) -> Callable[[], object]:
        """Capture one forward as a CUDA graph (warm-up on a side stream first, as torch documents)."""
        import torch

        assert isinstance(self.clock, CudaEventClock)
        stream = self.clock.stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self._graph_outputs = self._forward()
        self._graph = graph
        return graph.replay

    def time(self, config: TimingConfig | None = None) -> LatencyStats:
        import torch

        with torch_threads(self.backend.threads), torch.inference_mode():
            step: Callable[[], object] = self._forward
            if self.backend.cuda_graphs:
                step = self._graph.replay if self._graph is not None else self._capture_graph()
            return time_runs(step, config, self.clock)

    def close(self) -> None:
        self._graph = None
        self.module = None


class TorchBackend(Backend):
    """PyTorch eager on CPU (fixed threads) or CUDA (events on a non-default stream, optional CUDA graphs)."""

    name = "torch"

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        cuda_graphs: bool = False,
        precision: str = "fp32",
        batch: int = 1,
        cudnn_benchmark: bool = True,
    ) -> None:
        super().__init__(precision, batch)
        import torch

        cuda = device.startswith("cuda")
        if device != "cpu" and not cuda:
            raise ProfilingError(f"torch backend device {device!r} is not one of cpu, cuda, cuda:N")
        if cuda and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch backend on {device} needs a CUDA GPU; torch sees none here")
        if cuda_graphs and not cuda:
            raise ProfilingError("torch backend: cuda_graphs needs a CUDA device")
        self.device = device
        self.device_index = int(device.split(":")[1]) if ":" in device else 0
        self.threads = (threads if threads is not None else cpu_count()) if not cuda else None
        self.cuda_graphs = cuda_graphs
        if cuda:
            torch.backends.cudnn.benchmark = cudnn_benchmark

    def version(self) -> str:
        import torch

        return str(torch.__version__).split("+")[0]

    def fingerprint(self) -> Fingerprint:
        name = "torch-cudagraph" if self.cuda_graphs else self.name
        if self.device.startswith("cuda"):
            return cuda_fingerprint(name, self.version(), device=self.device_index, precision=self.precision,
                                    batch=self.batch)
        assert self.threads is not None
        return cpu_fingerprint(name, self.version(), threads=self.threads, precision=self.precision, batch=self.batch)

    def load(self, onnx_path: str | Path) -> Runner:
        check_onnx_path(onnx_path)
        raise ProfilingError(
            f"{onnx_path}: the torch backend runs nn.Modules, not ONNX files; use load_module(module, example_inputs)"
        )

    def load_module(self, module: Any, example_inputs: Any) -> Runner:
        import torch

        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        return TorchRunner(module, tuple(example_inputs), self)
