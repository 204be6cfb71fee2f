"""Detector builder: every structural combination trains and evaluates; backbone layouts; norms."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from torch import nn

from smnas_trt.errors import ArchError, ConfigError
from smnas_trt.models import WSConv2d, build_detector, fold_weight_standardization
from smnas_trt.models.backbones import CodeResNet, DetectorFeatures
from smnas_trt.models.detector import anchor_sizes
from smnas_trt.models.layers import norm_factory
from smnas_trt.space import STANDARD_STAGES, parse
from smnas_trt.space.arch import Backbone

# Tiny genes so each combination costs a fraction of a second at 64x64.
FAMILIES = {
    "resnet18": "r18_8_11-21-21-21",
    "resnet34": "r34_8_111-2111-211111-211",
    "resnet50": "r50_8_111-2111-211111-211",
    "resnet101": "r101_8_11-21-21-21",  # the standard 33-block code is checked on the meta device below
    "resnext50": "x50(4x16d)_8_111-2111-211111-211",
    "resnext101": "x101(4x16d)_8_11-21-21-21",
    "mobilenetv2": "mbv2_0.25",
}
NECKS = ["none:C4", "none:C5", "fpn:P2-P5:16", "fpn:P2-P6:16", "fpn:P3-P5:16", "fpn:P3-P6:16", "fpn:P3-P7:16",
         "fpn:P4-P7:16", "fpn:P5-P7:16"]
HEADS = {"retina": "none/retina:1x16", "fcos": "none/fcos:1x16", "2fc": "rpn/2fc:32", "cascade2": "rpn/cascade2:32",
         "cascade3": "rpn/cascade3:32"}


def _all_combos() -> list[tuple[str, str, str]]:
    return list(itertools.product(FAMILIES, NECKS, HEADS))


def _pairs(combo: tuple[str, str, str]) -> set[tuple[str, str]]:
    family, neck, head = combo
    return {(neck, head), (family, head)}


def _pairwise_cover() -> list[tuple[str, str, str]]:
    """A subset of combinations holding every (neck, head) and (family, head) pair (all in the slow test)."""
    todo = set().union(*map(_pairs, _all_combos()))
    chosen = []
    while todo:
        best = max(_all_combos(), key=lambda c: len(_pairs(c) & todo))
        chosen.append(best)
        todo -= _pairs(best)
    return chosen


def _arch(family: str, neck: str, head: str, size: str = "64x64"):
    return parse(f"{size}/{FAMILIES[family]}/{neck}/{HEADS[head]}")


def _targets(n: int) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 58.0]]),
             "labels": torch.tensor([1, 3])} for _ in range(n)]


def _train_and_eval(arch, num_classes: int = 4) -> None:
    torch.manual_seed(0)
    model = build_detector(arch, num_classes)
    h, w = arch.size.height, arch.size.width
    images = [torch.rand(3, h, w) for _ in range(2)]
    model.train()
    losses = model(images, _targets(2))
    assert losses and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    stem_grad = model.backbone.body.stem[0][0].weight.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        assert set(det) >= {"boxes", "scores", "labels"}
        assert det["boxes"].ndim == 2 and det["boxes"].shape[1] == 4
        assert det["boxes"].shape[0] == det["scores"].shape[0] == det["labels"].shape[0]
        if len(det["labels"]):
            assert det["labels"].max() < num_classes


@pytest.mark.parametrize("family,neck,head", [pytest.param(*c, id="-".join(c)) for c in _pairwise_cover()])
def test_structure_trains_and_evaluates(family: str, neck: str, head: str) -> None:
    _train_and_eval(_arch(family, neck, head))


@pytest.mark.slow
@pytest.mark.parametrize("family,neck,head", [pytest.param(*c, id="-".join(c)) for c in _all_combos()])
def test_every_structure_trains_and_evaluates(family: str, neck: str, head: str) -> None:
    _train_and_eval(_arch(family, neck, head))


def test_demo_default_structures_at_demo_size() -> None:
    # The demo space's own widths at 128x128: one per head, both neck kinds.
    for text in ["128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64",
                 "128x128/mbv2_0.35/none:C4/rpn/cascade3:128"]:
        _train_and_eval(parse(text), num_classes=11)


def test_model_runs_at_arch_size_without_resizing() -> None:
    arch = parse("96x64/r18_8_11-21-21-21/fpn:P3-P5:16/none/retina:1x16")
    model = build_detector(arch, 3).eval()
    image = torch.rand(3, 64, 96)
    batch, _ = model.transform([image])
    assert tuple(batch.tensors.shape) == (1, 3, 64, 96)
    normalised = (image - torch.tensor(model.transform.image_mean)[:, None, None]) / torch.tensor(
        model.transform.image_std)[:, None, None]
    assert torch.allclose(batch.tensors[0], normalised)  # untouched but for normalisation
    batch, _ = model.transform([torch.rand(3, 128, 128)])  # another size: fitted inside 96x64
    assert batch.image_sizes[0] == (64, 64)


def _stage_conv_shapes(stages) -> list[list[tuple[int, ...]]]:
    return [[tuple(m.weight.shape) for m in stage.modules() if isinstance(m, nn.Conv2d)] for stage in stages]


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_standard_codes_give_torchvision_resnet_layout(depth: int) -> None:
    gene = parse(f"224x224/r{depth}_64_{'-'.join(STANDARD_STAGES[depth])}/none:C5/none/retina").backbone
    with torch.device("meta"):
        ours = CodeResNet(gene, norm_factory(False))
        ref = getattr(torchvision.models, f"resnet{depth}")()
        x = torch.zeros(1, 3, 224, 224)
        feats = ours.stem(x)
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        for i, (stage, layer) in enumerate(zip(ours.stages, [ref.layer1, ref.layer2, ref.layer3, ref.layer4],
                                               strict=True)):
            feats, y = stage(feats), layer(y)
            assert feats.shape == y.shape, f"C{i + 2}"  # same channels, same stride
            assert feats.shape[-1] == 224 // 2 ** (i + 2)
    assert _stage_conv_shapes(ours.stages) == _stage_conv_shapes([ref.layer1, ref.layer2, ref.layer3, ref.layer4])
    assert ours.channels == gene.stage_channels()


def test_resnext_code_gives_torchvision_resnext50() -> None:
    gene = parse(f"224x224/x50(32x4d)_64_{'-'.join(STANDARD_STAGES[50])}/none:C5/none/retina").backbone
    with torch.device("meta"):
        ours = CodeResNet(gene, norm_factory(False))
        ref = torchvision.models.resnext50_32x4d()
    assert _stage_conv_shapes(ours.stages) == _stage_conv_shapes([ref.layer1, ref.layer2, ref.layer3, ref.layer4])
    grouped = [m for m in ours.modules() if isinstance(m, nn.Conv2d) and m.groups == 32]
    assert len(grouped) == 16


def test_nonstandard_code_follows_sm_nas_semantics() -> None:
    # Doubling early: 1211 doubles inside stage 1, stage 2 keeps its width (no `2`), stage 4 doubles at its end.
    gene = Backbone("resnet", 50, 64, ("1211", "111", "2111", "12"))
    with torch.device("meta"):
        net = CodeResNet(gene, norm_factory(True))
        x = net.stem(torch.zeros(1, 3, 256, 256))
        assert x.shape == (1, 64, 64, 64)  # two stride-2 convs, no max-pool
        shapes = []
        for stage in net.stages:
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(512, 64, 64), (512, 32, 32), (1024, 16, 16), (2048, 8, 8)]
    planes = [[block.conv1.out_channels for block in stage] for stage in net.stages]
    assert planes == [[64, 128, 128, 128], [128, 128, 128], [256, 256, 256, 256], [256, 512]]
    strides = [[block.conv2.stride[0] for block in stage] for stage in net.stages]
    assert strides == [[1, 1, 1, 1], [2, 1, 1], [2, 1, 1, 1], [2, 1]]  # first block of stages 2-4 strided


def test_groupnorm_ws_versus_batchnorm() -> None:
    arch = parse("64x64/r50_8_111-2111-211111-211/fpn:P3-P7:16/none/retina:2x16")

    def kinds(model: nn.Module) -> set[type]:
        return {type(m) for m in model.modules()}

    scratch = kinds(build_detector(arch, 3))
    assert nn.GroupNorm in scratch and WSConv2d in scratch and nn.BatchNorm2d not in scratch
    bn = kinds(build_detector(arch, 3, from_scratch=False))
    assert nn.BatchNorm2d in bn and nn.GroupNorm not in bn and WSConv2d not in bn
    # Every WS conv feeds a norm; prediction convs keep their bias and are not standardised.
    model = build_detector(arch, 3)
    assert not isinstance(model.head.classification_head.cls_logits, WSConv2d)
    assert all(m.bias is None for m in model.modules() if isinstance(m, WSConv2d))


def test_fold_weight_standardization_is_inference_equivalent() -> None:
    torch.manual_seed(0)
    arch = parse("64x64/x50(4x16d)_8_11-21-21-21/fpn:P2-P6:16/rpn/cascade2:32")
    model = build_detector(arch, 3).eval()
    features = model.backbone
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = list(features(x).values())
        n_ws = sum(isinstance(m, WSConv2d) for m in features.modules())
        assert n_ws > 10
        fold_weight_standardization(features)
        assert not any(isinstance(m, WSConv2d) for m in features.modules())
        folded = list(features(x).values())
    for a, b in zip(ref, folded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_invalid_arch_is_rejected_by_the_builder() -> None:
    with pytest.raises(ArchError, match=r"rpn|head"):
        parse("64x64/r18_8_11-21-21-21/fpn:P3-P6:16/rpn/retina")
    arch = parse("64x64/r18_8_11-21-21-21/fpn:P3-P6:16/none/retina")
    object.__setattr__(arch, "rpn", True)  # bypass the constructor's check
    with pytest.raises(ArchError, match="head"):
        build_detector(arch, 3)
    arch = parse("64x64/r18_8_11-21-21-21/fpn:P3-P6:16/none/retina")
    object.__setattr__(arch, "backbone", Backbone("resnet", 18, 8, ("11", "21", "21", "2x")))
    with pytest.raises(ArchError, match="backbone"):
        build_detector(arch, 3)
    with pytest.raises(ArchError, match="zero-width"):
        build_detector(parse("64x64/x50(4x4d)_8_11-21-21-21/none:C5/none/fcos"), 3)
    with pytest.raises(ConfigError, match="num_classes"):
        build_detector(parse("64x64/r18_8_11-21-21-21/none:C5/none/fcos"), 1)


def test_anchor_sizes_follow_input_size() -> None:
    small = parse("128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/retina")
    large = parse("800x600/r18_64_11-21-21-21/fpn:P3-P7:256/none/retina")
    assert [round(s[0]) for s in anchor_sizes(small, "retina")] == [16, 32, 64, 128]
    assert [round(s[0]) for s in anchor_sizes(large, "retina")] == [32, 64, 128, 256, 512]
    assert anchor_sizes(parse("128x128/r18_16_11-21-21-21/none:C4/rpn/2fc"), "rpn") == ((8.0, 16.0, 32.0, 64.0),)
    assert anchor_sizes(parse("1333x800/r18_64_11-21-21-21/none:C4/rpn/2fc"), "rpn")[0] == (32, 64, 128, 256, 512)
    assert anchor_sizes(small, "fcos") == ((8.0,), (16.0,), (32.0,), (64.0,))


def test_none_c4_neck_does_not_build_the_last_stage() -> None:
    arch = parse("64x64/r18_8_11-21-21-21/none:C4/rpn/2fc:32")
    features = DetectorFeatures(arch, norm_factory(True))
    assert len(features.body.stages) == 3 and features.out_channels == 32
