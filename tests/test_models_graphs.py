"""The graphs every engine runs (one function builds them), module pieces, counts, exports and `space describe`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import MultiScaleRoIAlign

from smnas_trt.models import WSConv2d, build_detector
from smnas_trt.models.cascade import CascadeRoIHeads, decode_boxes
from smnas_trt.models.counts import count_flops, count_params
from smnas_trt.models.detector import detector_settings
from smnas_trt.models.graphs import (
    LevelRoIAlign,
    body_input_shape,
    detector_graphs,
    fixed_proposals,
    pooled_levels,
)
from smnas_trt.models.pieces import module_pieces
from smnas_trt.space import parse

ONE_STAGE = "64x64/r18_8_11-21-21-21/fpn:P3-P7:16/none/retina:1x16"
FCOS = "96x64/mbv2_0.25/fpn:P3-P6:16/none/fcos:2x16"
TWO_STAGE = "64x64/r50_8_11-21-21-21/fpn:P2-P6:16/rpn/cascade2:32"
TWO_FC_C4 = "80x64/x50(4x16d)_8_11-21-21-21/none:C4/rpn/2fc:32"


def _graph_outputs(text: str, num_classes: int = 5, batch: int = 2) -> list[tuple[torch.Tensor, ...]]:
    arch = parse(text)
    torch.manual_seed(0)
    graphs = detector_graphs(build_detector(arch, num_classes), arch, batch)
    with torch.no_grad():
        return [g.module(*g.example_inputs) for g in graphs]


def test_body_input_shape_pads_to_32() -> None:
    assert body_input_shape(parse("800x600/r18_64_11-21-21-21/none:C5/none/retina"), 2) == (2, 3, 608, 800)
    assert body_input_shape(parse("128x128/r18_16_11-21-21-21/none:C5/none/retina")) == (1, 3, 128, 128)


def test_one_stage_body_outputs() -> None:
    arch = parse(ONE_STAGE)
    graphs = detector_graphs(build_detector(arch, 5), arch, 2)
    assert [g.name for g in graphs] == ["body"]
    assert not any(isinstance(m, WSConv2d) for m in graphs[0].module.modules()) and not graphs[0].module.training
    [outs] = _graph_outputs(ONE_STAGE)
    # P3..P7 at 64x64: 8x8, 4x4, 2x2, 1x1, 1x1 locations, 9 anchors each.
    anchors = (64 + 16 + 4 + 1 + 1) * 9
    assert [tuple(o.shape) for o in outs] == [(2, anchors, 5), (2, anchors, 4)]
    [outs] = _graph_outputs(FCOS)
    locations = 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2  # 96x64 at P3..P6 (P6 = max-pool of P5, rounded up)
    assert [tuple(o.shape) for o in outs] == [(2, locations, 5), (2, locations, 4), (2, locations, 1)]


def test_two_stage_graphs_are_cut_around_the_rpn() -> None:
    arch = parse(TWO_STAGE)
    graphs = detector_graphs(build_detector(arch, 5), arch, 2)
    assert [g.name for g in graphs] == ["rpn", "roi"]
    assert graphs[1].input_names == ["p2", "p3", "p4", "p5", "proposals"]
    rpn, roi = _graph_outputs(TWO_STAGE)
    n = detector_settings(arch).proposals_test
    assert n == 100  # small inputs: 100 proposals per image (300 at paper sizes)
    anchors = 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)  # P2..P6, 3 aspect ratios
    assert [tuple(o.shape) for o in rpn] == [(2, 16, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4), (2, 16, 2, 2),
                                             (2 * anchors, 1), (2 * anchors, 4)]
    # Cascade: averaged log-probabilities, the last stage's agnostic deltas, the boxes that stage scored.
    assert [tuple(o.shape) for o in roi] == [(2 * n, 5), (2 * n, 4), (2 * n, 4)]
    rpn, roi = _graph_outputs(TWO_FC_C4)
    assert [tuple(o.shape) for o in roi] == [(200, 5), (200, 20)]  # 2-FC: logits, class-specific deltas


def test_fixed_proposals_are_deterministic_and_inside() -> None:
    arch = parse(TWO_STAGE)
    a, b = fixed_proposals(arch, 300), fixed_proposals(arch, 300)
    assert torch.equal(a, b) and a.shape == (300, 4)
    assert (a[:, 0] >= 0).all() and (a[:, 2] <= 64).all() and (a[:, 2] > a[:, 0]).all() and (a[:, 3] > a[:, 1]).all()


def _feature_maps(arch_text: str, batch: int = 1) -> tuple[object, dict[str, torch.Tensor]]:
    arch = parse(arch_text)
    torch.manual_seed(0)
    model = build_detector(arch, 5).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(body_input_shape(arch, batch)))
    return model, feats


def test_static_roi_pooling_equals_multiscale_roi_align() -> None:
    """Every RoI pooled at every level, kept at its own: the numbers of torchvision's MultiScaleRoIAlign."""
    arch = parse("160x128/r18_8_11-21-21-21/fpn:P2-P5:16/rpn/2fc:32")
    model, feats = _feature_maps(str(arch), batch=2)
    levels = pooled_levels(arch)
    names = [f"p{lv}" for lv in levels]
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 60, 2, generator=g) * torch.tensor([150.0, 120.0])
    wh = torch.exp(torch.rand(2, 60, 2, generator=g) * 5)  # 1..150 px: every level gets boxes
    boxes = torch.cat([xy, xy + wh], 2).clamp(max=torch.tensor([160.0, 128, 160, 128]))
    boxes[:, :3] = torch.tensor([[0.0, 0, 150, 120], [10, 5, 130, 125], [2, 2, 3, 3]])  # P5-sized and tiny ones
    reference = model.roi_heads.box_roi_pool
    assert isinstance(reference, MultiScaleRoIAlign)
    with torch.no_grad():
        want = reference({k: feats[k] for k in names}, list(boxes), [(128, 160)] * 2)
        pool = LevelRoIAlign(levels, detector_settings(arch).canonical_scale)
        got = pool([feats[k] for k in names], boxes.reshape(-1, 4), torch.arange(2).repeat_interleave(60))
        assert len(set(pool.level_index(boxes.reshape(-1, 4)).tolist())) == len(levels)
    assert torch.equal(got, want)


def test_roi_graph_matches_the_detector_roi_path() -> None:
    """The 2-FC RoI graph equals MultiScaleRoIAlign + box head + predictor of the detector on the same boxes;
    the cascade one equals its own evaluation cascade."""
    for text in ("64x64/r18_8_11-21-21-21/fpn:P2-P5:16/rpn/2fc:32", TWO_STAGE):
        arch = parse(text)
        torch.manual_seed(0)
        model = build_detector(arch, 5).eval()
        rpn, roi = detector_graphs(model, arch)
        x = torch.randn(body_input_shape(arch, 1))
        boxes = fixed_proposals(arch, 100)
        with torch.no_grad():
            maps = rpn.module(x)[: len(pooled_levels(arch))]
            got = roi.module(*maps, boxes[None])
            feats = dict(zip([f"p{lv}" for lv in pooled_levels(arch)], maps, strict=True))
            heads = model.roi_heads

            def pool(props: list[torch.Tensor], heads: object = heads, feats: dict = feats) -> torch.Tensor:
                return heads.box_roi_pool(feats, props, [(64, 64)])  # type: ignore[attr-defined]

            if isinstance(heads, CascadeRoIHeads):
                mean_logp, deltas, scored = heads.predict_boxes(pool, [boxes], [(64, 64)])
                want: tuple[torch.Tensor, ...] = (mean_logp, deltas, scored[0])
            else:
                want = heads.box_predictor(heads.box_head(pool([boxes])))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


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
    # Counts of the pieces add up to the graphs' FLOPs and parameters.
    counts = count_flops(arch, 1, 5)
    graphs = detector_graphs(build_detector(arch, 5), arch)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        for g in graphs:
            g.module(*g.example_inputs)
    assert counts.flops == fc.get_total_flops()
    assert counts.params == count_params(nn.ModuleList([g.module for g in graphs]))
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


@pytest.mark.parametrize("text", [ONE_STAGE, "64x64/r18_8_11-21-21-21/fpn:P2-P5:16/rpn/2fc:32", TWO_STAGE])
def test_both_exporters_give_graphs_with_matching_outputs(text: str, tmp_path) -> None:
    """One-stage, two-stage and cascade: the legacy exporter (the default, 5-10x faster) and the dynamo
    exporter give graphs whose outputs agree on the same inputs, and match PyTorch."""
    from smnas_trt.profiling.export import export_onnx
    from smnas_trt.profiling.spec import BackendSpec

    arch = parse(text)
    torch.manual_seed(0)
    ort = BackendSpec(threads=1).build()
    for graph in detector_graphs(build_detector(arch, 5), arch):
        feeds = {n: t.numpy() for n, t in zip(graph.input_names, graph.example_inputs, strict=True)}
        with torch.no_grad():
            want = [t.numpy() for t in graph.module(*graph.example_inputs)]
        outputs = {}
        for exporter in ("legacy", "dynamo"):
            info = export_onnx(graph.module, graph.example_inputs, tmp_path / f"{graph.name}-{exporter}.onnx",
                               exporter=exporter, input_names=graph.input_names, output_names=graph.output_names)
            assert info.exporter == exporter and info.output_names == tuple(graph.output_names)
            with ort.load(info.path) as runner:
                outputs[exporter] = runner.run(feeds)
        for legacy, dynamo, ref in zip(outputs["legacy"], outputs["dynamo"], want, strict=True):
            np.testing.assert_allclose(legacy, dynamo, rtol=1e-5, atol=1e-5, err_msg=f"{text} {graph.name}")
            np.testing.assert_allclose(legacy, ref, rtol=1e-3, atol=1e-4, err_msg=f"{text} {graph.name}")


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

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    deltas = torch.randn(50, 8, generator=g) * 25  # two classes' codes; some exp() inputs hit the clip
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert torch.equal(decode_boxes(coder, deltas, boxes), coder.decode_single(deltas, boxes))


@pytest.mark.gpu
@pytest.mark.parametrize("graph", ["rpn", "roi"])
def test_cascade_graphs_replay_as_cuda_graphs(graph: str) -> None:
    """Static shapes and no host copies: the RoI graph (static pooling, cascade decode) captures too."""
    from smnas_trt.profiling.backend import random_inputs
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.profiling.timing import TimingConfig

    arch = parse(TWO_STAGE)
    spec = next(g for g in detector_graphs(build_detector(arch, num_classes=3).eval(), arch) if g.name == graph)
    eager = BackendSpec(backend="torch", device="cuda").build().load_module(spec.module, spec.example_inputs)
    graphs = BackendSpec(backend="torch", device="cuda", cuda_graphs=True).build().load_module(
        spec.module, spec.example_inputs)
    assert graphs.time(TimingConfig.quick()).median_ms > 0  # captured (the stage-to-stage decode included)
    feeds = random_inputs(graphs.inputs, seed=1)  # new data: the replay must read it from the static inputs
    if graph == "roi":
        feeds["input_3"] = fixed_proposals(arch, 100)[None].numpy()  # real boxes, not noise in [0, 1)
    for a, b in zip(eager.run(feeds), graphs.run(feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
