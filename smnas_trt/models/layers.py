"""Normalisation for from-scratch training: GroupNorm + Weight Standardization, and the WS fold for export."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

NormFactory = Callable[[int], nn.Module]

WS_EPS = 1e-5
MIN_GN_GROUP_SIZE = 4


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output filter (zero mean, unit variance) on every call.

    Used only in front of a GroupNorm (Qiao et al., "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization"). `fold_weight_standardization` turns it into a plain
    Conv2d for inference.
    """

    eps: float = WS_EPS

    def standardized_weight(self) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, correction=0)
        return (self.weight - mean) * torch.rsqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


def gn_groups(channels: int) -> int:
    """Up to 32 groups, at least 4 channels each where possible (small widths of the demo space)."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= MIN_GN_GROUP_SIZE:
            return groups
    return 1


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(gn_groups(channels), channels)


def norm_factory(from_scratch: bool) -> NormFactory:
    """GroupNorm (with WS convs, see `convert_to_ws`) for from-scratch training, BatchNorm otherwise."""
    return group_norm if from_scratch else nn.BatchNorm2d


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def _replace_convs(model: nn.Module, make: Callable[[nn.Conv2d], nn.Conv2d | None]) -> int:
    """Swap children in place; `make` returns the replacement or None to keep the child."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                new = make(child)
                if new is not None:
                    setattr(parent, name, new)
                    replaced += 1
    return replaced


def _conv_like(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    # Built on the meta device: the parameters are taken over from `conv`, so no init cost.
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
              conv.padding, conv.dilation, conv.groups,  # type: ignore[arg-type]
              bias=False, padding_mode=conv.padding_mode, device="meta")
    new.bias = conv.bias
    new.train(conv.training)
    return new


def convert_to_ws(model: nn.Module) -> int:
    """Make every bias-free, non-depthwise Conv2d a WSConv2d; returns how many were converted.

    Bias-free convs are exactly the ones followed by a norm layer (torchvision's blocks,
    Conv2dNormActivation, our towers); prediction convs keep their bias and stay plain. Depthwise
    convs (MobileNetV2) stay plain: a 3x3 filter has 9 weights, too few to standardise usefully.
    """

    def make(conv: nn.Conv2d) -> nn.Conv2d | None:
        if type(conv) is not nn.Conv2d or conv.bias is not None or _is_depthwise(conv):
            return None
        new = _conv_like(WSConv2d, conv)
        new.weight = conv.weight
        return new

    return _replace_convs(model, make)


@torch.no_grad()
def fold_weight_standardization(model: nn.Module) -> nn.Module:
    """Replace each WSConv2d by a plain Conv2d holding the standardised weight (in place; returns `model`).

    Inference-equivalent; call before ONNX export so engines do not recompute the standardisation.
    """

    def make(conv: nn.Conv2d) -> nn.Conv2d | None:
        if not isinstance(conv, WSConv2d):
            return None
        new = _conv_like(nn.Conv2d, conv)
        new.weight = nn.Parameter(conv.standardized_weight().detach().clone(), requires_grad=conv.weight.requires_grad)
        return new

    _replace_convs(model, make)
    return model


def conv_tower(in_channels: int, width: int, depth: int, norm: NormFactory) -> nn.Sequential:
    """`depth` 3x3 conv-norm-ReLU layers, the first mapping in_channels to width (dense head towers)."""
    layers = [Conv2dNormActivation(in_channels if i == 0 else width, width, 3, norm_layer=norm) for i in range(depth)]
    tower = nn.Sequential(*layers)
    for m in tower.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # meta: shape-only copies for counting
            nn.init.normal_(m.weight, std=0.01)
    return tower


def uses_ws(model: nn.Module) -> bool:
    return any(isinstance(m, WSConv2d) for m in model.modules())


__all__ = [
    "NormFactory",
    "WSConv2d",
    "conv_tower",
    "convert_to_ws",
    "fold_weight_standardization",
    "gn_groups",
    "group_norm",
    "norm_factory",
    "uses_ws",
]
