"""Type checks for settings dataclasses filled from user input (YAML, JSON, checkpoints).

A value of the wrong type (`batch_size: null`, `folds: "5"`) would otherwise surface as a TypeError
deep inside training or fitting; this names the field on one line instead.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from smnas_trt.errors import SmnasError

# Annotations as strings (modules use `from __future__ import annotations`) -> accepted types.
_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
    "int | None": (int, type(None)), "float | None": (int, float, type(None)),
    "bool | None": (bool, type(None)), "str | None": (str, type(None)),
}
_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def check_field_types(obj: Any, error: type[SmnasError], what: str) -> None:
    """Raise `error` naming the first field of dataclass `obj` whose value has the wrong type."""
    for f in fields(obj):
        annotation = str(f.type)
        kinds = _KINDS.get(annotation)
        if kinds is None:
            continue
        value = getattr(obj, f.name)
        if int in kinds and float not in kinds and type(value) is float and value.is_integer():
            # 5.0 from a `dict[str, float]` config field is the integer 5 (also on frozen dataclasses).
            object.__setattr__(obj, f.name, int(value))
            continue
        # bool is an int to Python, but `epochs: true` is a mistake, not 1.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            base = annotation.removesuffix(" | None")
            optional = " or null" if annotation.endswith("None") else ""
            raise error(f"{what}: {f.name} must be {_NAMES[base]}{optional}, got {short_repr(value)}")


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() cut to `limit` characters: messages that echo input stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
