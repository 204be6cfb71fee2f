"""Backends on real ONNX Runtime sessions and real torch modules; TensorRT and CUDA tests skip here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from smnas_trt.errors import BackendUnavailableError, ProfilingError
from smnas_trt.profiling.backend import random_inputs
from smnas_trt.profiling.spec import BACKEND_NAMES, BackendSpec, parse_backend_spec
from smnas_trt.profiling.timing import TimingConfig

torch.set_num_threads(1)
QUICK = TimingConfig.quick()


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU, a strided conv, an upsample and an add: the op mix of detector bodies."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.ReLU())
        self.down = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.down(c1)
        p1 = c1 + torch.nn.functional.interpolate(c2, scale_factor=2.0, mode="nearest")
        return self.head(p1), self.head(c2)


def get_backend(name: str, **kw: object):  # type: ignore[no-untyped-def]
    """The backend of a spec with these fields (a TensorRT-only option such as cache_dir passed through)."""
    extra = {k: kw.pop(k) for k in ("cache_dir", "layer_times") if k in kw}
    return BackendSpec(backend=name, **kw).build(**extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet().eval(), torch.rand(1, 3, 32, 32)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory) -> Path:
    module, x = tiny
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["images"], verbose=False)
    return path


def test_ort_cpu_runs_and_matches_torch(tiny, tiny_onnx) -> None:
    module, x = tiny
    backend = get_backend("ort-cpu", threads=1)
    with backend.load(tiny_onnx) as runner:
        assert [(s.name, s.shape, s.dtype) for s in runner.inputs] == [("images", (1, 3, 32, 32), "float32")]
        outputs = runner.run({"images": x.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in module(x)]
    assert [o.shape for o in outputs] == [(1, 4, 32, 32), (1, 4, 16, 16)]
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ort_cpu_session_settings_and_timing(tiny_onnx) -> None:
    backend = get_backend("ort-cpu", threads=1)
    opts = backend.session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    stats = backend.load(tiny_onnx).time(QUICK)
    assert QUICK.min_runs <= stats.n <= QUICK.max_runs
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_ort_cpu_fingerprint(tiny_onnx) -> None:
    fp = get_backend("ort-cpu", threads=1, precision="fp32", batch=1).fingerprint()
    assert (fp.device_kind, fp.backend, fp.backend_version, fp.threads, fp.batch) == (
        "cpu", "ort-cpu", ort.__version__, 1, 1
    )  # fmt: skip
    assert fp.device_name and fp.cores and fp.cores >= 1
    assert len(fp.key) == 12
    assert get_backend("ort-cpu", threads=2).fingerprint().key != fp.key  # thread count is part of the key


def test_torch_backend_matches_ort_on_same_graph(tiny, tiny_onnx) -> None:
    module, x = tiny
    feeds = random_inputs(get_backend("ort-cpu", threads=1).load(tiny_onnx).inputs, seed=3)
    ort_out = get_backend("ort-cpu", threads=1).load(tiny_onnx).run(feeds)
    torch_runner = get_backend("torch", threads=1).load_module(module, (x,))
    torch_out = torch_runner.run([feeds["images"]])
    for a, b in zip(ort_out, torch_out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    stats = torch_runner.time(QUICK)
    assert stats.n >= QUICK.min_runs and stats.median_ms > 0
    assert get_backend("torch", threads=1).fingerprint().backend == "torch"


def test_torch_backend_refuses_onnx_files(tiny_onnx) -> None:
    with pytest.raises(ProfilingError, match=r"nn\.Modules"):
        get_backend("torch").load(tiny_onnx)
    with pytest.raises(ValidationError, match="cuda_graphs"):
        get_backend("torch", device="cpu", cuda_graphs=True)


def test_ort_refuses_modules(tiny) -> None:
    with pytest.raises(ProfilingError, match="only the torch backend"):
        get_backend("ort-cpu").load_module(*tiny)


def test_unknown_backend_option_and_device_are_one_line() -> None:
    with pytest.raises(ProfilingError) as e:
        parse_backend_spec({"backend": "onnx-gpu"}, "profile-lut")
    assert str(e.value).startswith("profile-lut: backend: ") and "\n" not in str(e.value)
    for name in BACKEND_NAMES:
        assert name in str(e.value)
    with pytest.raises(ProfilingError, match="profile-lut: warp: unknown field"):
        parse_backend_spec({"backend": "ort-cpu", "warp": 9}, "profile-lut")
    with pytest.raises(ProfilingError, match="precision"):
        parse_backend_spec({"precision": "int4"})
    with pytest.raises(ProfilingError, match=r"device 'gpu0' is not one of cpu, cuda, cuda:N"):
        parse_backend_spec({"backend": "torch", "device": "gpu0"})
    with pytest.raises(ProfilingError, match="ort-cpu runs on the cpu, not on cuda:0"):
        parse_backend_spec({"backend": "ort-cpu", "device": "cuda:0"})
    with pytest.raises(ProfilingError, match="fp16 needs a GPU backend"):
        parse_backend_spec({"backend": "ort-cpu", "precision": "fp16"})
    # One vocabulary: cuda means cuda:0, for every backend.
    spec = BackendSpec(backend="ort-cuda", device="cuda")
    assert (spec.device_kind, spec.device_index) == ("cuda", 0)
    assert BackendSpec(backend="torch", device="cuda:1").device_index == 1
    assert BackendSpec().resolved_device == "cpu" and BackendSpec(backend="tensorrt").resolved_device == "cuda:0"


def test_cuda_device_is_refused_in_one_line_where_there_is_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = BackendSpec(backend="torch", device="cuda:0")  # valid anywhere: the config may be for another machine
    with pytest.raises(BackendUnavailableError) as e:
        spec.check_here()
    assert str(e.value) == "device cuda:0 (torch) needs a CUDA GPU; torch sees none on this machine"


def test_missing_and_corrupt_onnx(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ProfilingError, match=r"nope\.onnx"):
        get_backend("ort-cpu").load(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf model \xff\xfe")
    with pytest.raises(ProfilingError, match=r"corrupt\.onnx"):
        get_backend("ort-cpu").load(corrupt)


def test_fp16_needs_an_fp16_graph(tiny_onnx) -> None:
    from smnas_trt.profiling.onnx_graph import check_graph_precision

    with pytest.raises(ProfilingError, match="graph inputs are float32 but backend ort-cuda was asked for fp16"):
        check_graph_precision(tiny_onnx, "fp16", "ort-cuda")
    check_graph_precision(tiny_onnx, "int8", "ort-cpu")  # an int8 (QDQ) graph keeps float inputs


def test_random_inputs_are_seeded(tiny_onnx) -> None:
    specs = get_backend("ort-cpu").load(tiny_onnx).inputs
    a, b, c = random_inputs(specs, 1), random_inputs(specs, 1), random_inputs(specs, 2)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not np.array_equal(a["images"], c["images"])


def test_gpu_backends_say_why_they_cannot_run() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name in ("tensorrt", "ort-cuda"):
        if name == "ort-cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            continue
        with pytest.raises(BackendUnavailableError) as e:
            get_backend(name)
        assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        get_backend("torch", device="cuda")


# --------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_cuda_matches_cpu(tiny, cuda_graphs: bool) -> None:
    module, x = tiny
    cpu = get_backend("torch", threads=1).load_module(module, (x,)).run()
    runner = get_backend("torch", device="cuda", cuda_graphs=cuda_graphs).load_module(module, (x,))
    for a, b in zip(cpu, runner.run(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    stats = runner.time(QUICK)
    assert stats.n >= QUICK.min_runs and stats.median_ms > 0


@pytest.mark.gpu
def test_ort_cuda_matches_cpu(tiny_onnx) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    feeds = random_inputs(get_backend("ort-cpu").load(tiny_onnx).inputs)
    cpu = get_backend("ort-cpu").load(tiny_onnx).run(feeds)
    runner = get_backend("ort-cuda").load(tiny_onnx)
    for a, b in zip(cpu, runner.run(feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert runner.time(QUICK).median_ms > 0


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_ort(tiny_onnx, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    feeds = random_inputs(get_backend("ort-cpu").load(tiny_onnx).inputs)
    cpu = get_backend("ort-cpu").load(tiny_onnx).run(feeds)
    backend = get_backend("tensorrt", cache_dir=tmp_path, layer_times=True)
    runner = backend.load(tiny_onnx)
    for a, b in zip(cpu, runner.run(feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    assert runner.time(QUICK).median_ms > 0
    assert runner.layer_times(runs=3)  # the IProfiler saw layers
    assert len(list(tmp_path.glob("*.engine"))) == 1
    backend.load(tiny_onnx)  # second load comes from the cache
    assert len(list(tmp_path.glob("*.engine"))) == 1
