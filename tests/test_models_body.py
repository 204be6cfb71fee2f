"""Network body, module pieces, counts, ONNX export of bodies, and `smnas space describe`."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from smnas_trt.models import WSConv2d, build_detector
from smnas_trt.models.body import (
    body_input_shape,
    fixed_proposals,
    module_pieces,
    network_body,
)
from smnas_trt.models.cascade import CascadeRoIHeads
from smnas_trt.models.counts import count_flops, count_params
from smnas_trt.space import parse

ONE_STAGE = "64x64/r18_8_11-21-21-21/fpn:P3-P7:16/none/retina:1x16"
FCOS = "96x64/mbv2_0.25/fpn:P3-P6:16/none/fcos:2x16"
TWO_STAGE = "64x64/r50_8_11-21-21-21/fpn:P2-P6:16/rpn/cascade2:32"
TWO_FC_C4 = "80x64/x50(4x16d)_8_11-21-21-21/none:C4/rpn/2fc:32"


def _body_outputs(text: str, num_classes: int = 5, batch: int = 2) -> tuple[tuple[torch.Tensor, ...], nn.Module]:
    arch = parse(text)
    torch.manual_seed(0)
    model = build_detector(arch, num_classes)
    body = network_body(model, arch)
    with torch.no_grad():
        return body(torch.randn(body_input_shape(arch, batch))), body


def test_body_input_shape_pads_to_32() -> None:
    assert body_input_shape(parse("800x600/r18_64_11-21-21-21/none:C5/none/retina"), 2) == (2, 3, 608, 800)
    assert body_input_shape(parse("128x128/r18_16_11-21-21-21/none:C5/none/retina")) == (1, 3, 128, 128)


def test_one_stage_body_outputs() -> None:
    outs, body = _body_outputs(ONE_STAGE)
    # P3..P7 at 64x64: 8x8, 4x4, 2x2, 1x1, 1x1 locations, 9 anchors each.
    anchors = (64 + 16 + 4 + 1 + 1) * 9
    assert [tuple(o.shape) for o in outs] == [(2, anchors, 5), (2, anchors, 4)]
    assert not any(isinstance(m, WSConv2d) for m in body.modules()) and not body.training
    outs, _ = _body_outputs(FCOS)
    locations = 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2  # 96x64 at P3..P6 (P6 = max-pool of P5, rounded up)
    assert [tuple(o.shape) for o in outs] == [(2, locations, 5), (2, locations, 4), (2, locations, 1)]


def test_two_stage_body_outputs_fixed_proposals() -> None:
    outs, body = _body_outputs(TWO_STAGE)
    n = body.roi.num_proposals
    assert n == 100  # small inputs: 100 proposals per image (300 at paper sizes)
    levels = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # P2..P6 (P6 = max-pool of P5)
    expected = [(2, 3, *hw) for hw in levels] + [(2, 12, *hw) for hw in levels]
    expected += [(2 * n, 5), (2 * n, 4)] * 2  # two cascade stages: class logits, agnostic deltas
    assert [tuple(o.shape) for o in outs] == expected
    outs, body = _body_outputs(TWO_FC_C4)
    assert [tuple(o.shape) for o in outs] == [(2, 12, 4, 6), (2, 48, 4, 6), (200, 5), (200, 20)]  # 80 pads to 96


def test_fixed_proposals_are_deterministic_and_inside() -> None:
    arch = parse(TWO_STAGE)
    a, b = fixed_proposals(arch, 300), fixed_proposals(arch, 300)
    assert torch.equal(a, b) and a.shape == (300, 4)
    assert (a[:, 0] >= 0).all() and (a[:, 2] <= 64).all() and (a[:, 2] > a[:, 0]).all() and (a[:, 3] > a[:, 1]).all()


def test_body_matches_the_detector_roi_path() -> None:
    """The body's RoI stage equals MultiScaleRoIAlign + head + predictor of the detector on the same boxes."""
    arch = parse("64x64/r18_8_11-21-21-21/fpn:P2-P5:16/rpn/2fc:32")
    torch.manual_seed(0)
    model = build_detector(arch, 5).eval()
    body = network_body(model, arch)
    x = torch.randn(body_input_shape(arch, 1))
    with torch.no_grad():
        outs = body(x)
        feats = body.features(x)
        rh = body.roi
        boxes = rh.proposals
        pooled = model.roi_heads.box_roi_pool(feats, [boxes], [(64, 64)])
        logits, _ = rh.box_predictors[0](rh.box_heads[0](pooled))
    torch.testing.assert_close(outs[-2], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("text", [ONE_STAGE, TWO_STAGE, TWO_FC_C4, FCOS])
def test_pieces_run_with_declared_shapes_and_sum_to_the_body(text: str) -> None:
    arch = parse(text)
    pieces = module_pieces(arch, batch=1, num_classes=5)
    stages = 3 if arch.neck.max_level == 4 else 4  # none:C4 builds no C5 stage
    tail = (["neck"] if arch.neck.kind == "fpn" else []) + (["rpn", "roi"] if arch.two_stage else ["head"])
    assert [p.kind for p in pieces] == ["stem"] + ["stage"] * stages + tail
    for p in pieces:
        assert not any(isinstance(m, WSConv2d) for m in p.module.modules())
        with torch.no_grad():
            out = p.module(*p.inputs)
        out = out if isinstance(out, tuple) else (out,)
        assert [tuple(o.shape) for o in out] == [tuple(s) for s in p.output_shapes], p.key
    # Counts of the pieces add up to the whole body's FLOPs and parameters.
    counts = count_flops(arch, 1, 5)
    body = network_body(build_detector(arch, 5), arch)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        body(torch.zeros(body_input_shape(arch)))
    assert counts.flops == fc.get_total_flops()
    assert counts.params == count_params(body)
    assert counts.activation_bytes > 0


def test_piece_keys_dedupe_identical_modules() -> None:
    a = {p.name: p.key for p in module_pieces(parse(ONE_STAGE), num_classes=5)}
    b = {p.name: p.key for p in module_pieces(parse(ONE_STAGE.replace("retina:1x16", "fcos:2x16")), num_classes=5)}
    c = {p.name: p.key for p in module_pieces(parse(ONE_STAGE.replace("r18_8_11-21", "r18_8_111-2")), num_classes=5)}
    assert a["stem"] == b["stem"] and a["stage4"] == b["stage4"] and a["neck"] == b["neck"]
    assert a["head"] != b["head"]
    assert a["stage1"] != c["stage1"] and a["stage2"] != c["stage2"] and a["stage3"] == c["stage3"]
    # Same stage at another input size gets another key.
    d = {p.name: p.key for p in module_pieces(parse(ONE_STAGE.replace("64x64", "96x64")), num_classes=5)}
    assert d["stage1"] != a["stage1"]


def test_counts_known_values() -> None:
    arch = parse("64x64/r18_8_11-21-21-21/none:C5/none/retina:1x16")
    counts = count_flops(arch, 1, 3)
    stem = counts.modules[0]
    # Two 3x3 stride-2 convs: 3->8 at 32x32, then 8->8 at 16x16; 2 FLOPs per multiply-add.
    assert stem.flops == 2 * (3 * 8 * 9 * 32 * 32 + 8 * 8 * 9 * 16 * 16)
    assert stem.params == 3 * 8 * 9 + 8 * 8 * 9 + 2 * (8 + 8)  # convs + GN affine
    model = build_detector(arch, 3)
    assert counts.params == count_params(model.backbone) + count_params(model.head)
    assert count_flops(arch, 1, 3) is counts  # cached
    assert set(counts.by_kind()) == {"stem", "stage", "head"}


def test_cascade_training_detaches_between_stages_and_eval_averages_scores() -> None:
    arch = parse("64x64/r18_8_11-21-21-21/fpn:P3-P5:16/rpn/cascade3:16")
    torch.manual_seed(0)
    model = build_detector(arch, 4)
    heads: CascadeRoIHeads = model.roi_heads
    feats = {k: torch.randn(1, 16, s, s) for k, s in (("p3", 8), ("p4", 4), ("p5", 2))}
    proposals = [torch.tensor([[2.0, 2, 30, 30], [20, 20, 60, 62], [5, 30, 40, 60], [0, 0, 64, 64]])]
    targets = [{"boxes": torch.tensor([[4.0, 4, 32, 30], [22, 18, 60, 60]]), "labels": torch.tensor([1, 2])}]
    heads.train()
    _, losses = heads(feats, proposals, [(64, 64)], targets)
    assert set(losses) == {f"loss_{k}_s{i}" for k in ("classifier", "box_reg") for i in (1, 2, 3)}
    losses["loss_box_reg_s2"].backward()
    assert heads.box_predictors[0].bbox_pred.weight.grad is None  # stage-2 boxes were detached from stage 1
    assert heads.box_predictors[1].bbox_pred.weight.grad is not None
    # Eval: constant logits per stage; class scores are the mean of the stages' probabilities.
    heads.eval()
    biases = [torch.tensor([0.0, 4.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 4.0, 0.0]), torch.tensor([0.0, 2, 2, 0])]
    with torch.no_grad():
        for pred, bias in zip(heads.box_predictors, biases, strict=True):
            pred.cls_score.weight.zero_()
            pred.cls_score.bias.copy_(bias)
            pred.bbox_pred.weight.zero_()
            pred.bbox_pred.bias.zero_()
        result, _ = heads(feats, proposals, [(64, 64)])
    expected = torch.stack([b.softmax(0) for b in biases]).mean(0)
    det = result[0]
    for label in (1, 2):
        scores = det["scores"][det["labels"] == label]
        torch.testing.assert_close(scores, torch.full_like(scores, float(expected[label])))
        boxes = det["boxes"][det["labels"] == label]
        assert {tuple(b.tolist()) for b in boxes} == {tuple(p.tolist()) for p in proposals[0]}  # zero deltas


def _export_and_compare(text: str, tmp_path) -> None:
    arch = parse(text)
    torch.manual_seed(0)
    body = network_body(build_detector(arch, 5), arch)
    x = torch.randn(body_input_shape(arch, 1))
    path = tmp_path / "body.onnx"
    torch.onnx.export(body, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = body(x)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-3, atol=1e-4)


def test_dynamo_export_one_stage_body(tmp_path) -> None:
    _export_and_compare(ONE_STAGE, tmp_path)


def test_dynamo_export_two_stage_body_with_roi_align(tmp_path) -> None:
    _export_and_compare(TWO_STAGE, tmp_path)


def _cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run `smnas ARGS` in-process through main() (the entry point that formats errors)."""
    from smnas_trt.cli import console, err_console, main

    monkeypatch.setattr(sys, "argv", ["smnas", *args])
    monkeypatch.setattr(console, "width", 160)
    monkeypatch.setattr(err_console, "width", 400)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_space_describe(capsys, monkeypatch) -> None:
    code, out, err = _cli(capsys, monkeypatch, "space", "describe",
                          "128x128/r50_16_111-2111-211111-211/fpn:P2-P5:64/rpn/cascade3:128", "--num-classes", "11")
    assert code == 0, err
    for word in ("stem", "stage4", "neck", "rpn", "roi", "total", "1x512x4x4", "100x11"):
        assert word in out
    code, out, err = _cli(capsys, monkeypatch, "space", "describe",
                          "128x128/r50_16_111-2111-211111-211/fpn:P2-P5:64/rpn/retina")
    assert code == 2
    assert err.strip().count("\n") == 0 and "head" in err and "Traceback" not in err


def test_counts_cover_sampled_paper_archs_on_meta() -> None:
    import random

    from smnas_trt.space import load_space

    space = load_space("paper")
    rng = random.Random(3)
    for _ in range(4):
        arch = space.sample_arch(rng)
        counts = count_flops(arch)
        names = [m.name for m in counts.modules]
        assert names[0] == "stem" and names[-1] == ("roi" if arch.two_stage else "head")
        assert all(m.flops > 0 and m.params > 0 for m in counts.modules if m.name != "neck" or m.params)
        # The stem's output is the padded input at stride 4 (2 for MobileNetV2).
        _, _, h, w = body_input_shape(arch)
        stride = 2 if arch.backbone.kind == "mobilenetv2" else 4
        assert counts.modules[0].output_shapes[0][2:] == (h // stride, w // stride)


def test_graph_safe_box_decoding_equals_torchvision() -> None:
    from torchvision.models.detection._utils import BoxCoder

    from smnas_trt.models.body import decode_boxes

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    deltas = torch.randn(50, 8, generator=g) * 25  # two classes' codes; some exp() inputs hit the clip
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert torch.equal(decode_boxes(coder, deltas, boxes), coder.decode_single(deltas, boxes))


@pytest.mark.gpu
def test_cascade_body_replays_as_a_cuda_graph() -> None:
    from smnas_trt.profiling.backends import get_backend, random_inputs
    from smnas_trt.profiling.timing import TimingConfig

    arch = parse(TWO_STAGE)
    body = network_body(build_detector(arch, num_classes=3).eval(), arch)
    x = torch.rand(body_input_shape(arch))
    eager = get_backend("torch", device="cuda").load_module(body, (x,))
    graphs = get_backend("torch", device="cuda", cuda_graphs=True).load_module(body, (x,))
    assert graphs.time(TimingConfig.quick()).median_ms > 0  # captured (the stage-to-stage decode included)
    feeds = random_inputs(graphs.inputs, seed=1)  # new data: the replay must read it from the static inputs
    for a, b in zip(eager.run(feeds), graphs.run(feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
