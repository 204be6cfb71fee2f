"""Exported ONNX graphs kept by graph key, so a resumed run, a second backend or another run reuses them.

`OnnxCache(folder)` holds `<sha1 of key>.onnx` beside a `.json` record (the key, the file's SHA-256
and its export info). A hit is checked against the recorded hash: an altered or truncated file is
removed and exported again, and counted (`altered`) so the run can say so once. The key must name
everything the graph depends on but its weights (timings do not depend on weight values): the
graph's own key, classes, batch, precision, exporter and `GRAPH_FORMAT`, which changes whenever the
way graphs are built changes. An int8 graph is the fp32 export quantized (QDQ) by `profiling.quantize`
on seeded random calibration feeds; its key also names the scheme (u8s8 for ort-cpu, s8s8 for
tensorrt) and `QUANT_FORMAT`, so fp32 and int8 graphs of one model are cached apart.
Default folder: `$SMNAS_CACHE/onnx` (else ~/.cache/smnas_trt/onnx).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from smnas_trt.errors import ProfilingError
from smnas_trt.fileio import atomic_write_json, sha256_file
from smnas_trt.profiling.export import Exporter, ExportInfo, export_onnx
from smnas_trt.profiling.quantize import QUANT_FORMAT, Scheme, quantize_onnx, random_feeds

GRAPH_FORMAT = 2  # 2: graphs of models/graphs.py (rpn + roi with LevelRoIAlign for two-stage models)


def cache_root() -> Path:
    return Path(os.environ.get("SMNAS_CACHE") or Path.home() / ".cache" / "smnas_trt")


def default_onnx_cache() -> Path:
    return cache_root() / "onnx"


class OnnxCache:
    """Exported graphs by key; `folder=None` is a private temporary folder (nothing kept after `close`)."""

    def __init__(self, folder: str | Path | None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="smnas-onnx-")
            folder = self._tmp.name
        self.folder = Path(folder)
        self.hits = self.misses = self.altered = 0
        self._check_writable()

    def _check_writable(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".probe-"):
                pass
        except OSError as e:
            raise ProfilingError(f"ONNX cache {self.folder}: not a writable folder ({e.strerror or e}); "
                                 "pass --onnx-cache DIR or --no-onnx-cache") from None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> OnnxCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_counts(self, hits: int, misses: int, altered: int) -> None:
        """Count what another process (an export worker) found and exported in this cache's folder."""
        self.hits += hits
        self.misses += misses
        self.altered += altered

    @staticmethod
    def key(*parts: Any) -> str:
        return "|".join(str(p) for p in (f"graph{GRAPH_FORMAT}", *parts))

    def path(self, key: str) -> Path:
        return self.folder / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".onnx")

    def get(self, key: str) -> ExportInfo | None:
        """The cached export of `key`, or None (a file that no longer matches its record is dropped)."""
        path = self.path(key)
        record = path.with_suffix(".json")
        if not (path.is_file() and record.is_file()):
            return None
        try:
            meta = json.loads(record.read_text())
            info = ExportInfo(**{**meta["info"], "path": str(path), "input_names": tuple(meta["info"]["input_names"]),
                                 "input_shapes": tuple(tuple(s) for s in meta["info"]["input_shapes"]),
                                 "output_names": tuple(meta["info"]["output_names"])})
            ok = meta["key"] == key and sha256_file(path) == info.sha256
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.altered += 1
            path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            return None
        self.hits += 1
        return info

    @staticmethod
    def int8_key(key: str, scheme: Scheme) -> str:
        """The key of the int8 graph of `key` quantized with `scheme`."""
        return f"{key}|int8-{scheme}|quant{QUANT_FORMAT}"

    def export(self, key: str, module: Any, inputs: Sequence[Any], *, exporter: Exporter, precision: str,
               input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
               scheme: Scheme | None = None) -> ExportInfo:
        """`get(key)`, else export the module and record it. precision int8 needs the `scheme` (and quantizes
        the fp32 export on seeded random feeds: timing does not depend on calibration data)."""
        if precision == "int8":
            if scheme is None:
                raise ProfilingError("an int8 graph needs its quantization scheme (u8s8 or s8s8)")
            key = self.int8_key(key, scheme)
        cached = self.get(key)
        if cached is not None:
            return cached
        self.misses += 1
        path = self.path(key)
        info = export_onnx(module, tuple(inputs), path, exporter=exporter, precision=precision,
                           input_names=input_names, output_names=output_names)
        if precision == "int8":
            assert scheme is not None
            names = list(input_names) if input_names else list(info.input_names)
            quantize_onnx(path, path, random_feeds(names, tuple(inputs)), scheme)
            info = replace(info, precision="int8", sha256=sha256_file(path))
        atomic_write_json(path.with_suffix(".json"), {"key": key, "info": info.as_dict()})
        return info
