"""ONNX export of network bodies and module pieces: checked files that match PyTorch in ONNX Runtime.

Default tests export one two-stage body (the largest op mix: FPN, RPN, cascade RoI stage) and an
FP16 piece; the `slow` tests cover every structural choice of the demo space, then every combination.
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
from smnas_trt.models.body import body_input_shape, module_pieces, network_body
from smnas_trt.profiling.export import End2End, Exporter, export_onnx, max_abs_diff, onnx_outputs
from smnas_trt.profiling.trt_support import unsupported_ops
from smnas_trt.space import load_space, parse

torch.set_num_threads(1)
NUM_CLASSES = 5
# Outputs of randomly initialised bodies are O(1); ORT and PyTorch agree to float32 rounding.
ATOL, RTOL = 1e-4, 1e-3


def check_body(arch_text: str, tmp_path: Path, exporter: Exporter = "dynamo") -> None:
    arch = parse(arch_text)
    torch.manual_seed(0)
    body = network_body(build_detector(arch, NUM_CLASSES), arch)
    x = torch.rand(body_input_shape(arch))
    info = export_onnx(body, (x,), tmp_path / f"{arch.id}.onnx", exporter=exporter, input_names=["images"])
    assert info.exporter == exporter and info.input_shapes == (tuple(x.shape),)
    assert exporter == "legacy" or info.opset >= 18
    got = onnx_outputs(info.path, {"images": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in body(x)]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=arch_text)


def test_two_stage_body_matches_pytorch(tmp_path: Path) -> None:
    arch = "128x128/r18_16_11-21-21-21/fpn:P3-P6:32/rpn/cascade3:64"
    check_body(arch, tmp_path)
    path = tmp_path / f"{parse(arch).id}.onnx"
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["smnas.exporter"] == "dynamo" and props["smnas.precision"] == "fp32"
    assert unsupported_ops(path) == []  # RoiAlign and friends are in TensorRT's parser table


def test_cascade_body_with_an_empty_level_exports_with_the_legacy_tracer(tmp_path: Path) -> None:
    # 79 proposals on P3, 21 on P4, none on P5: the tracer once recorded the P4 slice as empty.
    check_body("128x128/r50_16_11-12-2-21/fpn:P3-P6:96/rpn/cascade2:128", tmp_path, exporter="legacy")


def test_fp16_variant_of_a_piece(tmp_path: Path) -> None:
    arch = parse("128x128/r18_16_11-21-21-21/fpn:P3-P6:32/none/retina:2x32")
    stem = next(p for p in module_pieces(arch, num_classes=NUM_CLASSES) if p.kind == "stem")
    x = torch.rand(stem.inputs[0].shape)
    info = export_onnx(stem.module, (x,), tmp_path / "stem16.onnx", precision="fp16")
    model = onnx.load(info.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    (got,) = onnx_outputs(info.path, {info.input_names[0]: x.half().numpy()})
    with torch.no_grad():
        want = stem.module(x).numpy()
    assert got.dtype == np.float16
    assert max_abs_diff([got], [want]) < 2e-2 * max(1.0, float(np.abs(want).max()))


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfilingError, match="exporter"):
        export_onnx(torch.nn.ReLU(), (torch.rand(2),), tmp_path / "x.onnx", exporter="jit")  # type: ignore[arg-type]
    with pytest.raises(ProfilingError, match="precision"):
        export_onnx(torch.nn.ReLU(), (torch.rand(2),), tmp_path / "x.onnx", precision="int8")
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
    check_body(arch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", _all_structures())
def test_every_structural_combination_exports(arch: str, tmp_path: Path) -> None:
    check_body(arch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["2fc", "cascade2"])
def test_end2end_legacy_export_runs_in_ort(head: str, tmp_path: Path) -> None:
    arch = parse(f"128x128/r18_16_11-21-21-21/fpn:P3-P6:32/rpn/{head}")
    torch.manual_seed(0)
    model = End2End(build_detector(arch, NUM_CLASSES))
    image = torch.rand(3, 128, 128)
    info = export_onnx(model, (image,), tmp_path / "e2e.onnx", exporter="legacy", input_names=["image"])
    assert info.exporter == "legacy"
    boxes, scores, labels = onnx_outputs(info.path, {"image": image.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores, ref_labels = model(image)
    assert boxes.shape == tuple(ref_boxes.shape) and boxes.shape[0] > 0
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-2)
    np.testing.assert_array_equal(labels, ref_labels.numpy())
