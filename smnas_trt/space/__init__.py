"""Architecture encoding, search-space configs, sampling and SM-NAS mutations."""

from smnas_trt.space.arch import (
    STAGE_STRIDES,
    STANDARD_STAGES,
    Arch,
    Backbone,
    Head,
    InputSize,
    Neck,
    arch_id,
    is_bottleneck,
    parse,
)
from smnas_trt.space.config import SpaceConfig, load_space_config
from smnas_trt.space.space import MUTATIONS, SearchSpace, family_name, head_name, neck_name


def load_space(path_or_name: str) -> SearchSpace:
    """A search space from a YAML path or a built-in name (`demo`, `paper`)."""
    return SearchSpace.load(path_or_name)


__all__ = [
    "MUTATIONS",
    "STAGE_STRIDES",
    "STANDARD_STAGES",
    "Arch",
    "Backbone",
    "Head",
    "InputSize",
    "Neck",
    "SearchSpace",
    "SpaceConfig",
    "arch_id",
    "family_name",
    "head_name",
    "is_bottleneck",
    "load_space",
    "load_space_config",
    "neck_name",
    "parse",
]
