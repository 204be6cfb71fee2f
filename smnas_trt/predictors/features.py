"""Features of an architecture for the latency predictor, computed for large batches quickly.

An arch is cut into pieces whose feature rows are computed once and cached:
- `stem`: input size and backbone family/width (a few dozen per space),
- `stage1`..`stage4`: one backbone stage, keyed by its code, the doublings before it, the backbone
  family/width and the input size; a miss costs a few microseconds because the analytic counts
  come from size- and width-free coefficients (`analytic.stage_coefficients`),
- `neck`: keyed by the backbone's output channels and the neck genes,
- `head`: keyed by the channels the heads see, the neck levels and the head genes.
Per arch the Python work is seven dictionary look-ups; rows are then gathered and summed with
numpy. A batch of 100,000 random archs featurises in about half a second cold (see
bench/predictor_throughput.py), faster once the caches are warm.

Columns (schema `SCHEMA_VERSION`; names in `Featurizer.names`):
- structural one-hots (backbone family, head), FPN flag and levels, rpn, input width/height/pixels;
- backbone genes: depth, base channels, width multiplier, groups, blocks and doublings per stage,
  output channels C2..C5; neck channels; head depth/width, cascade stages, anchors, proposals,
  head locations;
- analytic counts (`analytic.py`, equal to torch's FlopCounterMode on the real modules): FLOPs and
  activation bytes per stage and per module; totals of FLOPs, params, activation bytes, normalised
  bytes and layers;
- latency-table sums (when the featuriser is given the table's module entries): median ms summed
  per piece kind (stem, stage, neck, head, rpn, roi) and in total, and the number of the arch's
  pieces the table lacks. A missing piece makes its kind's sum and the total NaN (XGBoost routes
  missing values itself); `Featurizer.lut_missing` counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from smnas_trt.errors import ArchError, PredictorError
from smnas_trt.models import piece_keys
from smnas_trt.predictors import analytic
from smnas_trt.predictors.analytic import N_COUNTS
from smnas_trt.space.arch import Arch, Backbone, parse

SCHEMA_VERSION = 1
FAMILIES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50", "resnext101", "mobilenetv2")
HEADS = ("retina", "fcos", "2fc", "cascade2", "cascade3")
LUT_KINDS = piece_keys.PIECE_KINDS
ACT_BYTES = 4  # fp32 activations
DEFAULT_NUM_CLASSES = 81  # what `smnas profile-lut` builds the timed detectors with (COCO)
PARSE_CACHE_LIMIT = 1_000_000
PIECE_CACHE_LIMIT = 500_000  # cached piece rows (~1 KB each) before the caches start over
NOT_IN_TABLE = ""  # stands for a piece key the table certainly lacks (no table key is empty)


class FeatureConfig(BaseModel):
    """What the features assume beyond the arch; stored with every model (part of the schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_classes: int = Field(DEFAULT_NUM_CLASSES, ge=2)  # classes (with background) of the timed detectors
    use_lut: bool = True  # latency-table sum columns
    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _this_schema(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"feature schema {version} is not this smnas's ({SCHEMA_VERSION})")
        return version


STEM_NAMES = ("width", "height", "pixels", *(f"family_{f}" for f in FAMILIES), "depth", "base", "width_mult",
              "groups", "stem_flops")
NECK_NAMES = ("neck_fpn", "neck_min_level", "neck_max_level", "neck_levels", "neck_channels", "c2_channels",
              "c3_channels", "c4_channels", "c5_channels", "neck_flops", "neck_act_bytes")
HEAD_NAMES = (*(f"head_{h}" for h in HEADS), "rpn", "head_depth", "head_width", "cascade_stages", "head_in_channels",
              "anchors", "proposals", "head_locations", "dense_head_flops", "dense_head_act_bytes", "rpn_flops",
              "rpn_act_bytes", "roi_flops", "roi_params", "roi_pooled_bytes")
STAGE_NAMES = ("blocks", "doublings", "flops", "act_bytes")
TOTAL_NAMES = ("flops", "params", "act_bytes", "norm_bytes", "layers", "blocks")


def family_of(b: Backbone) -> str:
    return "mobilenetv2" if b.kind == "mobilenetv2" else f"{b.kind}{b.depth}"


def _counts(counts: Sequence[float]) -> list[float]:
    """Count tuple (flops, params, act elems, norm elems, layers) with elements turned into bytes."""
    flops, params, act, norm, layers = counts
    return [flops, params, act * ACT_BYTES, norm * ACT_BYTES, layers]


class _PieceTable:
    """Rows of one piece type: key -> row id, rows stacked into a numpy array on demand."""

    __slots__ = ("array", "ids", "rows")

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.rows: list[list[float]] = []
        self.array = np.zeros((0, 0))

    def add(self, key: Any, row: list[float]) -> int:
        i = self.ids[key] = len(self.rows)
        self.rows.append(row)
        return i

    def stacked(self) -> np.ndarray:
        if len(self.array) != len(self.rows):
            self.array = np.array(self.rows, dtype=np.float64)
        return self.array


def feature_names(config: FeatureConfig) -> list[str]:
    """The columns of the feature matrix (`Featurizer.names`) under `config`."""
    names = [*STEM_NAMES, *NECK_NAMES, *HEAD_NAMES]
    for s in range(1, 5):
        names += [f"stage{s}_{n}" for n in STAGE_NAMES]
    names += [f"total_{n}" for n in TOTAL_NAMES]
    if config.use_lut:
        names += [f"lut_{k}_ms" for k in LUT_KINDS] + ["lut_total_ms", "lut_missing"]
    return names


class Featurizer:
    """Arch batches -> float64 feature matrices (NaN where the table lacks a piece).

    `module_ms` maps latency-table shape keys to median ms (`LatencyTable.module_latencies()`); it is
    used when `config.use_lut`. Caches grow with the distinct pieces seen (bounded by the space);
    not thread-safe.
    """

    def __init__(self, config: FeatureConfig | None = None, module_ms: Mapping[str, float] | None = None) -> None:
        self.config = config or FeatureConfig()
        self.module_ms: dict[str, float] = dict(module_ms or {})
        # Spelling a stage key costs more than the rest of a stage row: skip it when the table has none.
        self._table_has_stages = any(key.startswith("stage:") for key in self.module_ms)
        self._n_lut = len(LUT_KINDS) + 2 if self.config.use_lut else 0  # per kind, missing, entries
        self._parsed: dict[str, Arch] = {}
        self._reset_caches()
        self.names = feature_names(self.config)
        self.lut_missing = 0  # pieces missing from the table, summed over featurised archs
        self.lut_archs_missing = 0  # archs with at least one missing piece

    def _reset_caches(self) -> None:
        self._tables = {name: _PieceTable() for name in ("stem", "neck", "head", "stage")}
        self._necks: dict[Any, tuple[int, int]] = {}  # neck key -> (row id, channels the heads see)
        self._interned: dict[Any, int] = {}  # input size, (size, backbone width genes), neck genes -> small int

    @property
    def num_features(self) -> int:
        return len(self.names)

    def column(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise PredictorError(f"feature {name!r} is not in feature schema {SCHEMA_VERSION}") from None

    # ---------------------------------------------------------------------------------------- pieces
    def _lut(self, pieces: Sequence[tuple[str, str | None]]) -> list[float]:
        """Per-kind sums of the table's median ms over (kind, key) pieces, then [missing, entries]."""
        if not self._n_lut:
            return []
        sums = [0.0] * len(LUT_KINDS)
        missing = entries = 0
        for kind, key in pieces:
            if key is None:
                continue
            entries += 1
            i = LUT_KINDS.index(kind)
            ms = self.module_ms.get(key)
            if ms is None:
                missing += 1
                sums[i] = float("nan")
            else:
                sums[i] += ms
        return [*sums, float(missing), float(entries)]

    def _stem_row(self, a: Arch) -> list[float]:
        b, size = a.backbone, a.size
        fam = family_of(b)
        stem = analytic.backbone_stage_counts(a)[0]
        row = [float(size.width), float(size.height), float(size.width * size.height),
               *(1.0 if fam == f else 0.0 for f in FAMILIES),
               float(b.depth), float(b.base), float(b.width_mult), float(b.groups), stem[0]]
        return row + _counts(stem) + self._lut([("stem", piece_keys.stem_key(size, b))])

    def _neck_row(self, a: Arch) -> tuple[list[float], int]:
        n, size = a.neck, a.size
        channels = analytic.backbone_channels(a.backbone)
        built = analytic.built_stages(a)
        fpn = n.kind == "fpn"
        counts = analytic.neck_counts(size, channels, n.min_level, n.max_level, n.channels) if fpn else analytic.ZERO
        row = [float(fpn), float(n.min_level), float(n.max_level), float(len(n.levels)), float(n.channels),
               *(float(c) if i < built else 0.0 for i, c in enumerate(channels)), counts[0], counts[2] * ACT_BYTES]
        row += _counts(counts) + self._lut([("neck", piece_keys.neck_key(size, channels, n))])
        return row, analytic.head_in_channels(a)

    def _head_row(self, a: Arch, in_channels: int) -> list[float]:
        n, h = a.neck, a.head
        k = self.config.num_classes
        c = analytic.head_counts(a.size, n.kind == "fpn", n.min_level, n.max_level, in_channels, h.kind, h.stages,
                                 h.depth, h.width, k)
        label = f"cascade{h.stages}" if h.kind == "cascade" else h.kind
        # RoIAlign output (not in FLOP counts): proposals x channels x 7 x 7, once per cascade stage.
        stages = h.stages if h.kind == "cascade" else 1
        roi_pooled = float(c.proposals * in_channels * analytic.ROI_OUTPUT_SIZE**2 * stages * ACT_BYTES)
        row = [*(1.0 if label == x else 0.0 for x in HEADS), float(a.rpn), float(h.depth), float(h.width),
               float(h.stages if h.kind == "cascade" else 0), float(in_channels), float(c.anchors),
               float(c.proposals), float(c.locations), c.dense_head[0], c.dense_head[2] * ACT_BYTES,
               c.rpn[0], c.rpn[2] * ACT_BYTES, c.roi[0], c.roi[1], roi_pooled]
        lut = self._lut(piece_keys.head_keys(a.size, analytic.backbone_channels(a.backbone), n, h, k)) \
            if self._n_lut else []
        return row + _counts(analytic.add(c.dense_head, c.rpn, c.roi)) + lut

    def _stage_row(self, a: Arch, s: int, before: int, built: bool) -> list[float]:
        b, size = a.backbone, a.size
        if not built:
            return [0.0] * (len(STAGE_NAMES) + N_COUNTS + self._n_lut)
        if b.kind == "mobilenetv2":
            counts = analytic.mbv2_part(b.width_mult, s, size.width, size.height)
            blocks, doublings = float(analytic.MBV2_BOUNDS[s + 2] - analytic.MBV2_BOUNDS[s + 1]), 0.0
        else:
            counts = analytic.resnet_stage_counts(b, s, before, size)
            blocks, doublings = float(len(b.stages[s])), float(b.stages[s].count("2"))
        row = [blocks, doublings, counts[0], counts[2] * ACT_BYTES, *_counts(counts)]
        key = piece_keys.stage_key(size, b, s, before) if self._table_has_stages else NOT_IN_TABLE
        return row + self._lut([("stage", key)])

    # -------------------------------------------------------------------------------------- batches
    def piece_ids(self, archs: Sequence[Arch]) -> np.ndarray:
        """(n, 7) int array of row ids: stem, neck, head, stage1..stage4.

        Keys are tuples of plain values (hashing and comparing gene dataclasses costs more than the
        rest of the loop); the neck entry also remembers the channels the heads see.
        """
        if sum(len(t.rows) for t in self._tables.values()) > PIECE_CACHE_LIMIT:
            self._reset_caches()
        stem_t, neck_t, head_t, stage_t = (self._tables[k] for k in ("stem", "neck", "head", "stage"))
        stem_ids, head_ids, stage_ids = stem_t.ids, head_t.ids, stage_t.ids
        necks, interned = self._necks, self._interned
        out: list[tuple[int, ...]] = []
        append = out.append
        for a in archs:
            b, size, n, h = a.backbone, a.size, a.neck, a.head
            if b.kind == "mobilenetv2":
                bkey: Any = b.width_mult
                c0 = c1 = c2 = c3 = ""
                d0 = d1 = d2 = d3 = 0
            else:
                bkey = (b.kind, b.depth, b.base, b.groups, b.group_width)
                c0, c1, c2, c3 = b.stages
                d0 = c0.count("2")
                d1 = d0 + c1.count("2")
                d2 = d1 + c2.count("2")
                d3 = d2 + c3.count("2")
            # Genes hashed once per arch, as small ints (dataclass hashing runs in Python).
            sid = interned.get(size)
            if sid is None:
                sid = interned[size] = len(interned)
            sb = interned.get((sid, bkey))
            if sb is None:
                sb = interned[(sid, bkey)] = len(interned)
            nkey = (n.kind, n.min_level, n.max_level, n.channels)
            nid = interned.get(nkey)
            if nid is None:
                nid = interned[nkey] = len(interned)
            i_stem = stem_ids.get(sb)
            if i_stem is None:
                i_stem = stem_t.add(sb, self._stem_row(a))
            key: Any = (sb, d0, d1, d2, d3, nid)
            hit = necks.get(key)
            if hit is None:
                row, cin = self._neck_row(a)
                hit = necks[key] = (neck_t.add(key, row), cin)
            i_neck, cin = hit
            key = (sid, cin, nid, h.kind, h.stages, h.depth, h.width)
            i_head = head_ids.get(key)
            if i_head is None:
                i_head = head_t.add(key, self._head_row(a, cin))
            key = (sb, c0, 0, 0)
            s0 = stage_ids.get(key)
            if s0 is None:
                s0 = stage_t.add(key, self._stage_row(a, 0, 0, True))
            key = (sb, c1, d0, 1)
            s1 = stage_ids.get(key)
            if s1 is None:
                s1 = stage_t.add(key, self._stage_row(a, 1, d0, True))
            key = (sb, c2, d1, 2)
            s2 = stage_ids.get(key)
            if s2 is None:
                s2 = stage_t.add(key, self._stage_row(a, 2, d1, True))
            top = 1 if n.kind == "fpn" or n.max_level == 5 else 0  # none:C4 does not build stage 4
            key = (sb, c3, d2, 3, top)
            s3 = stage_ids.get(key)
            if s3 is None:
                s3 = stage_t.add(key, self._stage_row(a, 3, d2, bool(top)))
            append((i_stem, i_neck, i_head, s0, s1, s2, s3))
        return np.array(out, dtype=np.int64).reshape(-1, 7)

    def parse_all(self, archs: Sequence[Arch | str]) -> list[Arch]:
        """Arch objects for a batch of Archs or strings (strings parsed once, then cached)."""
        cache = self._parsed
        out: list[Arch] = []
        for a in archs:
            if isinstance(a, Arch):
                out.append(a)
                continue
            if not isinstance(a, str):
                raise ArchError(f"arch: expected an Arch or an arch string, got {type(a).__name__}")
            hit = cache.get(a)
            if hit is None:
                if len(cache) >= PARSE_CACHE_LIMIT:
                    cache.clear()
                hit = cache[a] = parse(a)
            out.append(hit)
        return out

    def transform(self, archs: Sequence[Arch | str]) -> np.ndarray:
        """Feature matrix (len(archs), num_features), float64."""
        ids = self.piece_ids(self.parse_all(archs))
        n = len(ids)
        out = np.empty((n, self.num_features))
        if n == 0:
            return out
        tables = [self._tables[k].stacked() for k in ("stem", "neck", "head")] + [self._tables["stage"].stacked()] * 4
        widths = [len(STEM_NAMES), len(NECK_NAMES), len(HEAD_NAMES)] + [len(STAGE_NAMES)] * 4
        sums = np.zeros((n, N_COUNTS + self._n_lut))  # counts, then per-kind LUT ms, missing, entries
        col = 0
        for j, (table, width) in enumerate(zip(tables, widths, strict=True)):
            rows = table[ids[:, j]]  # one gather per piece, then its own columns and its share of the sums
            out[:, col:col + width] = rows[:, :width]
            sums += rows[:, width:]
            col += width
        out[:, col:col + N_COUNTS] = sums[:, :N_COUNTS]
        col += N_COUNTS
        stage_blocks = [len(STEM_NAMES) + len(NECK_NAMES) + len(HEAD_NAMES) + s * len(STAGE_NAMES) for s in range(4)]
        out[:, col] = out[:, stage_blocks].sum(axis=1)  # blocks
        col += 1
        if self._n_lut:
            k = len(LUT_KINDS)
            lut = sums[:, N_COUNTS:]
            missing = lut[:, k]
            out[:, col:col + k] = lut[:, :k]
            out[:, col + k] = lut[:, :k].sum(axis=1)  # NaN as soon as one kind is NaN
            out[:, col + k + 1] = missing
            self.lut_missing += int(missing.sum())
            self.lut_archs_missing += int((missing > 0).sum())
        return out


__all__ = ["FAMILIES", "HEADS", "LUT_KINDS", "SCHEMA_VERSION", "FeatureConfig", "Featurizer", "feature_names"]
