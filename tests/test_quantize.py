"""INT8 (QDQ) graphs on real ONNX Runtime quantization and sessions; profile-lut --precision int8 rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_cli_profile_lut import run_main  # the real entry point, in-process

from smnas_trt.errors import ForeignDeviceError, ProfilingError
from smnas_trt.fileio import sha256_file
from smnas_trt.models import build_detector
from smnas_trt.models.graphs import detector_graphs
from smnas_trt.profiling.cache import OnnxCache
from smnas_trt.profiling.export import export_onnx
from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.profile import profile_lut
from smnas_trt.profiling.quantize import QUANTIZED_OPS, quant_metadata, quantize_onnx, random_feeds, scheme_for
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import LatencyStats, TimingConfig
from smnas_trt.space import load_space

QUICK = TimingConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, max_runs=5, budget_s=0.0)


def tiny_fpn_arch() -> Any:
    space = load_space("tiny")
    return space.structure_arch(*next(s for s in space.structures if s[2].startswith("fpn")))


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny FPN detector's body graph (seeded weights), exported fp32."""
    torch.manual_seed(0)
    arch = tiny_fpn_arch()
    graph = detector_graphs(build_detector(arch, 3).eval(), arch)[0]
    path = tmp_path_factory.mktemp("q") / "body.onnx"
    export_onnx(graph.module, graph.example_inputs, path, input_names=graph.input_names,
                output_names=graph.output_names)
    return graph, path


def _producers(model: Any) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def _session(path: Path, optimise: bool = True) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("scheme", ["u8s8", "s8s8"])
def test_qdq_around_every_conv_and_close_to_fp32(body: tuple[Any, Path], tmp_path: Path, scheme: str) -> None:
    graph, fp32 = body
    feed = {name: x.numpy() for name, x in zip(graph.input_names, graph.example_inputs, strict=True)}
    out = tmp_path / "int8.onnx"
    info = quantize_onnx(fp32, out, [feed], scheme)  # type: ignore[arg-type]
    model = onnx.load(str(out))
    producers = _producers(model)
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node) > 5
    for conv in convs:  # activation and weight come through DequantizeLinear; the output goes to QuantizeLinear
        assert [producers[i].op_type for i in conv.input[:2]] == ["DequantizeLinear", "DequantizeLinear"], conv.name
        assert {c.op_type for c in consumers[conv.output[0]]} == {"QuantizeLinear"}, conv.name
        weight_dq = producers[conv.input[1]]
        inits = {i.name: i for i in model.graph.initializer}
        out_channels = inits[weight_dq.input[0]].dims[0]
        assert list(inits[weight_dq.input[1]].dims) == [out_channels]  # one weight scale per output channel
    zero_points = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_zero_point")]
    if scheme == "s8s8":  # TensorRT: symmetric, signed, zero points 0 (int32 ones are the biases')
        assert all(z.dtype in (np.int8, np.int32) and not z.any() for z in zero_points)
    else:  # ONNX Runtime CPU: uint8 activations
        assert any(z.dtype == np.uint8 for z in zero_points)
    assert info.qdq_nodes == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    assert info.quantized_ops == QUANTIZED_OPS and "Resize" in info.float_ops
    assert quant_metadata(out)["scheme"] == scheme
    assert {p.key: p.value for p in model.metadata_props}["smnas.precision"] == "int8"
    want = _session(fp32).run(None, feed)
    # u8s8 on ORT's CPU kernels; s8s8 (TensorRT's) with ORT's optimisations off, i.e. the exact QDQ arithmetic
    # TensorRT implements: ORT's fused S8S8 CPU kernels saturate on AVX2 without VNNI (profiling/quantize.py).
    got = _session(out, optimise=scheme == "u8s8").run(None, feed)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        assert np.corrcoef(w.ravel(), g.ravel())[0, 1] > 0.95  # INT8 rounding, seeded untrained weights


def test_calibration_is_deterministic_for_a_seed(body: tuple[Any, Path], tmp_path: Path) -> None:
    graph, fp32 = body
    feeds = random_feeds(graph.input_names, graph.example_inputs, 3, seed=7)
    again = random_feeds(graph.input_names, graph.example_inputs, 3, seed=7)
    other = random_feeds(graph.input_names, graph.example_inputs, 3, seed=8)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(feeds, again, strict=True) for k in a)
    assert not np.array_equal(feeds[0][graph.input_names[0]], other[0][graph.input_names[0]])
    paths = [tmp_path / f"{name}.onnx" for name in ("a", "b", "c")]
    for path, f in zip(paths, (feeds, again, other), strict=True):
        quantize_onnx(fp32, path, f, "u8s8")
    assert sha256_file(paths[0]) == sha256_file(paths[1])  # same seed: same bytes, so same scales
    assert sha256_file(paths[0]) != sha256_file(paths[2])


def test_percentile_calibration_narrows_the_activation_ranges(body: tuple[Any, Path], tmp_path: Path) -> None:
    """Percentile clips the rare extremes MinMax keeps: every activation scale is at most MinMax's, some
    smaller; weights (per channel, from the weights themselves) are the same."""
    import onnx
    from onnx import numpy_helper

    graph, fp32 = body
    feeds = random_feeds(graph.input_names, graph.example_inputs, 4, seed=3)
    scales = {}
    for method in ("minmax", "percentile"):
        quantize_onnx(fp32, tmp_path / f"{method}.onnx", feeds, "u8s8", method)
        scales[method] = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / f"{method}.onnx"))
                          .graph.initializer if i.name.endswith("_scale")}
    assert scales["minmax"].keys() == scales["percentile"].keys()
    activations = [k for k in scales["minmax"] if scales["minmax"][k].size == 1 and "weight" not in k]
    weights = [k for k in scales["minmax"] if "weight" in k]
    assert activations and weights
    ratio = np.array([scales["percentile"][k].item() / scales["minmax"][k].item() for k in activations])
    assert (ratio <= 1 + 1e-6).all() and (ratio < 0.9995).any()  # a 2048-bin histogram: small steps
    assert all(np.array_equal(scales["minmax"][k], scales["percentile"][k]) for k in weights)


def test_quantize_refuses_bad_input(body: tuple[Any, Path], tmp_path: Path) -> None:
    graph, fp32 = body
    feeds = random_feeds(graph.input_names, graph.example_inputs, 1)
    with pytest.raises(ProfilingError, match="no calibration data"):
        quantize_onnx(fp32, tmp_path / "x.onnx", [], "u8s8")
    with pytest.raises(ProfilingError, match="scheme 'u8u8' is not one of"):
        quantize_onnx(fp32, tmp_path / "x.onnx", feeds, "u8u8")  # type: ignore[arg-type]
    with pytest.raises(ProfilingError, match="calibration method 'entropy' is not one of minmax, percentile"):
        quantize_onnx(fp32, tmp_path / "x.onnx", feeds, "u8s8", "entropy")  # type: ignore[arg-type]
    quantize_onnx(fp32, tmp_path / "q.onnx", feeds, "u8s8")
    with pytest.raises(ProfilingError, match="already quantized"):
        quantize_onnx(tmp_path / "q.onnx", tmp_path / "x.onnx", feeds, "u8s8")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ProfilingError, match="samples must be >= 1"):
        random_feeds(graph.input_names, graph.example_inputs, 0)


def test_schemes_per_backend() -> None:
    assert scheme_for("ort-cpu") == "u8s8"
    assert scheme_for("tensorrt") == scheme_for("ort-cuda") == "s8s8"


def test_cache_keeps_int8_apart_from_fp32(body: tuple[Any, Path], tmp_path: Path) -> None:
    graph, _ = body
    with OnnxCache(tmp_path / "cache") as cache:
        kw: dict[str, Any] = {"exporter": "legacy", "input_names": graph.input_names,
                              "output_names": graph.output_names}
        fp32 = cache.export("k", graph.module, graph.example_inputs, precision="fp32", **kw)
        int8 = cache.export("k", graph.module, graph.example_inputs, precision="int8", scheme="u8s8", **kw)
        s8 = cache.export("k", graph.module, graph.example_inputs, precision="int8", scheme="s8s8", **kw)
        assert len({fp32.path, int8.path, s8.path}) == 3 and int8.precision == "int8"
        assert cache.export("k", graph.module, graph.example_inputs, precision="int8", scheme="u8s8", **kw) == int8
        assert cache.hits == 1 and int8.sha256 == sha256_file(int8.path)
        with pytest.raises(ProfilingError, match="needs its quantization scheme"):
            cache.export("k", graph.module, graph.example_inputs, precision="int8", **kw)


# ------------------------------------------------------------------------------------------ latency tables
def test_profile_lut_int8_writes_int8_rows_apart_from_fp32(tmp_path: Path) -> None:
    space = load_space("tiny")
    arch = tiny_fpn_arch()
    kw: dict[str, Any] = {"space": space, "archs": [arch], "anchors": 0, "repeat_check": False, "timing": QUICK,
                          "num_classes": 3}
    int8_spec = BackendSpec(precision="int8", threads=1)
    profile_lut(out=tmp_path / "int8.db", spec=int8_spec, **kw)
    profile_lut(out=tmp_path / "fp32.db", spec=BackendSpec(threads=1), **kw)
    with LatencyTable.open(tmp_path / "int8.db") as table:
        assert table.fingerprint.precision == "int8"
        (row,) = table.model_rows("network")
        assert row.extra["int8"]["scheme"] == "u8s8" and row.stats.median_ms > 0
        int8_hash = row.extra["onnx_sha256"]
    with LatencyTable.open(tmp_path / "fp32.db") as table:
        assert table.fingerprint.precision == "fp32"
        (row,) = table.model_rows("network")
        assert "int8" not in row.extra and row.extra["onnx_sha256"] != int8_hash  # a different graph was timed
    # int8 rows never go into the fp32 table: the fingerprints differ, and the table says so in one line.
    with pytest.raises(ForeignDeviceError) as caught:
        profile_lut(out=tmp_path / "fp32.db", spec=int8_spec, resume=True, **kw)
    assert "\n" not in str(caught.value) and "int8" in str(caught.value)
    with LatencyTable.open(tmp_path / "fp32.db") as table:
        assert len(table.model_rows()) == 1


def _synthetic_rows(path: Path, fingerprint: Any, archs: list[Any]) -> None:
    """Rows under a real fingerprint of this machine, latencies from FLOPs (the refusal is about the fingerprint)."""
    from smnas_trt.predictors.analytic import arch_counts

    with LatencyTable.create(path, fingerprint) as table:
        for arch in archs:
            ms = 0.1 + arch_counts(arch, 3)["total"]["flops"] / 1e8
            table.put_model(arch, "network", LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0,
                                                          min_ms=ms, max_ms=ms, n=5))


def test_predictor_fitted_on_fp32_refuses_int8(tmp_path: Path) -> None:
    import random

    from smnas_trt.predictors import FitConfig, LatencyPredictor, evaluate_on_table, fit_predictor

    space = load_space("tiny")
    rng = random.Random(0)
    archs = list({str(a): a for a in (space.sample_arch(rng) for _ in range(40))}.values())[:12]
    fp32 = BackendSpec(threads=1).build().fingerprint()
    int8 = replace(fp32, precision="int8")
    assert int8.key != fp32.key
    _synthetic_rows(tmp_path / "fp32.db", fp32, archs)
    _synthetic_rows(tmp_path / "int8.db", int8, archs[:4])
    fit_predictor(tmp_path / "fp32.db", tmp_path / "pred",
                  FitConfig(folds=3, rounds=20, scale_rounds=10, threads=1, num_classes=3))
    predictor = LatencyPredictor.load(tmp_path / "pred")
    assert predictor.meta.precision == "fp32"
    for refuse in (lambda: evaluate_on_table(predictor, tmp_path / "int8.db"),
                   lambda: LatencyPredictor.load(tmp_path / "pred", fingerprint=int8)):
        with pytest.raises(ForeignDeviceError) as caught:
            refuse()
        message = str(caught.value)
        assert "\n" not in message and "int8" in message and "fp32" in message


# ------------------------------------------------------------------------------------------ CLI misuse
@pytest.mark.parametrize(("extra", "message"), [
    (("--precision", "int4"), "precision: Input should be 'fp32', 'fp16' or 'int8'"),
    (("--precision", "int8", "--backend", "torch"), "int8 runs quantized (QDQ) ONNX graphs"),
])
def test_profile_lut_bad_precision_is_one_line(extra: tuple[str, ...], message: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lut.db"
    code, err = run_main(monkeypatch, capsys, "profile-lut", "--space", "tiny", "--models", "1", "--out", str(out),
                         *extra)
    assert code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not out.exists()


@pytest.mark.slow
def test_cli_profile_lut_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lut.db"
    code, err = run_main(monkeypatch, capsys, "profile-lut", "--space", "tiny", "--models", "2", "--precision", "int8",
                     "--budget-s", "0", "--min-runs", "3", "--num-classes", "3", "--out", str(out))
    assert code == 0, err
    with LatencyTable.open(out) as table:
        assert table.fingerprint.precision == "int8"
        assert len(table.model_rows("network")) == 2
        assert all(r.extra["int8"]["scheme"] == "u8s8" for r in table.model_rows())


def test_search_latency_int8_screens_on_int8_tables_only(tmp_path: Path) -> None:
    """`latency.precision: int8` builds an int8 backend; an fp32 table (or predictor) is refused in one line."""
    from smnas_trt.search.config import LatencyConfig
    from smnas_trt.search.latency import check_device

    fp32 = BackendSpec(threads=1).build().fingerprint()
    archs = [tiny_fpn_arch()]
    _synthetic_rows(tmp_path / "fp32.db", fp32, archs)
    _synthetic_rows(tmp_path / "int8.db", replace(fp32, precision="int8"), archs)
    int8_cfg = LatencyConfig(budget_ms=10, precision="int8", lut=str(tmp_path / "int8.db"))
    assert int8_cfg.spec().precision == "int8"
    check_device(int8_cfg)
    with pytest.raises(ForeignDeviceError) as caught:
        check_device(LatencyConfig(budget_ms=10, precision="int8", lut=str(tmp_path / "fp32.db")))
    assert "\n" not in str(caught.value) and "int8" in str(caught.value)
    with pytest.raises(ValueError, match="int8 runs quantized"):
        LatencyConfig(budget_ms=10, backend="torch", precision="int8", lut=str(tmp_path / "int8.db"))


@pytest.mark.tensorrt
def test_tensorrt_builds_int8_engine_from_the_qdq_graph(body: tuple[Any, Path], tmp_path: Path) -> None:
    """TensorRT 10/11: the symmetric QDQ graph builds as an INT8 engine (strongly typed, no calibrator) and runs."""
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    graph, fp32 = body
    feed = {name: x.numpy() for name, x in zip(graph.input_names, graph.example_inputs, strict=True)}
    int8 = tmp_path / "int8.onnx"
    quantize_onnx(fp32, int8, [feed], "s8s8")
    backend = BackendSpec(backend="tensorrt", precision="int8").build(cache_dir=tmp_path / "engines")
    with pytest.raises(ProfilingError, match="needs a QDQ graph"):
        backend.load(fp32)
    with backend.load(int8) as runner:
        got = runner.run(feed)
    want = _session(int8, optimise=False).run(None, feed)  # the exact QDQ arithmetic
    for w, g in zip(want, got, strict=True):
        assert np.corrcoef(w.ravel(), np.asarray(g).ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_an_int8_search_screens_confirms_and_fronts_on_int8_latency(tmp_path: Path) -> None:
    """A whole search with `latency.precision: int8` on ort-cpu: an int8 table from profile-lut, the predictor
    fitted on it, every candidate confirmed by timing its QDQ graph, and a front of int8 latencies."""
    from smnas_trt.data import generate_demo
    from smnas_trt.profiling.lut import read_model_records
    from smnas_trt.search import parse_search_config, run_search
    from smnas_trt.space.config import BUILTIN_SPACES

    torch.set_num_threads(1)
    space = tmp_path / "space_tiny.yaml"
    space.write_text(BUILTIN_SPACES["tiny"].read_text())
    data = generate_demo(tmp_path / "data", n_train=32, n_val=8, size=64, seed=0)
    quick = {"warmup_runs": 2, "warmup_s": 0.0, "min_runs": 5, "max_runs": 20, "budget_s": 0.05}
    lut = tmp_path / "int8.db"
    report = profile_lut(space=load_space(str(space)), out=lut, spec=BackendSpec(precision="int8", threads=1),
                         models=16, seed=3, timing=TimingConfig(**quick), anchors=2, num_classes=11,
                         repeat_check=False)
    assert report.models_timed >= 16 and not report.failures
    times = sorted(r.median_ms for r in read_model_records(lut, scope="network"))
    config = parse_search_config({
        "name": "int8", "space": str(space), "data": str(data), "seed": 0,
        "latency": {"budget_ms": round(times[len(times) * 3 // 4], 4), "backend": "ort-cpu", "precision": "int8",
                    "lut": str(lut), "threads": 1, "timing": quick,
                    "predictor_fit": {"rounds": 40, "folds": 2, "scale_rounds": 20, "threads": 1}},
        "training": {"batch_size": 8, "lr": 0.01, "warmup_iters": 2},
        "evaluation": {"split": "train", "max_images": 8, "batch_size": 8},
        "structural": {"generations": 1, "train": 2, "rungs": [1]},
        "modular": {"generations": 1, "train": 1, "rungs": [1], "population": 2},
        "executor": {"kind": "inprocess", "threads_per_task": 1},
    })
    out = tmp_path / "run"
    result = run_search(config, out, show_progress=False)
    profiled = {r.arch for r in read_model_records(lut, scope="network")}
    with LatencyTable.open(out / "lut.db") as table:  # the run's copy of the table, with the search's timings
        assert table.fingerprint.precision == "int8"
        rows = table.model_rows("network")
    searched = [r for r in rows if r.arch not in profiled]
    assert searched and all(r.extra["int8"]["scheme"] == "u8s8" for r in rows)
    assert result.front and all(c.measured_ms is not None and c.measured_ms <= config.latency.budget_ms
                                for c in result.front)
    assert {c.arch for c in result.front} <= {r.arch for r in rows}  # fronted on the int8 timings
