"""The run store: one SQLite file (WAL) per run directory holding every candidate the search saw.

Tables (the public contract other tools read; see `SCHEMA`):

- `meta(key, value)`: `schema_version`, `config_digest`, `created_at`, `smnas_version`.
- `generations`: one row per generation: stage, status (`planned` -> `done`), counts of what the
  gate screened, front size, hypervolume, predictor error on that generation's candidates.
- `screened`: every child the gate looked at (in proposal order), with its prediction and the decision
  (`kept`, `over_budget`, `duplicate`, `not_selected`) and, for kept ones, the rank.
- `candidates`: every architecture chosen for measurement/training. `status` moves
  `planned` -> `timed` -> `training` -> (`waiting` -> `promoted` -> `training` -> ... per rung of
  successive halving) -> `trained` -> `done`; `over_budget` (measured over the budget before training,
  never trained), `stopped` (not promoted after a rung) and `failed` are final. `rung` is the last rung
  it completed, and `ap`/`ap50`/`epochs`/`train_seconds`/`cpu_seconds` are as of that rung. `on_front`
  is 1 for the current Pareto front (measured latency vs AP among `done` candidates within the budget,
  all of them trained to the top rung).
- `rungs`: one row per (candidate, rung) it completed: epochs reached, AP, AP50, times, and the
  promotion decision taken on it (`promoted`, `stopped`, or `top` for the top rung).
- `drifts`: every drift measurement of the run (at each generation's start, and before timing trained
  candidates): the anchors' median ratio against the run's latency table and its spread.
- `references`: reference detectors trained with the same recipe (written by bench/vs_reference.py).

Writes happen in short transactions from one process (the search driver), so a SIGKILL at any point
leaves the file consistent; a candidate found in `training` on resume is simply trained again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from smnas_trt.errors import SearchError

SCHEMA_VERSION = 2  # 2: successive-halving rungs

STATUSES = ("planned", "timed", "training", "waiting", "promoted", "trained", "done", "over_budget", "stopped",
            "failed")
DECISIONS = ("promoted", "stopped", "top")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    seed INTEGER NOT NULL,
    n_screened INTEGER NOT NULL DEFAULT 0,
    n_over_budget INTEGER NOT NULL DEFAULT 0,
    n_duplicate INTEGER NOT NULL DEFAULT 0,
    n_kept INTEGER NOT NULL DEFAULT 0,
    n_trained INTEGER,
    front_size INTEGER,
    hypervolume REAL,
    predictor_mape REAL,
    predictor_path TEXT,
    planned_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS screened (
    generation INTEGER NOT NULL,
    position INTEGER NOT NULL,
    arch_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    parent_id TEXT,
    predicted_ms REAL,
    uncertainty_ms REAL,
    decision TEXT NOT NULL,
    rank INTEGER,
    PRIMARY KEY (generation, position)
);
CREATE TABLE IF NOT EXISTS candidates (
    arch_id TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    stage TEXT NOT NULL,
    generation INTEGER NOT NULL,
    parent_id TEXT,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    predicted_ms REAL,
    uncertainty_ms REAL,
    measured_ms REAL,
    latency_json TEXT,
    ap REAL,
    ap50 REAL,
    metrics_json TEXT,
    train_seconds REAL,
    cpu_seconds REAL,
    epochs INTEGER,
    rung INTEGER,
    checkpoint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    error TEXT,
    on_front INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS candidates_by_generation ON candidates (generation, seq);
CREATE TABLE IF NOT EXISTS rungs (
    arch_id TEXT NOT NULL,
    rung INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    ap REAL,
    ap50 REAL,
    metrics_json TEXT,
    train_seconds REAL,
    cpu_seconds REAL,
    decision TEXT,
    finished_at REAL NOT NULL,
    PRIMARY KEY (arch_id, rung)
);
CREATE TABLE IF NOT EXISTS drifts (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    phase TEXT NOT NULL,
    ratio REAL NOT NULL,
    spread REAL NOT NULL,
    anchors INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS references_ (
    name TEXT PRIMARY KEY,
    arch_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    status TEXT NOT NULL,
    measured_ms REAL,
    ap REAL,
    ap50 REAL,
    metrics_json TEXT,
    train_seconds REAL,
    epochs INTEGER,
    checkpoint TEXT,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Candidate:
    arch_id: str
    arch: str
    stage: str
    generation: int
    parent_id: str | None
    seq: int
    status: str
    predicted_ms: float | None
    uncertainty_ms: float | None
    measured_ms: float | None
    latency_json: str | None
    ap: float | None
    ap50: float | None
    metrics_json: str | None
    train_seconds: float | None
    cpu_seconds: float | None
    epochs: int | None
    rung: int | None  # last rung completed (None: not trained yet)
    checkpoint: str | None
    attempts: int
    worker: str | None  # host:pid that trained it
    error: str | None
    on_front: int
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def point(self) -> tuple[float, float]:
        """(measured latency, AP): the coordinates on the Pareto plot."""
        assert self.measured_ms is not None and self.ap is not None
        return (self.measured_ms, self.ap)


@dataclass(frozen=True)
class RungResult:
    """A candidate's results at one rung of successive halving."""

    arch_id: str
    rung: int
    epochs: int
    ap: float | None
    ap50: float | None
    metrics_json: str | None
    train_seconds: float | None
    cpu_seconds: float | None
    decision: str | None  # promoted | stopped | top (None until the rung's promotion is decided)
    finished_at: float


@dataclass(frozen=True)
class Screened:
    generation: int
    position: int  # order in which the child was proposed
    arch_id: str
    arch: str
    parent_id: str | None
    predicted_ms: float | None
    uncertainty_ms: float | None
    decision: str
    rank: int | None


@dataclass(frozen=True)
class Generation:
    generation: int
    stage: str
    status: str
    seed: int
    n_screened: int
    n_over_budget: int
    n_duplicate: int
    n_kept: int
    n_trained: int | None
    front_size: int | None
    hypervolume: float | None
    predictor_mape: float | None
    predictor_path: str | None
    planned_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class Reference:
    name: str
    arch_id: str
    arch: str
    status: str
    measured_ms: float | None
    ap: float | None
    ap50: float | None
    metrics_json: str | None
    train_seconds: float | None
    epochs: int | None
    checkpoint: str | None
    created_at: float


_CANDIDATE_COLUMNS = [f.name for f in fields(Candidate)]


class RunStore:
    """SQLite run store. Open it with `RunStore(path)`; it creates the schema when new."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise SearchError(f"run store: no such file {str(self.path)!r}")
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
                if self.meta("schema_version") is None:
                    self.set_meta(schema_version=str(SCHEMA_VERSION), created_at=str(time.time()))
            version = self.meta("schema_version")
        except sqlite3.DatabaseError as e:
            raise SearchError(f"run store {str(self.path)!r}: not a readable SQLite run store ({e})") from None
        if version is not None and int(version) != SCHEMA_VERSION:
            raise SearchError(f"run store {str(self.path)!r}: schema version {version}, this smnas reads "
                              f"{SCHEMA_VERSION}; start a new run directory (older runs cannot be resumed)")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, **values: str) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items())

    # ------------------------------------------------------------------ generations
    def generation(self, g: int) -> Generation | None:
        row = self.db.execute("SELECT * FROM generations WHERE generation = ?", (g,)).fetchone()
        return None if row is None else Generation(**dict(row))

    def generations(self) -> list[Generation]:
        return [Generation(**dict(r)) for r in self.db.execute("SELECT * FROM generations ORDER BY generation")]

    def plan_generation(self, g: int, stage: str, seed: int, screened: Iterable[Screened]) -> None:
        """Record the gate's decisions for generation g in one transaction (all or nothing)."""
        rows = list(screened)
        count = {d: sum(1 for s in rows if s.decision == d) for d in ("over_budget", "duplicate", "kept")}
        with self.transaction() as db:
            db.execute("DELETE FROM screened WHERE generation = ?", (g,))
            db.executemany(
                "INSERT INTO screened VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.generation, s.position, s.arch_id, s.arch, s.parent_id, s.predicted_ms, s.uncertainty_ms,
                  s.decision, s.rank) for s in rows])
            db.execute(
                "INSERT OR REPLACE INTO generations (generation, stage, status, seed, n_screened, n_over_budget, "
                "n_duplicate, n_kept, planned_at) VALUES (?, ?, 'planned', ?, ?, ?, ?, ?, ?)",
                (g, stage, seed, len(rows), count["over_budget"], count["duplicate"], count["kept"], time.time()))

    def screened(self, g: int | None = None, decision: str | None = None) -> list[Screened]:
        sql, args = "SELECT * FROM screened WHERE 1=1", list[Any]()
        if g is not None:
            sql += " AND generation = ?"
            args.append(g)
        if decision is not None:
            sql += " AND decision = ?"
            args.append(decision)
        sql += " ORDER BY generation, rank IS NULL, rank, position"
        return [Screened(**dict(r)) for r in self.db.execute(sql, args)]

    def finish_generation(self, g: int, **stats: Any) -> None:
        allowed = {"n_trained", "front_size", "hypervolume", "predictor_mape", "predictor_path"}
        unknown = set(stats) - allowed
        if unknown:
            raise ValueError(f"unknown generation fields {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in stats)
        with self.transaction() as db:
            db.execute(f"UPDATE generations SET status = 'done', finished_at = ?{', ' if sets else ''}{sets} "
                       "WHERE generation = ?", (time.time(), *stats.values(), g))

    # ------------------------------------------------------------------ candidates
    def add_candidate(self, arch_id: str, arch: str, stage: str, generation: int, parent_id: str | None,
                      predicted_ms: float | None, uncertainty_ms: float | None) -> Candidate:
        with self.transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM candidates").fetchone()[0]
            try:
                db.execute(
                    "INSERT INTO candidates (arch_id, arch, stage, generation, parent_id, seq, status, predicted_ms, "
                    "uncertainty_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?)",
                    (arch_id, arch, stage, generation, parent_id, seq, predicted_ms, uncertainty_ms, time.time()))
            except sqlite3.IntegrityError:
                raise SearchError(f"run store: candidate {arch_id} ({arch}) is already in the run") from None
        cand = self.candidate(arch_id)
        assert cand is not None
        return cand

    def update(self, arch_id: str, **values: Any) -> None:
        """Set columns of one candidate in one transaction (status and its results together)."""
        unknown = set(values) - set(_CANDIDATE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown candidate columns {sorted(unknown)}")
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"unknown status {values['status']!r}")
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as db:
            cur = db.execute(f"UPDATE candidates SET {sets} WHERE arch_id = ?", (*values.values(), arch_id))
            if cur.rowcount != 1:
                raise SearchError(f"run store: no candidate {arch_id}")

    def start_training(self, arch_id: str) -> None:
        """Mark a candidate as in training (and count the attempt) before any work starts."""
        with self.transaction() as db:
            db.execute("UPDATE candidates SET status = 'training', attempts = attempts + 1, started_at = ? "
                       "WHERE arch_id = ?", (time.time(), arch_id))

    def candidate(self, arch_id: str) -> Candidate | None:
        row = self.db.execute("SELECT * FROM candidates WHERE arch_id = ?", (arch_id,)).fetchone()
        return None if row is None else Candidate(**dict(row))

    def candidates(self, generation: int | None = None, status: str | Iterable[str] | None = None,
                   stage: str | None = None) -> list[Candidate]:
        sql, args = "SELECT * FROM candidates WHERE 1=1", list[Any]()
        if generation is not None:
            sql += " AND generation = ?"
            args.append(generation)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args += statuses
        if stage is not None:
            sql += " AND stage = ?"
            args.append(stage)
        return [Candidate(**dict(r)) for r in self.db.execute(sql + " ORDER BY seq", args)]

    def known_arch_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT arch_id FROM candidates")}

    def set_front(self, arch_ids: Iterable[str]) -> None:
        ids = list(arch_ids)
        with self.transaction() as db:
            db.execute("UPDATE candidates SET on_front = 0 WHERE on_front != 0")
            db.executemany("UPDATE candidates SET on_front = 1 WHERE arch_id = ?", [(i,) for i in ids])

    def front(self) -> list[Candidate]:
        """The recorded Pareto front, fastest first."""
        return [Candidate(**dict(r)) for r in
                self.db.execute("SELECT * FROM candidates WHERE on_front = 1 ORDER BY measured_ms, ap DESC")]

    # ------------------------------------------------------------------ rungs
    def finish_rung(self, arch_id: str, rung: int, status: str, **values: Any) -> None:
        """Record a candidate's finished rung and move it to `status`, in one transaction."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO rungs (arch_id, rung, epochs, ap, ap50, metrics_json, train_seconds, "
                       "cpu_seconds, decision, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                       (arch_id, rung, values["epochs"], values.get("ap"), values.get("ap50"),
                        values.get("metrics_json"), values.get("rung_train_seconds"), values.get("rung_cpu_seconds"),
                        now))
            cols = {k: v for k, v in values.items() if k in _CANDIDATE_COLUMNS}
            sets = ", ".join(f"{k} = ?" for k in cols)
            db.execute(f"UPDATE candidates SET status = ?, rung = ?, finished_at = ?{', ' if sets else ''}{sets} "
                       "WHERE arch_id = ?", (status, rung, now, *cols.values(), arch_id))

    def decide_rung(self, rung: int, decisions: dict[str, str]) -> None:
        """Promotion after `rung`: {arch_id: promoted | stopped | top}; candidate statuses follow, atomically."""
        status_of = {"promoted": "promoted", "stopped": "stopped"}
        with self.transaction() as db:
            for arch_id, decision in decisions.items():
                if decision not in DECISIONS:
                    raise ValueError(f"unknown rung decision {decision!r}")
                db.execute("UPDATE rungs SET decision = ? WHERE arch_id = ? AND rung = ?", (decision, arch_id, rung))
                if decision in status_of:
                    db.execute("UPDATE candidates SET status = ? WHERE arch_id = ?", (status_of[decision], arch_id))

    def rung_results(self, arch_id: str | None = None) -> list[RungResult]:
        sql, args = "SELECT * FROM rungs", list[Any]()
        if arch_id is not None:
            sql += " WHERE arch_id = ?"
            args.append(arch_id)
        return [RungResult(**dict(r)) for r in self.db.execute(sql + " ORDER BY arch_id, rung", args)]

    def train_cpu_seconds(self) -> float:
        """CPU-seconds every training of the run has used so far (finished rungs)."""
        return float(self.db.execute("SELECT COALESCE(SUM(cpu_seconds), 0) FROM rungs").fetchone()[0])

    # ------------------------------------------------------------------ drift
    def add_drift(self, generation: int, phase: str, ratio: float, spread: float, anchors: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO drifts (generation, phase, ratio, spread, anchors, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (generation, phase, ratio, spread, anchors, time.time()))

    def drifts(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM drifts ORDER BY id")]

    # ------------------------------------------------------------------ references
    def put_reference(self, name: str, arch_id: str, arch: str, status: str, **values: Any) -> None:
        cols = ["name", "arch_id", "arch", "status", "created_at", *values]
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO references_ ({', '.join(cols)}) VALUES "
                       f"({', '.join('?' * len(cols))})", (name, arch_id, arch, status, time.time(), *values.values()))

    def references(self) -> list[Reference]:
        return [Reference(**dict(r)) for r in self.db.execute("SELECT * FROM references_ ORDER BY name")]
