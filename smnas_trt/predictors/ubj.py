"""A check of XGBoost UBJSON model files in Python, before XGBoost itself reads them.

XGBoost's C++ loader trusts its input: a truncated or bit-flipped model (with a checksum written
after the damage) made `Booster.load_model` segfault or abort the whole process in about one case
in ten. So the predictor loader first parses the file here (UBJSON draft 12, as XGBoost writes it)
and checks the tree arrays XGBoost indexes with: lengths, child, parent and feature indices. Only a
file that passes reaches XGBoost.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from smnas_trt.errors import PredictorError

_NUMBERS = {b"i": ">i1", b"U": ">u1", b"I": ">i2", b"l": ">i4", b"L": ">i8", b"d": ">f4", b"D": ">f8"}
_MAX_DEPTH = 64  # XGBoost models nest about 8 deep
_ROOT_PARENT = 2147483647  # XGBoost's "no parent" id of a root node


class _Damaged(Exception):
    """Raised inside the parser; turned into one PredictorError naming the file."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Damaged(f"truncated at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def marker(self) -> bytes:
        while (m := self.take(1)) == b"N":  # no-op padding
            pass
        return m

    def number(self, marker: bytes) -> Any:
        dtype = _NUMBERS.get(marker)
        if dtype is None:
            raise _Damaged(f"unknown type {marker!r} at byte {self.pos - 1}")
        value = np.frombuffer(self.take(np.dtype(dtype).itemsize), dtype=dtype)[0]
        return float(value) if marker in (b"d", b"D") else int(value)

    def length(self) -> int:
        n = self.number(self.marker())
        if not isinstance(n, int) or n < 0:
            raise _Damaged(f"bad length {n} at byte {self.pos}")
        return int(n)

    def text(self) -> str:
        try:
            return self.take(self.length()).decode("utf-8")
        except UnicodeDecodeError:
            raise _Damaged(f"text that is not UTF-8 before byte {self.pos}") from None

    def value(self, marker: bytes, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Damaged("nested too deeply")
        if marker == b"Z":
            return None
        if marker in (b"T", b"F"):
            return marker == b"T"
        if marker in (b"S", b"H"):
            return self.text()
        if marker == b"C":
            return self.take(1).decode("latin-1")
        if marker == b"[":
            return self.container(depth, is_object=False)
        if marker == b"{":
            return self.container(depth, is_object=True)
        return self.number(marker)

    def container(self, depth: int, is_object: bool) -> Any:
        element_type: bytes | None = None
        count: int | None = None
        if self.data[self.pos:self.pos + 1] == b"$":
            self.pos += 1
            element_type = self.take(1)
            if self.take(1) != b"#":
                raise _Damaged(f"typed container without a count at byte {self.pos}")
            count = self.length()
        elif self.data[self.pos:self.pos + 1] == b"#":
            self.pos += 1
            count = self.length()
        if not is_object and element_type in _NUMBERS and count is not None:
            dtype = np.dtype(_NUMBERS[element_type])
            return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype)
        if count is not None and count > len(self.data) - self.pos:
            raise _Damaged(f"a container of {count} items in {len(self.data) - self.pos} bytes")
        out: Any = {} if is_object else []
        i = 0
        while count is None or i < count:
            if count is None:
                end = b"}" if is_object else b"]"
                if self.data[self.pos:self.pos + 1] == end:
                    self.pos += 1
                    break
            key = self.text() if is_object else None
            marker = element_type if element_type is not None else self.marker()
            item = self.value(marker, depth + 1)
            if is_object:
                out[key] = item
            else:
                out.append(item)
            i += 1
        return out


def _int_text(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Damaged(f"{what} is {str(value)[:20]!r}") from None


def _check_tree(tree: Any, index: int, num_feature: int) -> None:
    if not isinstance(tree, dict) or not isinstance(tree.get("tree_param"), dict):
        raise _Damaged(f"tree {index} has no tree_param")
    n = _int_text(tree["tree_param"].get("num_nodes"), f"tree {index} num_nodes")
    if n < 1 or _int_text(tree["tree_param"].get("num_feature"), f"tree {index} num_feature") != num_feature:
        raise _Damaged(f"tree {index} has {n} nodes or another feature count")
    arrays = {}
    for name in ("left_children", "right_children", "parents", "split_indices", "split_conditions",
                 "default_left", "split_type", "base_weights", "loss_changes", "sum_hessian"):
        a = np.asarray(tree.get(name))
        if a.ndim != 1 or len(a) < n:
            raise _Damaged(f"tree {index} {name} has {a.size} entries for {n} nodes")
        arrays[name] = a[:n]
    left, right = arrays["left_children"].astype(np.int64), arrays["right_children"].astype(np.int64)
    parents = arrays["parents"].astype(np.int64)
    if ((left < -1) | (left >= n) | (right < -1) | (right >= n)).any() or ((left == -1) != (right == -1)).any():
        raise _Damaged(f"tree {index} has child indices outside its {n} nodes")
    if (((parents < 0) | (parents >= n)) & (parents != _ROOT_PARENT)).any():
        raise _Damaged(f"tree {index} has parent indices outside its {n} nodes")
    split = arrays["split_indices"].astype(np.int64)
    inner = left != -1
    if ((split[inner] < 0) | (split[inner] >= num_feature)).any():
        raise _Damaged(f"tree {index} splits on features outside 0..{num_feature - 1}")
    # Every node reached once from the root: no cycles or shared children for XGBoost to walk into.
    seen = np.zeros(n, dtype=bool)
    stack = [0]
    while stack:
        node = stack.pop()
        if seen[node]:
            raise _Damaged(f"tree {index} is not a tree (node {node} reached twice)")
        seen[node] = True
        if left[node] != -1:
            stack += [int(left[node]), int(right[node])]


def check_xgboost_ubj(data: bytes, source: str) -> None:
    """Raise PredictorError (one line, naming `source`) unless `data` is a well-formed XGBoost tree model."""
    try:
        reader = _Reader(data)
        model = reader.value(reader.marker(), 0)
        if reader.pos != len(data):
            raise _Damaged(f"{len(data) - reader.pos} bytes after the end of the model")
        learner = model["learner"]
        num_feature = _int_text(learner["learner_model_param"]["num_feature"], "num_feature")
        booster = learner["gradient_booster"]["model"]
        trees = booster["trees"]
        if not isinstance(trees, list) or not trees:
            raise _Damaged("no trees")
        if _int_text(booster["gbtree_model_param"]["num_trees"], "num_trees") != len(trees):
            raise _Damaged("num_trees differs from the trees stored")
        if len(np.asarray(booster["tree_info"])) != len(trees):
            raise _Damaged("tree_info differs from the trees stored")
        for i, tree in enumerate(trees):
            _check_tree(tree, i, num_feature)
    except _Damaged as e:
        raise PredictorError(f"{source}: not a readable XGBoost model ({e}); refit the predictor") from None
    except (KeyError, TypeError, IndexError, ValueError, struct.error):
        raise PredictorError(f"{source}: not a readable XGBoost model (fields missing); refit the predictor") \
            from None
