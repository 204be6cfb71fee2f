"""Search-space configs: YAML validated with pydantic; unknown fields are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from smnas_trt.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BUILTIN_SPACES = {name: CONFIG_DIR / f"space_{name}.yaml" for name in ("demo", "paper", "tiny")}

FamilyName = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnext50", "resnext101", "mobilenetv2"]
HeadName = Literal["retina", "fcos", "2fc", "cascade2", "cascade3"]
NeckName = Literal["none:C4", "none:C5", "fpn:P2-P5", "fpn:P2-P6", "fpn:P3-P5", "fpn:P3-P6", "fpn:P3-P7", "fpn:P4-P7"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModuleDefaults(_Strict):
    """The "standard module genes" that structural sampling (stage 1) uses."""

    base: int
    fpn_channels: int
    dense_depth: int
    dense_width: int
    fc_width: int
    mobilenet_width: float = 1.0
    resnext_groups: int = 32
    resnext_group_width: int = 4


class SpaceConfig(_Strict):
    name: str
    sizes: list[str]
    backbones: list[FamilyName]
    necks: list[NeckName]
    heads: list[HeadName]
    base_channels: list[int]
    blocks: tuple[int, int] = (5, 15)
    doublings: int = 3
    mobilenet_widths: list[float] = [1.0]
    fpn_channels: list[int]
    dense_depths: list[int]
    dense_widths: list[int]
    fc_widths: list[int]
    defaults: ModuleDefaults

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[str]) -> list[str]:
        for s in v:
            w, _, h = s.partition("x")
            if not (w.isdigit() and h.isdigit()):
                raise ValueError(f"size {s!r} is not WIDTHxHEIGHT, e.g. 800x600")
        return v

    @field_validator("sizes", "backbones", "necks", "heads", "base_channels", "fpn_channels", "dense_depths",
                     "dense_widths", "fc_widths", "mobilenet_widths")
    @classmethod
    def _non_empty_sorted(cls, v: list) -> list:  # type: ignore[type-arg]
        if not v:
            raise ValueError("must list at least one option")
        if len(set(v)) != len(v):
            raise ValueError("options must not repeat")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SpaceConfig:
        lo, hi = self.blocks
        if not 4 <= lo <= hi:
            raise ValueError(f"blocks: need 4 <= min <= max, got {list(self.blocks)}")
        for name, option_list in [("base", "base_channels"), ("fpn_channels", "fpn_channels"),
                                  ("dense_depth", "dense_depths"), ("dense_width", "dense_widths"),
                                  ("fc_width", "fc_widths"), ("mobilenet_width", "mobilenet_widths")]:
            value: float = getattr(self.defaults, name)
            options: list[float] = getattr(self, option_list)
            if value not in options:
                raise ValueError(f"defaults.{name}: {value} is not one of the listed options {options}")
            if options != sorted(options):
                raise ValueError(f"{option_list}: list options in increasing order (mutations step to neighbours)")
        return self


def load_space_config(path_or_name: str | Path) -> SpaceConfig:
    """Load a space by file path or built-in name (`demo`, `paper`, `tiny`)."""
    path = BUILTIN_SPACES.get(str(path_or_name), Path(path_or_name))
    if not path.is_file():
        raise ConfigError(f"space: no such file {str(path)!r}; give a YAML path or one of: {', '.join(BUILTIN_SPACES)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return SpaceConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {pydantic_error_line(e)}") from None


def pydantic_error_line(e: ValidationError) -> str:
    """First pydantic error as one line: `field.path: message (got VALUE)`."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "literal_error":
        msg = f"{msg}, got {err['input']!r}"
    return f"{where}: {msg}"
