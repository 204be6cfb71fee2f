"""The latency table (LUT): one SQLite file in WAL mode.

Tables:
- `meta`: key/value; `fingerprint` (JSON of the device fingerprint the table was measured on),
  `fingerprint_key` (its short hash), `schema_version`, `created_at`, `num_classes` (of the timed
  heads), `backend_spec` (JSON, as the profile run was given it), `anchors` (JSON list of arch strings).
- `module_entries`: one row per module shape key (UNIQUE): kind, config JSON, stats, export info.
- `model_entries`: one row per (canonical arch string, scope) (UNIQUE): arch id, stats, extras JSON.
- `timing_runs`: every run that timed on this table's setup: profile runs and resumes (their
  repeat check: the median and p90 relative difference of re-timed entries; how many whole models
  they added), and later runs that measured their drift against it (search, predictor eval,
  deploy): the anchors' median ratio and its spread.
- `anchor_timings`: each timing of an anchor model (profile runs time them at their start and end);
  the median over the profile runs that timed whole models is the table's reference, what later
  runs' drift is measured against.

Every row carries the fingerprint key it was measured under. Each insert commits on its own, so
an interrupted profiling run keeps every row it finished; re-running skips keys already present
(`has`, `has_model`) and `INSERT OR IGNORE` makes a duplicate impossible even if it tried.

Readers that pass the fingerprint they expect get ForeignDeviceError (naming both devices) when the
table was measured elsewhere, unless `allow_foreign=True`. A damaged file (truncated, overwritten,
a row whose values are not what was written) raises ProfilingError naming the file, not an
sqlite3 or JSON error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import statistics
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smnas_trt.errors import ForeignDeviceError, ProfilingError
from smnas_trt.fileio import atomic_write_text
from smnas_trt.profiling.fingerprint import Fingerprint
from smnas_trt.profiling.timing import LatencyStats

SCHEMA_VERSION = 2  # 2: timing runs and anchors
SCOPES = ("network", "end2end")
STAT_COLUMNS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "n")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS module_entries (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    fingerprint_key TEXT NOT NULL,
    {", ".join(f"{c} {'INTEGER' if c == 'n' else 'REAL'} NOT NULL" for c in STAT_COLUMNS)},
    extra TEXT NOT NULL DEFAULT '{{}}',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_entries (
    id INTEGER PRIMARY KEY,
    arch TEXT NOT NULL,
    arch_id TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('network', 'end2end')),
    fingerprint_key TEXT NOT NULL,
    {", ".join(f"{c} {'INTEGER' if c == 'n' else 'REAL'} NOT NULL" for c in STAT_COLUMNS)},
    extra TEXT NOT NULL DEFAULT '{{}}',
    created_at TEXT NOT NULL,
    UNIQUE (arch, scope)
);
CREATE INDEX IF NOT EXISTS model_entries_arch_id ON model_entries (arch_id);
CREATE INDEX IF NOT EXISTS module_entries_kind ON module_entries (kind);
"""

# Added by schema 2; created in older tables when they are opened for writing.
_RUN_SCHEMA = """
CREATE TABLE IF NOT EXISTS timing_runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    passes INTEGER,
    drift REAL,
    drift_spread REAL,
    drift_anchors INTEGER,
    repeat_n INTEGER,
    repeat_median REAL,
    repeat_p90 REAL,
    note TEXT,
    models_timed INTEGER
);
CREATE TABLE IF NOT EXISTS anchor_timings (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    phase TEXT NOT NULL,
    median_ms REAL NOT NULL,
    stats TEXT NOT NULL,
    at TEXT NOT NULL
);
"""
PROFILE_RUN_KINDS = ("profile", "resume")  # runs whose anchor timings are the table's reference state


@dataclass(frozen=True, slots=True)
class TimingRun:
    """One run recorded in a table: a profile run (with its repeat check) or a drift measurement."""

    run_id: str
    kind: str
    started_at: str
    finished_at: str | None
    passes: int | None
    drift: float | None
    drift_spread: float | None
    drift_anchors: int | None
    repeat_n: int | None
    repeat_median: float | None
    repeat_p90: float | None
    note: str | None
    models_timed: int | None = None  # whole models the run added (None: a table written before this was kept)


# Columns the readers use, checked on open: a damaged schema would otherwise fail on the first row.
_COLUMNS = {
    "module_entries": {"key", "kind", "config", "fingerprint_key", *STAT_COLUMNS, "extra", "created_at"},
    "model_entries": {"arch", "arch_id", "scope", "fingerprint_key", *STAT_COLUMNS, "extra", "created_at"},
    # Schema 2 (absent from older tables, which gain them when written):
    "timing_runs": {"run_id", "kind", "started_at", "finished_at", "passes", "drift", "drift_spread", "drift_anchors",
                    "repeat_n", "repeat_median", "repeat_p90", "note"},
    "anchor_timings": {"run_id", "arch", "phase", "median_ms", "stats", "at"},
}


@dataclass(frozen=True, slots=True)
class ModuleRecord:
    """One module entry: `key` is the shape key (module config + input shape), `config` its JSON fields."""

    key: str
    kind: str
    config: dict[str, Any]
    stats: LatencyStats
    fingerprint_key: str
    created_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return self.stats.median_ms


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One whole-model entry: canonical arch string, its id, scope (`network`/`end2end`) and stats."""

    arch: str
    arch_id: str
    scope: str
    stats: LatencyStats
    fingerprint_key: str
    created_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return self.stats.median_ms


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ProfilingError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    return scope


def _damaged(path: Path, what: str) -> ProfilingError:
    return ProfilingError(f"{path}: damaged latency table ({what}); re-profile it or restore a copy")


def _first_line(e: BaseException) -> str:
    """SQLite messages can quote a whole multi-line schema statement: keep the start of the first line."""
    lines = str(e).splitlines()
    return lines[0][:120] if lines else type(e).__name__


_NO_ROOM = ("disk I/O error", "database or disk is full")


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """sqlite3 errors of a read or write as one ProfilingError naming the file."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if str(e) in _NO_ROOM:  # a full disk or a file size limit is not a damaged table: say so, keep the rows
            raise ProfilingError(f"{path}: cannot write the latency table ({e}: disk full or file size limit?); "
                                 f"the rows already there are kept") from None
        raise _damaged(path, _first_line(e)) from None
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # text that is not UTF-8: damaged too
        raise _damaged(path, _first_line(e)) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def canonical_arch(arch: Any) -> tuple[str, str]:
    """(canonical string, id) of an Arch or an arch string; bad strings raise ArchError."""
    from smnas_trt.space import parse

    parsed = parse(arch) if isinstance(arch, str) else arch
    return str(parsed), str(parsed.id)


class LatencyTable:
    """A LUT file. Open with `LatencyTable.create(...)` to write or `LatencyTable.open(...)` to read."""

    def __init__(self, path: Path, conn: sqlite3.Connection, fingerprint: Fingerprint, readonly: bool) -> None:
        self.path = path
        self._conn = conn
        self.fingerprint = fingerprint
        self.readonly = readonly

    # ------------------------------------------------------------------------------------------ opening
    @staticmethod
    def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
        # Quoted: a '?' or '#' in the path would otherwise end the file name inside the URI.
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True) if readonly else sqlite3.connect(path)
        except sqlite3.DatabaseError as e:
            raise ProfilingError(f"{path}: not a readable latency table ({_first_line(e)})") from None
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            # Touch the schema: a non-SQLite file fails here, not at the first query.
            conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # text that is not UTF-8: damaged too
            conn.close()
            raise ProfilingError(f"{path}: not a readable latency table ({_first_line(e)})") from None
        return conn

    @staticmethod
    def _read_fingerprint(path: Path, conn: sqlite3.Connection) -> Fingerprint | None:
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return None
            if not {"meta", "module_entries", "model_entries"} <= tables:
                raise ProfilingError(f"{path}: an SQLite file but not a latency table (tables: {sorted(tables)})")
            row = conn.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            for table, expected in _COLUMNS.items():
                if table not in tables:
                    continue
                found = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if not expected <= found:
                    raise _damaged(path, f"{table} lacks columns {sorted(expected - found)}")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # text that is not UTF-8: damaged too
            raise ProfilingError(f"{path}: not a readable latency table ({_first_line(e)})") from None
        if row is None:
            raise ProfilingError(f"{path}: latency table has no fingerprint in its meta table")
        if version is not None and not (isinstance(version[0], str) and version[0].isdigit()):
            raise _damaged(path, f"schema version {str(version[0])[:20]!r}")
        if version is not None and int(version[0]) > SCHEMA_VERSION:
            raise ProfilingError(f"{path}: table schema {version[0]} is newer than this smnas ({SCHEMA_VERSION})")
        if not isinstance(row[0], str):
            raise _damaged(path, "the fingerprint is not text")
        try:
            return Fingerprint.from_json(row[0])
        except ProfilingError as e:
            raise ProfilingError(f"{path}: {e}") from None

    @staticmethod
    def _check_device(path: Path, found: Fingerprint, expected: Fingerprint | None, allow_foreign: bool) -> None:
        if expected is None or allow_foreign or found.key == expected.key:
            return
        raise ForeignDeviceError(
            f"{path} was measured on {found.describe()}, not on this setup {expected.describe()}; "
            "re-profile here or pass --allow-foreign-device"
        )

    @classmethod
    def create(cls, path: str | Path, fingerprint: Fingerprint, *, allow_foreign: bool = False) -> LatencyTable:
        """Open `path` for writing, creating it if missing. An existing table must share `fingerprint`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path, readonly=False)
        try:
            found = cls._read_fingerprint(path, conn)
        except ProfilingError:
            conn.close()
            raise
        # WAL only once the file is known to be ours (or new): never switch someone else's database.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if found is None:
            with conn:
                conn.executescript(_SCHEMA + _RUN_SCHEMA)
                conn.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("fingerprint", fingerprint.to_json()),
                        ("fingerprint_key", fingerprint.key),
                        ("created_at", _now()),
                    ],
                )
            found = fingerprint
        else:
            with conn:  # an older table gains the run and anchor tables (nothing else changes)
                conn.executescript(_RUN_SCHEMA)
                if "models_timed" not in {r[1] for r in conn.execute("PRAGMA table_info(timing_runs)")}:
                    conn.execute("ALTER TABLE timing_runs ADD COLUMN models_timed INTEGER")
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            try:
                cls._check_device(path, found, fingerprint, allow_foreign)
            except ForeignDeviceError:
                conn.close()
                raise
        table = cls(path, conn, found, readonly=False)
        table._row_fingerprint = fingerprint.key
        return table

    @classmethod
    def open(
        cls, path: str | Path, fingerprint: Fingerprint | None = None, *, allow_foreign: bool = False
    ) -> LatencyTable:
        """Open an existing table read-only. With `fingerprint`, refuse a table measured on another setup."""
        path = Path(path)
        if not path.is_file():
            raise ProfilingError(f"latency table not found: {path}")
        conn = cls._connect(path, readonly=True)
        try:
            found = cls._read_fingerprint(path, conn)
            if found is None:
                raise ProfilingError(f"{path}: an empty SQLite file, not a latency table")
            cls._check_device(path, found, fingerprint, allow_foreign)
        except ProfilingError:
            conn.close()
            raise
        return cls(path, conn, found, readonly=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ writing
    _row_fingerprint: str = ""

    def _insert(self, sql: str, values: tuple[Any, ...]) -> bool:
        if self.readonly:
            raise ProfilingError(f"{self.path}: opened read-only; use LatencyTable.create to write")
        with _sqlite_errors(self.path), self._conn:  # one transaction per row: an interrupted run keeps it
            cur = self._conn.execute(sql, values)
        return cur.rowcount == 1

    def put_module(
        self, key: str, kind: str, config: dict[str, Any], stats: LatencyStats, extra: dict[str, Any] | None = None
    ) -> bool:
        """Add a module entry; returns False (and changes nothing) when `key` is already there."""
        stat_values = tuple(getattr(stats, c) for c in STAT_COLUMNS)
        return self._insert(
            f"INSERT OR IGNORE INTO module_entries (key, kind, config, fingerprint_key, {', '.join(STAT_COLUMNS)}, "
            f"extra, created_at) VALUES (?, ?, ?, ?, {', '.join('?' * len(STAT_COLUMNS))}, ?, ?)",
            (
                key,
                kind,
                json.dumps(config, sort_keys=True),
                self._row_fingerprint or self.fingerprint.key,
                *stat_values,
                json.dumps(extra or {}, sort_keys=True),
                _now(),
            ),
        )

    def put_model(self, arch: Any, scope: str, stats: LatencyStats, extra: dict[str, Any] | None = None) -> bool:
        """Add a whole-model entry for an Arch or arch string; False when (arch, scope) is already there."""
        canonical, aid = canonical_arch(arch)
        stat_values = tuple(getattr(stats, c) for c in STAT_COLUMNS)
        return self._insert(
            f"INSERT OR IGNORE INTO model_entries (arch, arch_id, scope, fingerprint_key, {', '.join(STAT_COLUMNS)}, "
            f"extra, created_at) VALUES (?, ?, ?, ?, {', '.join('?' * len(STAT_COLUMNS))}, ?, ?)",
            (
                canonical,
                aid,
                _check_scope(scope),
                self._row_fingerprint or self.fingerprint.key,
                *stat_values,
                json.dumps(extra or {}, sort_keys=True),
                _now(),
            ),
        )

    # ------------------------------------------------------------------------------------------ meta
    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, **values: str) -> None:
        if self.readonly:
            raise ProfilingError(f"{self.path}: opened read-only; use LatencyTable.create to write")
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items())

    def meta_json(self, key: str, default: Any = None) -> Any:
        text = self.meta(key)
        if text is None:
            return default
        try:
            return json.loads(text)
        except ValueError:
            raise ProfilingError(f"{self.path}: meta {key} is not valid JSON; the table is damaged") from None

    @property
    def num_classes(self) -> int:
        """Classes (background included) the table's heads were timed with (81 for tables that predate it)."""
        return int(self.meta("num_classes") or 81)

    def anchors(self) -> list[str]:
        """The table's anchor models (empty for tables made before anchors existed)."""
        return list(self.meta_json("anchors", []))

    # ------------------------------------------------------------------------------------------ runs
    def _has_runs(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='timing_runs'").fetchone()
        return row is not None

    def start_run(self, run_id: str, kind: str, passes: int | None = None, note: str | None = None) -> None:
        if self.readonly:
            raise ProfilingError(f"{self.path}: opened read-only; use LatencyTable.create to write")
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO timing_runs (run_id, kind, started_at, passes, note) "
                               "VALUES (?, ?, ?, ?, ?)", (run_id, kind, _now(), passes, note))

    def finish_run(self, run_id: str, **values: Any) -> None:
        allowed = {"drift", "drift_spread", "drift_anchors", "repeat_n", "repeat_median", "repeat_p90", "note",
                   "models_timed"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"unknown timing-run fields {sorted(unknown)}")
        sets = "".join(f", {k} = ?" for k in values)
        with self._conn:
            self._conn.execute(f"UPDATE timing_runs SET finished_at = ?{sets} WHERE run_id = ?",
                               (_now(), *values.values(), run_id))

    def runs(self) -> list[TimingRun]:
        if not self._has_runs():
            return []
        return [TimingRun(**dict(r)) for r in self._rows("SELECT * FROM timing_runs ORDER BY started_at, rowid")]

    def put_anchor_timing(self, run_id: str, arch: str, phase: str, stats: LatencyStats) -> None:
        self._insert("INSERT INTO anchor_timings (run_id, arch, phase, median_ms, stats, at) VALUES (?, ?, ?, ?, ?, ?)",
                     (run_id, arch, phase, stats.median_ms,
                      json.dumps({c: getattr(stats, c) for c in STAT_COLUMNS}), _now()))

    def anchor_reference(self) -> dict[str, float]:
        """Per anchor, the median of its timings in the table's own profile runs that timed whole models: the
        machine state of the rows a predictor is fitted on. A run that added only module pieces (`--resume
        --modules`) does not move it. Where no run that timed models timed anchors (anchors added later with
        `--resume --anchors`, or a table of pieces only), all its profile runs count."""
        if not self._has_runs():
            return {}
        profile_runs = [r for r in self.runs() if r.kind in PROFILE_RUN_KINDS]
        model_runs = [r.run_id for r in profile_runs if r.models_timed is None or r.models_timed > 0]
        rows: list[Any] = []
        for runs in (model_runs, [r.run_id for r in profile_runs]):
            rows = self._conn.execute(
                f"SELECT arch, median_ms FROM anchor_timings WHERE run_id IN ({', '.join('?' * len(runs))})",
                runs).fetchall()
            if rows:
                break
        by_arch: dict[str, list[float]] = {}
        for arch, ms in rows:
            by_arch.setdefault(arch, []).append(float(ms))
        return {arch: statistics.median(v) for arch, v in by_arch.items()}

    def repeat_check(self) -> TimingRun | None:
        """The latest profile run that re-timed a sample of its entries."""
        checked = [r for r in self.runs() if r.kind in PROFILE_RUN_KINDS and r.repeat_median is not None]
        return checked[-1] if checked else None

    # ------------------------------------------------------------------------------------------ reading
    def has(self, key: str) -> bool:
        """Whether a module entry with this shape key exists."""
        return bool(self._rows("SELECT 1 FROM module_entries WHERE key=?", (key,)))

    def has_model(self, arch: Any, scope: str = "network") -> bool:
        canonical, _ = canonical_arch(arch)
        sql = "SELECT 1 FROM model_entries WHERE arch=? AND scope=?"
        return bool(self._rows(sql, (canonical, _check_scope(scope))))

    def _stats(self, row: sqlite3.Row) -> LatencyStats:
        values = {c: row[c] for c in STAT_COLUMNS}
        for name, value in values.items():
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) if name == "n" else (
                _is_number(value) and value >= 0)
            if not ok:
                raise _damaged(self.path, f"{name} {str(value)[:20]!r} in a row")
        f = {c: float(v) for c, v in values.items() if c != "n"}
        return LatencyStats(median_ms=f["median_ms"], p10_ms=f["p10_ms"], p90_ms=f["p90_ms"], mean_ms=f["mean_ms"],
                            std_ms=f["std_ms"], min_ms=f["min_ms"], max_ms=f["max_ms"], n=int(values["n"]))

    def _text(self, row: sqlite3.Row, column: str) -> str:
        value = row[column]
        if not isinstance(value, str):
            raise _damaged(self.path, f"{column} of a row is not text")
        return value

    def _json(self, row: sqlite3.Row, column: str) -> dict[str, Any]:
        try:
            value = json.loads(self._text(row, column))
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise _damaged(self.path, f"{column} of a row is not a JSON object")
        return value

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with _sqlite_errors(self.path):
            cur = self._conn.cursor()
            cur.row_factory = sqlite3.Row
            return cur.execute(sql, params).fetchall()

    def module(self, key: str) -> ModuleRecord | None:
        rows = self._rows("SELECT * FROM module_entries WHERE key=?", (key,))
        return self._module_record(rows[0]) if rows else None

    def model(self, arch: Any, scope: str = "network") -> ModelRecord | None:
        canonical, _ = canonical_arch(arch)
        rows = self._rows("SELECT * FROM model_entries WHERE arch=? AND scope=?", (canonical, scope))
        return self._model_record(rows[0]) if rows else None

    def _module_record(self, row: sqlite3.Row) -> ModuleRecord:
        return ModuleRecord(
            key=self._text(row, "key"),
            kind=self._text(row, "kind"),
            config=self._json(row, "config"),
            stats=self._stats(row),
            fingerprint_key=self._text(row, "fingerprint_key"),
            created_at=self._text(row, "created_at"),
            extra=self._json(row, "extra"),
        )

    def _model_record(self, row: sqlite3.Row) -> ModelRecord:
        scope = self._text(row, "scope")
        if scope not in SCOPES:
            raise _damaged(self.path, f"scope {scope[:20]!r} in a row")
        return ModelRecord(
            arch=self._text(row, "arch"),
            arch_id=self._text(row, "arch_id"),
            scope=scope,
            stats=self._stats(row),
            fingerprint_key=self._text(row, "fingerprint_key"),
            created_at=self._text(row, "created_at"),
            extra=self._json(row, "extra"),
        )

    def module_rows(self, kind: str | None = None) -> list[ModuleRecord]:
        """All module entries (optionally one kind), in insertion order."""
        if kind is None:
            return [self._module_record(r) for r in self._rows("SELECT * FROM module_entries ORDER BY id")]
        rows = self._rows("SELECT * FROM module_entries WHERE kind=? ORDER BY id", (kind,))
        return [self._module_record(r) for r in rows]

    def model_rows(self, scope: str | None = None) -> list[ModelRecord]:
        """All whole-model entries (optionally one scope), in insertion order: the predictor's training set."""
        if scope is None:
            return [self._model_record(r) for r in self._rows("SELECT * FROM model_entries ORDER BY id")]
        rows = self._rows("SELECT * FROM model_entries WHERE scope=? ORDER BY id", (_check_scope(scope),))
        return [self._model_record(r) for r in rows]

    def module_latencies(self) -> dict[str, float]:
        """Shape key -> median ms, for LUT-sum features."""
        out = {}
        for row in self._rows("SELECT key, median_ms FROM module_entries"):
            median = row["median_ms"]
            if not (_is_number(median) and median >= 0):
                raise _damaged(self.path, f"median_ms {str(median)[:20]!r} in a row")
            out[self._text(row, "key")] = float(median)
        return out

    def counts(self) -> dict[str, int]:
        return {
            "modules": self._rows("SELECT COUNT(*) FROM module_entries")[0][0],
            "models": self._rows("SELECT COUNT(*) FROM model_entries")[0][0],
        }

    def summary(self) -> dict[str, Any]:
        """Fingerprint, counts and median-latency ranges by module kind and by model scope."""

        def groups(records: list[ModuleRecord] | list[ModelRecord], name: str) -> dict[str, dict[str, float | int]]:
            # From the checked records, not SQL aggregates: a damaged row is refused, not averaged in.
            by: dict[str, list[float]] = {}
            for r in records:
                by.setdefault(getattr(r, name), []).append(r.median_ms)
            return {k: {"count": len(v), "min_ms": min(v), "max_ms": max(v), "mean_ms": sum(v) / len(v)}
                    for k, v in sorted(by.items())}

        modules, models = self.module_rows(), self.model_rows()
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint.to_dict(),
            "device": self.fingerprint.describe(),
            "counts": {"modules": len(modules), "models": len(models)},
            "modules_by_kind": groups(modules, "kind"),
            "models_by_scope": groups(models, "scope"),
        }

    def export_csv(self, out: str | Path) -> int:
        """Write every row (modules then models) to one CSV; returns the number of rows written."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["entry", "key", "kind_or_scope", "arch_id", *STAT_COLUMNS, "fingerprint_key", "config"])
        n = 0
        for m in self.module_rows():
            writer.writerow(
                ["module", m.key, m.kind, "", *(getattr(m.stats, c) for c in STAT_COLUMNS), m.fingerprint_key,
                 json.dumps(m.config, sort_keys=True)]
            )  # fmt: skip
            n += 1
        for r in self.model_rows():
            writer.writerow(
                ["model", r.arch, r.scope, r.arch_id, *(getattr(r.stats, c) for c in STAT_COLUMNS),
                 r.fingerprint_key, json.dumps(r.extra, sort_keys=True)]
            )  # fmt: skip
            n += 1
        atomic_write_text(out, buf.getvalue())
        return n




def read_model_records(
    path: str | Path, fingerprint: Fingerprint | None = None, *, scope: str | None = None, allow_foreign: bool = False
) -> list[ModelRecord]:
    """Whole-model rows of a table, for training the latency predictor."""
    with LatencyTable.open(path, fingerprint, allow_foreign=allow_foreign) as table:
        return table.model_rows(scope)

