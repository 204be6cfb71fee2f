"""Search-space configs: YAML validated with pydantic; unknown fields are errors."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from smnas_trt.errors import ArchError, ConfigError
from smnas_trt.space import arch as genes

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

    @field_validator("resnext_groups")
    @classmethod
    def _groups(cls, v: int) -> int:
        return _within(v, 1, genes.MAX_GROUPS)

    @field_validator("resnext_group_width")
    @classmethod
    def _group_width(cls, v: int) -> int:
        return _within(v, 1, genes.MAX_GROUP_WIDTH)


STANDARD_DOUBLINGS = 3  # '2' blocks in every torchvision ResNet's code (genes.STANDARD_STAGES)
_SIZE_TEXT = re.compile(r"[1-9][0-9]{0,8}x[1-9][0-9]{0,8}")
# Families by config name: (kind, depth) of the backbone gene.
_FAMILIES: dict[str, tuple[genes.BackboneKind, int]] = {
    "resnet18": ("resnet", 18), "resnet34": ("resnet", 34), "resnet50": ("resnet", 50), "resnet101": ("resnet", 101),
    "resnext50": ("resnext", 50), "resnext101": ("resnext", 101), "mobilenetv2": ("mobilenetv2", 0),
}


def _within(value: float, lo: float, hi: float) -> Any:
    if value < lo:
        raise ValueError(f"{value} is too small (at least {lo})")
    if value > hi:
        raise ValueError(f"{value} is too large (at most {hi})")
    return value


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

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip() or len(v.splitlines()) != 1:
            raise ValueError("give a non-empty name on one line")
        return v

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[str]) -> list[str]:
        for s in v:
            # Canonical spelling only: membership checks compare the arch's printed size with these strings.
            if not _SIZE_TEXT.fullmatch(s):
                raise ValueError(f"size {s!r:.40} is not WIDTHxHEIGHT, e.g. 800x600")
            w, h = map(int, s.split("x"))
            if min(w, h) < genes.MIN_SIDE:
                raise ValueError(f"size {s} is too small (at least {genes.MIN_SIDE}x{genes.MIN_SIDE})")
            if max(w, h) > genes.MAX_SIDE:
                raise ValueError(f"size {s} is too large (at most {genes.MAX_SIDE} per side)")
        return v

    @field_validator("base_channels")
    @classmethod
    def _base(cls, v: list[int]) -> list[int]:
        for b in v:
            if b % 8:
                raise ValueError(f"base channels {b} must be a positive multiple of 8")
            _within(b, 8, genes.MAX_BASE)
        return v

    @field_validator("fpn_channels")
    @classmethod
    def _fpn(cls, v: list[int]) -> list[int]:
        return [_within(c, 1, genes.MAX_FPN_CHANNELS) for c in v]

    @field_validator("dense_depths")
    @classmethod
    def _dense_depths(cls, v: list[int]) -> list[int]:
        return [_within(d, 1, genes.MAX_DENSE_DEPTH) for d in v]

    @field_validator("dense_widths")
    @classmethod
    def _dense_widths(cls, v: list[int]) -> list[int]:
        return [_within(w, genes.MIN_WIDTH, genes.MAX_DENSE_WIDTH) for w in v]

    @field_validator("fc_widths")
    @classmethod
    def _fc_widths(cls, v: list[int]) -> list[int]:
        return [_within(w, genes.MIN_WIDTH, genes.MAX_FC_WIDTH) for w in v]

    @field_validator("mobilenet_widths")
    @classmethod
    def _mobilenet_widths(cls, v: list[float]) -> list[float]:
        for w in v:
            _within(w, genes.MIN_WIDTH_MULT, genes.MAX_WIDTH_MULT)
            if round(w, 2) != w:
                raise ValueError(f"width multiplier {w} has more than two decimals")
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
        if not 4 <= lo <= hi <= genes.MAX_BLOCKS:
            raise ValueError(f"blocks: need 4 <= min <= max <= {genes.MAX_BLOCKS}, got {list(self.blocks)}")
        if not 0 <= self.doublings <= lo:
            raise ValueError(f"doublings: need 0 <= doublings <= the minimum block count {lo}, got {self.doublings}")
        if self.doublings != STANDARD_DOUBLINGS and any(f != "mobilenetv2" for f in self.backbones):
            # Structures (stage 1) use each family's standard code, which doubles 3 times: with another
            # count the space would refuse its own structures and every code mutation of them.
            raise ValueError(f"doublings: ResNet/ResNeXt structures use the standard codes, which double "
                             f"{STANDARD_DOUBLINGS} times; got {self.doublings}")
        for name, option_list in [("base", "base_channels"), ("fpn_channels", "fpn_channels"),
                                  ("dense_depth", "dense_depths"), ("dense_width", "dense_widths"),
                                  ("fc_width", "fc_widths"), ("mobilenet_width", "mobilenet_widths")]:
            value: float = getattr(self.defaults, name)
            options: list[float] = getattr(self, option_list)
            if value not in options:
                raise ValueError(f"defaults.{name}: {value} is not one of the listed options {options}")
            if options != sorted(options):
                raise ValueError(f"{option_list}: list options in increasing order (mutations step to neighbours)")
        self._check_backbones()
        return self

    def _check_backbones(self) -> None:
        """Every backbone the space samples passes the arch rules (widest base with all doublings, ResNeXt groups)."""
        hi = self.blocks[1]
        d = self.defaults
        for family in self.backbones:
            kind, depth = _FAMILIES[family]
            if kind == "mobilenetv2":
                continue
            groups, width = (d.resnext_groups, d.resnext_group_width) if kind == "resnext" else (0, 0)
            sampled = "2" * self.doublings + "1" * (hi - self.doublings)
            codes = [("defaults", genes.STANDARD_STAGES[depth], d.base)]
            codes += [(f"base_channels {b} with {self.doublings} doublings", (*sampled[:3], sampled[3:]), b)
                      for b in self.base_channels]
            for what, stages, base in codes:
                try:
                    genes.check_backbone(genes.Backbone(kind, depth, base, tuple(stages), groups, width))
                except ArchError as e:
                    raise ValueError(f"{family}: {what}: {str(e).removeprefix('backbone: ')}") from None


def read_yaml(path: Path) -> Any:
    """A YAML file's contents; ConfigError (one line, naming the file) for non-UTF-8 or invalid YAML."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None


def load_space_config(path_or_name: str | Path) -> SpaceConfig:
    """Load a space by file path or built-in name (`demo`, `paper`, `tiny`)."""
    path = BUILTIN_SPACES.get(str(path_or_name), Path(path_or_name))
    if not path.is_file():
        raise ConfigError(f"space: no such file {str(path)!r}; give a YAML path or one of: {', '.join(BUILTIN_SPACES)}")
    raw = read_yaml(path)
    try:
        return SpaceConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {pydantic_error_line(e, SpaceConfig)}") from None


def pydantic_error_line(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The errors of a validation as one line: unknown fields first, then the first other error.

    A misspelt field is reported as unknown, with the closest field of `model` at that level
    (`nmae: unknown field (did you mean name?)`), instead of as the required field it leaves missing.
    """
    errors = e.errors()
    unknown = sorted((err for err in errors if err["type"] == "extra_forbidden"), key=lambda err: len(err["loc"]))
    parts: list[str] = []
    suggested: set[tuple[str, ...]] = set()
    for err in unknown:
        loc = tuple(err["loc"])
        missing = [tuple(x["loc"])[-1] for x in errors
                   if x["type"] == "missing" and tuple(x["loc"])[:-1] == loc[:-1]]
        names = [str(n) for n in missing] + [n for n in _field_names(model, loc[:-1]) if n not in missing]
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if close:
            suggested.add(tuple(map(str, (*loc[:-1], close[0]))))
        parts.append(f"{_where(loc)}: unknown field{hint}")
    # A field left missing by a misspelling is explained by the hint; report the first other error.
    rest = [err for err in errors if err["type"] != "extra_forbidden"
            and not (err["type"] == "missing" and tuple(map(str, err["loc"])) in suggested)]
    if rest:
        err = rest[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"{msg}, got {_short(err['input'])}"
        parts.append(f"{_where(tuple(err['loc']))}: {msg}")
    # Inputs are echoed with repr(), but keep the promise of one line whatever a message holds.
    return " ".join("; ".join(parts).splitlines()) if parts else "invalid config"


def _where(loc: tuple[Any, ...]) -> str:
    """`a.b.0`; a key that is empty, not printable or too long is shown with repr() (YAML keys can be anything)."""
    def show(p: Any) -> str:
        if isinstance(p, int) or (isinstance(p, str) and p and p.isprintable() and p.strip() == p and len(p) <= 60):
            return str(p)
        return _short(p)

    return ".".join(map(show, loc)) or "config"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _field_names(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, or [] where it is not a model."""
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in map(_model_in, typing.get_args(annotation)) if m is not None), None)
    return None
