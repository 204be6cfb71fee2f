"""A search space: membership checks, uniform structural sampling, module sampling and SM-NAS mutations."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import replace
from functools import cache
from itertools import combinations, product
from pathlib import Path

from smnas_trt.errors import ArchError
from smnas_trt.space.arch import (
    STANDARD_STAGES,
    Arch,
    Backbone,
    Head,
    InputSize,
    Neck,
    parse,
    parse_head,
    parse_neck,
)
from smnas_trt.space.config import SpaceConfig, load_space_config

ENUMERATE_LIMIT = 100_000  # block splits / doubling patterns per block count kept as lists (below: sampled)

# Mutation operators. The first four are SM-NAS's backbone moves; the rest step one module width.
MUTATIONS = ("insert_block", "remove_block", "move_doubling", "base_channels", "neck_channels", "head_width",
             "head_depth", "mobilenet_width")


def family_name(b: Backbone) -> str:
    return "mobilenetv2" if b.kind == "mobilenetv2" else f"{b.kind}{b.depth}"


def head_name(h: Head) -> str:
    return f"cascade{h.stages}" if h.kind == "cascade" else h.kind


def neck_name(n: Neck) -> str:
    return str(n) if n.kind == "none" else f"fpn:P{n.min_level}-P{n.max_level}"


class SearchSpace:
    """The set of architectures a config allows."""

    def __init__(self, config: SpaceConfig) -> None:
        self.config = config
        self.sizes = [InputSize(*map(int, s.split("x"))) for s in config.sizes]
        self.lo_blocks, self.hi_blocks = config.blocks
        # Structural genes: (size, family, neck, head); rpn follows from the head.
        self.structures = list(product(self.sizes, config.backbones, config.necks, config.heads))
        self._necks = {n: parse_neck(f"{n}:{config.defaults.fpn_channels}" if n.startswith("fpn") else n)
                       for n in config.necks}
        self._heads = {h: parse_head(h) for h in config.heads}

    @classmethod
    def load(cls, path_or_name: str | Path) -> SearchSpace:
        return cls(load_space_config(path_or_name))

    @property
    def name(self) -> str:
        return self.config.name

    # ------------------------------------------------------------------ membership
    def max_blocks(self, depth: int) -> int:
        """The configured block bound, widened to the family's standard count (ResNet-50 has 16, -101 has 33)."""
        standard = sum(len(s) for s in STANDARD_STAGES.get(depth, ()))
        return max(self.hi_blocks, standard)

    def check(self, arch: Arch) -> Arch:
        """Raise ArchError naming the first gene outside this space; return the arch otherwise."""
        c = self.config
        if str(arch.size) not in c.sizes:
            raise ArchError(f"size: {arch.size} is not in space {c.name!r}; allowed: {', '.join(c.sizes)}")
        b = arch.backbone
        family = family_name(b)
        if family not in c.backbones:
            raise ArchError(f"backbone: {family} is not in space {c.name!r}; allowed: {', '.join(c.backbones)}")
        if b.kind == "mobilenetv2":
            _require("backbone: MobileNetV2 width", b.width_mult, c.mobilenet_widths)
        else:
            _require("backbone: base channels", b.base, c.base_channels)
            if b.num_doublings != c.doublings:
                raise ArchError(f"backbone: code {'-'.join(b.stages)} has {b.num_doublings} '2' blocks; "
                                f"space {c.name!r} needs exactly {c.doublings}")
            hi = self.max_blocks(b.depth)
            if not self.lo_blocks <= b.num_blocks <= hi:
                raise ArchError(f"backbone: code {'-'.join(b.stages)} has {b.num_blocks} blocks; "
                                f"allowed: {self.lo_blocks}-{hi}")
            if b.kind == "resnext" and (b.groups, b.group_width) != (c.defaults.resnext_groups,
                                                                      c.defaults.resnext_group_width):
                raise ArchError(f"backbone: ResNeXt {b.groups}x{b.group_width}d not in space; allowed: "
                                f"{c.defaults.resnext_groups}x{c.defaults.resnext_group_width}d")
        _require("neck", neck_name(arch.neck), c.necks)
        if arch.neck.kind == "fpn":
            _require("neck: FPN channels", arch.neck.channels, c.fpn_channels)
        h = arch.head
        _require("head", head_name(h), c.heads)
        if h.kind in ("retina", "fcos"):
            _require("head: dense depth", h.depth, c.dense_depths)
            _require("head: dense width", h.width, c.dense_widths)
        else:
            _require("head: fc width", h.width, c.fc_widths)
        return arch

    def parse(self, text: str) -> Arch:
        """Parse and check membership in one step."""
        return self.check(parse(text))

    # ------------------------------------------------------------------ structures
    def structure_arch(self, size: InputSize, family: str, neck: str, head: str) -> Arch:
        """An architecture of one structural combination with the standard module genes."""
        d = self.config.defaults
        if family == "mobilenetv2":
            backbone = Backbone("mobilenetv2", width_mult=d.mobilenet_width)
        elif family.startswith("resnext"):
            depth = int(family.removeprefix("resnext"))
            backbone = Backbone("resnext", depth, d.base, STANDARD_STAGES[depth], d.resnext_groups,
                                d.resnext_group_width)
        else:
            depth = int(family.removeprefix("resnet"))
            backbone = Backbone("resnet", depth, d.base, STANDARD_STAGES[depth])
        neck_gene = parse_neck(f"{neck}:{d.fpn_channels}" if neck.startswith("fpn") else neck)
        head_gene = parse_head(head)
        if head_gene.two_stage:
            head_gene = replace(head_gene, width=d.fc_width)
        else:
            head_gene = replace(head_gene, depth=d.dense_depth, width=d.dense_width)
        return Arch(size, backbone, neck_gene, head_gene.two_stage, head_gene)

    def iter_structures(self) -> Iterator[Arch]:
        for size, family, neck, head in self.structures:
            yield self.structure_arch(size, family, neck, head)

    def sample_structure(self, rng: random.Random) -> Arch:
        """Uniform over structural combinations, standard module genes."""
        return self.structure_arch(*rng.choice(self.structures))

    # ------------------------------------------------------------------ modules
    def sample_stages(self, rng: random.Random, depth: int) -> tuple[str, ...]:
        """A random code: block count uniform in bounds, four non-empty stages, `doublings` 2s placed at random."""
        n = rng.randint(self.lo_blocks, self.max_blocks(depth))
        d = self.config.doublings
        # Choosing from the enumerated lists (cached, the gate samples a lot) is uniform over them, and so is
        # rng.sample; the lists are only built while small, since their length grows as n**3 and n**d.
        if math.comb(n - 1, 3) <= ENUMERATE_LIMIT:
            bounds = rng.choice(_stage_bounds(n))
        else:
            bounds = (0, *sorted(rng.sample(range(1, n), 3)), n)
        if math.comb(n, d) <= ENUMERATE_LIMIT:
            digits = rng.choice(_doubling_patterns(n, d))
        else:
            chosen = set(rng.sample(range(n), d))
            digits = "".join("2" if i in chosen else "1" for i in range(n))
        return tuple(digits[bounds[i]:bounds[i + 1]] for i in range(4))

    def sample_arch(self, rng: random.Random) -> Arch:
        """A random structure with random module genes (built directly: the predictor gate samples a lot)."""
        c = self.config
        size, family, neck, head = rng.choice(self.structures)
        if family == "mobilenetv2":
            backbone = Backbone("mobilenetv2", width_mult=rng.choice(c.mobilenet_widths))
        else:
            kind, depth = ("resnext", int(family[7:])) if family.startswith("resnext") else ("resnet", int(family[6:]))
            groups, group_width = (c.defaults.resnext_groups, c.defaults.resnext_group_width) if kind == "resnext" \
                else (0, 0)
            backbone = Backbone(kind, depth, rng.choice(c.base_channels), self.sample_stages(rng, depth),  # type: ignore[arg-type]
                                groups, group_width)
        neck_gene = self._necks[neck]
        if neck_gene.kind == "fpn":
            neck_gene = Neck("fpn", neck_gene.min_level, neck_gene.max_level, rng.choice(c.fpn_channels))
        h = self._heads[head]
        if h.two_stage:
            head_gene = Head(h.kind, h.stages, 0, rng.choice(c.fc_widths))
        else:
            head_gene = Head(h.kind, 1, rng.choice(c.dense_depths), rng.choice(c.dense_widths))
        return Arch(size, backbone, neck_gene, h.two_stage, head_gene)

    def mutate(self, arch: Arch, rng: random.Random, weights: Mapping[str, float] | None = None,
               attempts: int = 50) -> Arch:
        """One modular mutation that stays in the space and changes the arch.

        `weights` maps operator names (see MUTATIONS) to relative rates; missing names get 1.
        Raises ArchError if no operator can change this arch (e.g. every gene has a single option).
        """
        ops = [op for op in MUTATIONS if (weights or {}).get(op, 1.0) > 0]
        rates = [(weights or {}).get(op, 1.0) for op in ops]
        for _ in range(attempts):
            op = rng.choices(ops, rates)[0]
            child = self._apply(op, arch, rng)
            if child is None or child == arch:
                continue
            try:
                return self.check(child)
            except ArchError:
                continue
        raise ArchError(f"arch: no mutation of {arch} stays in space {self.name!r}")

    def _apply(self, op: str, arch: Arch, rng: random.Random) -> Arch | None:
        c, b, n, h = self.config, arch.backbone, arch.neck, arch.head
        resnet_like = b.kind != "mobilenetv2"
        if op in ("insert_block", "remove_block", "move_doubling") and resnet_like:
            stages = _mutate_code(op, b.stages, rng)
            return None if stages is None else replace(arch, backbone=replace(b, stages=stages))
        if op == "base_channels" and resnet_like:
            return replace(arch, backbone=replace(b, base=_neighbour(b.base, c.base_channels, rng)))
        if op == "mobilenet_width" and not resnet_like:
            return replace(arch, backbone=replace(b, width_mult=_neighbour(b.width_mult, c.mobilenet_widths, rng)))
        if op == "neck_channels" and n.kind == "fpn":
            return replace(arch, neck=replace(n, channels=_neighbour(n.channels, c.fpn_channels, rng)))
        if op == "head_width":
            options = c.fc_widths if h.two_stage else c.dense_widths
            return replace(arch, head=replace(h, width=_neighbour(h.width, options, rng)))
        if op == "head_depth" and not h.two_stage:
            return replace(arch, head=replace(h, depth=_neighbour(h.depth, c.dense_depths, rng)))
        return None


@cache
def _stage_bounds(n: int) -> list[tuple[int, ...]]:
    """Every split of n blocks into four non-empty stages, as boundary indices (enumerated once per n)."""
    return [(0, *cuts, n) for cuts in combinations(range(1, n), 3)]


@cache
def _doubling_patterns(n: int, doublings: int) -> list[str]:
    """Every n-digit code with exactly `doublings` 2s."""
    return ["".join("2" if i in chosen else "1" for i in range(n))
            for chosen in map(set, combinations(range(n), doublings))]


def _require(field: str, value: object, options: list) -> None:  # type: ignore[type-arg]
    if value not in options:
        raise ArchError(f"{field} {value} is not in the space; allowed: {', '.join(map(str, options))}")


def _neighbour(value: float, options: list, rng: random.Random):  # type: ignore[no-untyped-def,type-arg]
    """The adjacent option below or above (SM-NAS moves one step at a time)."""
    if value not in options:
        return rng.choice(options)
    i = options.index(value)
    steps = [j for j in (i - 1, i + 1) if 0 <= j < len(options)]
    return options[rng.choice(steps)] if steps else value


def _mutate_code(op: str, stages: tuple[str, ...], rng: random.Random) -> tuple[str, ...] | None:
    if op == "insert_block":
        s = rng.randrange(4)
        pos = rng.randint(0, len(stages[s]))
        new = list(stages)
        new[s] = stages[s][:pos] + "1" + stages[s][pos:]
        return tuple(new)
    if op == "remove_block":
        ones = [(s, i) for s, code in enumerate(stages) for i, d in enumerate(code) if d == "1" and len(code) > 1]
        if not ones:
            return None
        s, i = rng.choice(ones)
        new = list(stages)
        new[s] = stages[s][:i] + stages[s][i + 1:]
        return tuple(new)
    # move_doubling: swap a `2` with a neighbouring `1` in the flattened code; stage lengths stay.
    flat = list("".join(stages))
    moves = [(i, j) for i, d in enumerate(flat) if d == "2" for j in (i - 1, i + 1)
             if 0 <= j < len(flat) and flat[j] == "1"]
    if not moves:
        return None
    i, j = rng.choice(moves)
    flat[i], flat[j] = flat[j], flat[i]
    out, k = [], 0
    for code in stages:
        out.append("".join(flat[k:k + len(code)]))
        k += len(code)
    return tuple(out)
