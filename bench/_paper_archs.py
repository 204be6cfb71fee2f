"""Hand-designed reference detectors expressed in a search space (default: the paper space), for GPU benches.

Each is one structural combination with the space's standard module genes (`SearchSpace.structure_arch`,
the same genes `bench/vs_reference.py` spells out: R50 code 111-2111-211111-211, base 64, FPN 256,
4x256 dense heads, 1024-wide fc heads). RetinaNet uses P3-P7 here, as published, since the paper space
has that FPN (the demo space has only P3-P6, hence vs_reference's choice there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from smnas_trt.space import Arch, InputSize, SearchSpace, load_space

# (name, backbone family, neck, head), in the order the benches take them (--archs N: the first N).
REFERENCES = (
    ("Faster R-CNN R50-FPN", "resnet50", "fpn:P2-P5", "2fc"),
    ("RetinaNet R50-FPN", "resnet50", "fpn:P3-P7", "retina"),
    ("RetinaNet R18-C4", "resnet18", "none:C4", "retina"),
    ("Cascade R-CNN R50-FPN", "resnet50", "fpn:P2-P5", "cascade3"),
)


@dataclass(frozen=True)
class NamedArch:
    name: str
    arch: Arch
    in_space: bool  # False when only the input size lies outside the space (CPU dry runs at small sizes)


def parse_size(text: str) -> InputSize:
    """'800x600' (width x height) or '512' (square)."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise SystemExit(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 800x600, or one number") from None
    return InputSize(width, height)


def reference_archs(size: InputSize, n: int | None = None, space: str | SearchSpace = "paper") -> list[NamedArch]:
    """The first `n` REFERENCES at `size`, each checked against the space (its parser names a bad gene).

    A size the space does not list is allowed for dry runs: every other gene is still checked, at the
    space's first size, and the result says `in_space=False`.
    """
    search_space = load_space(space) if isinstance(space, str) else space
    out = []
    for name, family, neck, head in REFERENCES[:n]:
        arch = search_space.structure_arch(size, family, neck, head)
        in_space = str(size) in search_space.config.sizes
        if in_space:
            arch = search_space.parse(str(arch))  # the round trip a user's string takes
        else:
            search_space.parse(str(dataclasses.replace(arch, size=search_space.sizes[0])))
        out.append(NamedArch(name, arch, in_space))
    return out


if __name__ == "__main__":
    for ref in reference_archs(InputSize(800, 600)):
        print(f"{ref.name:24s} {ref.arch}")
