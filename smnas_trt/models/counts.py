"""Analytic counts per module piece and in total: parameters, FLOPs, activation bytes.

FLOPs come from torch's own `torch.utils.flop_counter.FlopCounterMode` (it counts 2 FLOPs per
multiply-add of convolutions, matmuls and RoIAlign-free ops it knows; norms and activations are not
counted). Everything runs on the meta device, so counting needs no memory or compute for weights
and a paper-size arch is counted in tens of milliseconds. Activation bytes: the sum of the output
sizes (fp32) of every leaf module, a proxy for the memory traffic the predictor can use.
Results are cached per piece key and per arch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from smnas_trt.models.pieces import DEFAULT_NUM_CLASSES, module_pieces
from smnas_trt.space.arch import Arch

BYTES_PER_ELEMENT = 4  # fp32


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared tensors counted once); works on meta modules."""
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class PieceCounts:
    params: int
    flops: int
    activation_bytes: int


@dataclass(frozen=True)
class ModuleCounts:
    name: str  # stem, stage1..stage4, neck, head, rpn, roi
    kind: str
    key: str
    output_shapes: tuple[tuple[int, ...], ...]
    params: int
    flops: int
    activation_bytes: int


@dataclass(frozen=True)
class ArchCounts:
    arch: str
    batch: int
    num_classes: int
    modules: tuple[ModuleCounts, ...] = field(default_factory=tuple)

    @property
    def params(self) -> int:
        return sum(m.params for m in self.modules)

    @property
    def flops(self) -> int:
        return sum(m.flops for m in self.modules)

    @property
    def activation_bytes(self) -> int:
        return sum(m.activation_bytes for m in self.modules)

    def by_kind(self) -> dict[str, PieceCounts]:
        """Sums per piece kind (stem, stage, neck, head, rpn, roi): the predictor's per-module features."""
        out: dict[str, list[int]] = {}
        for m in self.modules:
            acc = out.setdefault(m.kind, [0, 0, 0])
            acc[0] += m.params
            acc[1] += m.flops
            acc[2] += m.activation_bytes
        return {k: PieceCounts(*v) for k, v in out.items()}


_piece_cache: dict[str, PieceCounts] = {}


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


def _iter_tensors(x: object) -> Iterable[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for item in x:
            yield from _iter_tensors(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from _iter_tensors(item)


_NORMS = (nn.BatchNorm2d, nn.GroupNorm)


def _strip_norms(module: nn.Module) -> None:
    """Norm layers -> Identity (in place): same output shapes, no FLOPs in FlopCounterMode's count, and
    torch's meta kernels for norms are slow Python decompositions."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NORMS):
                setattr(parent, name, nn.Identity())


def _flops_and_activations(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    act = 0

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        nonlocal act
        act += sum(t.numel() for t in _iter_tensors(out)) * BYTES_PER_ELEMENT

    handles = [m.register_forward_hook(hook) for m in module.modules() if _is_leaf(m)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()), act




@lru_cache(maxsize=4096)
def count_flops(arch: Arch, batch: int = 1, num_classes: int = DEFAULT_NUM_CLASSES) -> ArchCounts:
    """Per-module (stem, stage1..4, neck, head | rpn + roi) and total counts at the arch's input size.

    The RoI graph runs on its fixed proposal count (see `models.graphs`).
    """
    pieces = module_pieces(arch, batch, num_classes, device="meta", from_scratch=False)
    modules = []
    for p in pieces:
        c = _piece_cache.get(p.key)
        if c is None:
            params = count_params(p.module)
            _strip_norms(p.module)  # the pieces are our own meta copies
            c = PieceCounts(params, *_flops_and_activations(p.module, p.inputs))
            _piece_cache[p.key] = c
        modules.append(ModuleCounts(p.name, p.kind, p.key, tuple(tuple(s) for s in p.output_shapes), c.params,
                                    c.flops, c.activation_bytes))
    return ArchCounts(arch.canonical, batch, num_classes, tuple(modules))




def time_detector_build(arch: Arch, num_classes: int = DEFAULT_NUM_CLASSES, repeats: int = 3) -> float:
    """Median seconds to build the detector of `arch` on CPU (for bench/space_throughput.py)."""
    from smnas_trt.models.detector import build_detector

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build_detector(arch, num_classes)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
