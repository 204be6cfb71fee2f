"""ONNX export of detector graphs and module pieces: checked files that match PyTorch in ONNX Runtime.

Default tests export one two-stage model's graphs (the largest op mix: FPN, RPN, cascade RoI graph) and
an FP16 piece; the `slow` tests cover every structural choice of the demo space, then every combination.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from smnas_trt.errors import ProfilingError
from smnas_trt.models import build_detector
from smnas_trt.models.graphs import End2End, detector_graphs
from smnas_trt.models.pieces import module_pieces
from smnas_trt.profiling.export import Exporter, export_onnx
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.trt_support import unsupported_ops
from smnas_trt.space import load_space, parse

torch.set_num_threads(1)
NUM_CLASSES = 5
# Outputs of randomly initialised bodies are O(1); ORT and PyTorch agree to float32 rounding.
ATOL, RTOL = 1e-4, 1e-3


def outputs(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    if any(v.dtype == np.float16 for v in feeds.values()):
        # An FP16 graph runs on ORT's CPU provider here; the backend spec keeps fp16 for GPU backends.
        import onnxruntime as ort

        return list(ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds))
    with BackendSpec(threads=1).build().load(path) as runner:
        return runner.run(feeds)


def check_graphs(arch_text: str, tmp_path: Path, exporter: Exporter = "legacy") -> list[Path]:
    arch = parse(arch_text)
    torch.manual_seed(0)
    paths = []
    for graph in detector_graphs(build_detector(arch, NUM_CLASSES), arch):
        info = export_onnx(graph.module, graph.example_inputs, tmp_path / f"{arch.id}-{graph.name}.onnx",
                           exporter=exporter, input_names=graph.input_names, output_names=graph.output_names)
        assert info.exporter == exporter
        assert info.input_shapes == tuple(tuple(t.shape) for t in graph.example_inputs)
        assert exporter == "legacy" or info.opset >= 18
        got = outputs(info.path, {n: t.numpy() for n, t in zip(graph.input_names, graph.example_inputs, strict=True)})
        with torch.no_grad():
            want = [t.numpy() for t in graph.module(*graph.example_inputs)]
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{arch_text} {graph.name}")
        paths.append(Path(info.path))
    return paths


def test_two_stage_graphs_match_pytorch(tmp_path: Path) -> None:
    paths = check_graphs("128x128/r18_16_11-21-21-21/fpn:P3-P6:32/rpn/cascade3:64", tmp_path)
    assert [p.name.rsplit("-", 1)[1] for p in paths] == ["rpn.onnx", "roi.onnx"]
    for path in paths:
        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert props["smnas.exporter"] == "legacy" and props["smnas.precision"] == "fp32"
        assert unsupported_ops(path) == []  # RoiAlign and friends are in TensorRT's parser table
        # Static graphs: no data-dependent indexing, so engines and CUDA graphs take them as they are.
        assert not {n.op_type for n in onnx.load(path).graph.node} & {"NonZero", "ScatterND", "Loop", "If"}


def test_fp16_variant_of_a_piece(tmp_path: Path) -> None:
    arch = parse("128x128/r18_16_11-21-21-21/fpn:P3-P6:32/none/retina:2x32")
    stem = next(p for p in module_pieces(arch, num_classes=NUM_CLASSES) if p.kind == "stem")
    x = torch.rand(stem.inputs[0].shape)
    info = export_onnx(stem.module, (x,), tmp_path / "stem16.onnx", precision="fp16")
    model = onnx.load(info.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    (got,) = outputs(info.path, {info.input_names[0]: x.half().numpy()})
    with torch.no_grad():
        want = stem.module(x).numpy()
    assert got.dtype == np.float16
    assert float(np.abs(got.astype(np.float64) - want).max()) < 2e-2 * max(1.0, float(np.abs(want).max()))


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfilingError, match="exporter"):
        export_onnx(torch.nn.ReLU(), (torch.rand(2),), tmp_path / "x.onnx", exporter="jit")  # type: ignore[arg-type]
    with pytest.raises(ProfilingError, match="precision"):
        export_onnx(torch.nn.ReLU(), (torch.rand(2),), tmp_path / "x.onnx", precision="int4")
    assert not (tmp_path / "x.onnx").exists()  # nothing half-written is left behind


def _covering_structures() -> list[str]:
    """Every backbone family, neck and head of the demo space at least once (at the smallest size)."""
    space = load_space("demo")
    c = space.config
    n = max(len(c.backbones), len(c.necks), len(c.heads))
    size = space.sizes[0]
    pick = [(c.backbones[i % len(c.backbones)], c.necks[i % len(c.necks)], c.heads[i % len(c.heads)]) for i in range(n)]
    return [str(space.structure_arch(size, *combo)) for combo in pick]


def _all_structures() -> list[str]:
    space = load_space("demo")
    c = space.config
    size = space.sizes[0]
    return [str(space.structure_arch(size, *combo)) for combo in itertools.product(c.backbones, c.necks, c.heads)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", _covering_structures())
def test_every_structural_choice_exports(arch: str, tmp_path: Path) -> None:
    check_graphs(arch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", _all_structures())
def test_every_structural_combination_exports(arch: str, tmp_path: Path) -> None:
    check_graphs(arch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["2fc", "cascade2"])
def test_end2end_legacy_export_runs_in_ort(head: str, tmp_path: Path) -> None:
    arch = parse(f"128x128/r18_16_11-21-21-21/fpn:P3-P6:32/rpn/{head}")
    torch.manual_seed(0)
    model = End2End(build_detector(arch, NUM_CLASSES))
    image = torch.rand(3, 128, 128)
    info = export_onnx(model, (image,), tmp_path / "e2e.onnx", exporter="legacy", input_names=["image"])
    assert info.exporter == "legacy"
    boxes, scores, labels = outputs(info.path, {"image": image.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores, ref_labels = model(image)
    assert boxes.shape == tuple(ref_boxes.shape) and boxes.shape[0] > 0
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-2)
    np.testing.assert_array_equal(labels, ref_labels.numpy())
