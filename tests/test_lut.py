"""The latency table on real SQLite: write, reopen, resume, refuse foreign or corrupt files, CLI."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smnas_trt.cli import app
from smnas_trt.errors import ArchError, ForeignDeviceError, ProfilingError
from smnas_trt.profiling.fingerprint import Fingerprint, cpu_fingerprint
from smnas_trt.profiling.lut import LatencyTable, ModelRecord, read_model_records
from smnas_trt.profiling.timing import summarize

ARCHS = [
    "128x128/mbv2_0.35/fpn:P3-P6:32/rpn/cascade2:128",
    "160x160/r34_24_1211111-2-11-2/fpn:P2-P5:96/none/retina:2x64",
    "128x128/r50_32_2-1211-1-2/fpn:P3-P6:32/none/retina:3x48",
]


def fp(threads: int = 1, **kw) -> Fingerprint:
    return cpu_fingerprint("ort-cpu", "1.32.0", threads=threads, **kw)


def stats(ms: float):
    return summarize([ms * 0.9, ms, ms * 1.1])


def fill(table: LatencyTable) -> None:
    for i, kind in enumerate(["stem", "stage", "stage"]):
        table.put_module(f"{kind}:{i}:c16:128x128", kind, {"in": [1, 16, 128, 128], "i": i}, stats(1.0 + i))
    for i, arch in enumerate(ARCHS):
        table.put_model(arch, "network", stats(5.0 + i), extra={"flops": 1e9 * (i + 1)})
    table.put_model(ARCHS[0], "end2end", stats(9.0))


def test_write_reopen_resume_no_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp()) as table:
        fill(table)
        assert table._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with LatencyTable.open(path, fp()) as table:
        assert table.counts() == {"modules": 3, "models": 4}
        assert table.fingerprint == fp()
        assert table.has("stem:0:c16:128x128") and not table.has("stem:9")
        assert table.has_model(ARCHS[1]) and not table.has_model(ARCHS[1], "end2end")
        rec = table.model(ARCHS[2])
        assert rec is not None and rec.median_ms == pytest.approx(7.0) and rec.extra == {"flops": 3e9}
        mod = table.module("stage:2:c16:128x128")
        assert mod is not None and mod.config == {"in": [1, 16, 128, 128], "i": 2} and mod.stats.n == 3
        with pytest.raises(ProfilingError, match="read-only"):
            table.put_module("x", "stem", {}, stats(1.0))
    # Resume: a second writer sees existing keys and cannot add duplicates even if it tries.
    with LatencyTable.create(path, fp()) as table:
        assert table.put_module("stem:0:c16:128x128", "stem", {}, stats(99.0)) is False
        assert table.put_model(ARCHS[0], "network", stats(99.0)) is False
        assert table.put_model(ARCHS[0], "end2end", stats(99.0)) is False
        assert table.put_module("neck:new", "neck", {}, stats(2.0)) is True
    with LatencyTable.open(path) as table:
        assert table.counts() == {"modules": 4, "models": 4}
        assert table.model(ARCHS[0]).median_ms == pytest.approx(5.0)  # the first measurement stays
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself forbids duplicates
        raw.execute("INSERT INTO model_entries SELECT * FROM model_entries WHERE id=1 LIMIT 1")
    dup = raw.execute("SELECT COUNT(*) - COUNT(DISTINCT arch || scope) FROM model_entries").fetchone()[0]
    assert dup == 0
    raw.close()


def test_records_for_the_predictor(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp()) as table:
        fill(table)
    models = read_model_records(path, fp(), scope="network")
    assert [m.arch for m in models] == ARCHS
    assert all(isinstance(m, ModelRecord) and len(m.arch_id) == 10 and m.fingerprint_key == fp().key for m in models)
    assert [m.stats.median_ms for m in models] == pytest.approx([5.0, 6.0, 7.0])
    assert len(read_model_records(path)) == 4
    with LatencyTable.open(path) as table:
        assert [m.kind for m in table.module_rows()] == ["stem", "stage", "stage"]
    with LatencyTable.open(path) as table:
        assert table.module_latencies()["stage:1:c16:128x128"] == pytest.approx(2.0)
        assert [m.key for m in table.module_rows("stem")] == ["stem:0:c16:128x128"]


def test_arch_strings_are_canonical_and_checked(tmp_path: Path) -> None:
    with LatencyTable.create(tmp_path / "lut.db", fp()) as table:
        table.put_model("128x128/r18_16_11-21-21-21/none:C5/none/retina", "network", stats(3.0))
        (row,) = table.model_rows()
        assert row.arch != "128x128/r18_16_11-21-21-21/none:C5/none/retina"  # stored in full canonical form
        assert table.has_model("128x128/r18_16_11-21-21-21/none:C5/none/retina")
        with pytest.raises(ArchError):
            table.put_model("128x128/r18_16_11-21/none:C5/none/retina", "network", stats(3.0))
        with pytest.raises(ProfilingError, match="scope"):
            table.put_model(ARCHS[0], "backbone", stats(3.0))


def test_foreign_fingerprint_refused(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp(threads=1)) as table:
        fill(table)
    other = fp(threads=2)
    with pytest.raises(ForeignDeviceError) as e:
        LatencyTable.open(path, other)
    message = str(e.value)
    assert fp(threads=1).describe() in message and other.describe() in message and "\n" not in message
    with pytest.raises(ForeignDeviceError):
        LatencyTable.create(path, other)
    with pytest.raises(ForeignDeviceError):
        read_model_records(path, fp(threads=1, precision="fp16"))
    with LatencyTable.open(path, other, allow_foreign=True) as table:
        assert table.counts()["models"] == 4
    with LatencyTable.create(path, other, allow_foreign=True) as table:
        table.put_module("from-other", "stem", {}, stats(1.0))
    with LatencyTable.open(path) as table:
        assert table.fingerprint == fp(threads=1)  # the table keeps its own fingerprint ...
        assert table.module("from-other").fingerprint_key == other.key  # ... rows keep theirs


def test_corrupt_and_non_table_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    for opener in (lambda p: LatencyTable.open(p), lambda p: LatencyTable.create(p, fp())):
        with pytest.raises(ProfilingError, match=r"junk\.db"):
            opener(junk)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ProfilingError, match="not a latency table"):
        LatencyTable.open(other)
    with pytest.raises(ProfilingError, match="not a latency table"):
        LatencyTable.create(other, fp())
    conn = sqlite3.connect(other)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # someone else's file is left as it was
    conn.close()
    with pytest.raises(ProfilingError, match="not found"):
        LatencyTable.open(tmp_path / "missing.db")


def test_killed_writer_keeps_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    script = textwrap.dedent(
        f"""
        import sys, time
        from smnas_trt.profiling.fingerprint import cpu_fingerprint
        from smnas_trt.profiling.lut import LatencyTable
        from smnas_trt.profiling.timing import summarize
        table = LatencyTable.create({str(path)!r}, cpu_fingerprint("ort-cpu", "1.32.0", threads=1))
        for i in range(10_000):
            if table.has(f"m{{i}}"):
                continue
            table.put_module(f"m{{i}}", "stem", {{"i": i}}, summarize([1.0]))
            print(i, flush=True)
            time.sleep(0.005)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) >= 20:
            break
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup at all: harsher than Ctrl-C
    proc.wait()
    with LatencyTable.open(path) as table:
        n = table.counts()["modules"]
        assert n >= 21
        assert [m.key for m in table.module_rows()] == [f"m{i}" for i in range(n)]


def test_cli_show_and_export(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp()) as table:
        fill(table)
    runner = CliRunner()
    shown = runner.invoke(app, ["lut", "show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "3 module entries, 4 model entries" in shown.output and fp().key in shown.output
    assert "end2end" in shown.output and "stage" in shown.output
    out = tmp_path / "lut.csv"
    exported = runner.invoke(app, ["lut", "export", str(path), "--csv", str(out)])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 7
    assert {r["entry"] for r in rows} == {"module", "model"}
    assert float(next(r for r in rows if r["key"] == ARCHS[1])["median_ms"]) == pytest.approx(6.0)


def test_cli_reports_bad_file_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage" * 50)
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-c", "from smnas_trt.cli import main; main()", "lut", "show", str(junk)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "junk.db" in done.stderr and "Traceback" not in done.stderr
    assert time.time() - t0 < 30


# Found by tests/test_fuzz_inputs.py (Hypothesis) on damaged copies of a table: each escaped as an sqlite3,
# IndexError or UnicodeDecodeError, or as a message of several lines.
def _damaged_copy(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "lut.db"
    if not path.exists():
        with LatencyTable.create(path, fp()) as table:
            fill(table)
    data = path.read_bytes()
    damaged = tmp_path / "damaged.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{damaged}{suffix}").unlink(missing_ok=True)
    damaged.write_bytes(edit(data))
    return damaged


def _read_everything(path: Path) -> None:
    with LatencyTable.open(path) as table:
        table.model_rows()
        table.module_rows()
        table.module_latencies()
        table.summary()


@pytest.mark.parametrize(("edit", "message"), [
    # A data page's header overwritten: "database disk image is malformed" from the first row read.
    (lambda d: d[:4096 * 3] + b"\xff" * 8 + d[4096 * 3 + 8:], "damaged latency table .*malformed"),
    # A column renamed inside the stored schema: rows came back without median_ms (IndexError).
    (lambda d: d.replace(b"median_ms REAL NOT NULL", b"median_mX REAL NOT NULL", 1),
     r"damaged latency table \((mod(ule|el)_entries|anchor_timings) lacks columns \['median_ms'\]\)"),
    # The schema statement made unparsable: SQLite's message quotes it over many lines.
    (lambda d: d.replace(b"CREATE TABLE model_entries (", b'CREATE TABLE model_entries "', 1),
     "not a readable latency table .*malformed database schema"),
    # Text that is not UTF-8 in the schema: UnicodeDecodeError.
    (lambda d: d.replace(b"model_entries_arch_id", b"model_entries_arch_\xff\xfe", 1), "not a readable latency table"),
])
def test_damaged_tables_are_one_line_errors(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    damaged = _damaged_copy(tmp_path, edit)
    with pytest.raises(ProfilingError, match=message) as info:
        _read_everything(damaged)
    assert len(str(info.value).splitlines()) == 1 and str(damaged) in str(info.value)


def test_rows_with_values_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp()) as table:
        fill(table)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE model_entries SET median_ms = 'fast' WHERE id = 2")
    conn.close()
    with pytest.raises(ProfilingError, match=r"damaged latency table \(median_ms 'fast' in a row\)"):
        read_model_records(path)
    with LatencyTable.open(path) as table:
        assert len(table.module_rows()) == 3  # the other table's rows still read


def test_a_path_with_uri_characters_opens_the_right_file(tmp_path: Path) -> None:
    folder = tmp_path / "runs#1?x"
    folder.mkdir()
    with LatencyTable.create(folder / "lut.db", fp()) as table:
        fill(table)
    with LatencyTable.open(folder / "lut.db") as table:
        assert len(table.model_rows()) == len(ARCHS) + 1


def _run(table: LatencyTable, run_id: str, kind: str, anchor_ms: float, model: str | None = None) -> None:
    """A profile run as profile-lut records it: anchors at start and end, then one model row or one piece."""
    table.start_run(run_id, kind, 1)
    for phase in ("start", "end"):
        table.put_anchor_timing(run_id, ARCHS[0], phase, stats(anchor_ms))
    if model is None:
        table.put_module(f"stem:{run_id}:c16:128x128", "stem", {"run": run_id}, stats(1.0))
    else:
        table.put_model(model, "network", stats(5.0))
    table.finish_run(run_id, models_timed=int(model is not None))


def test_anchor_reference_is_the_state_of_the_runs_that_timed_models(tmp_path: Path) -> None:
    """A later run that adds only module pieces (`profile-lut --resume --modules`) on a faster machine state
    does not move the reference the predictor's model rows are judged by; a run that timed models does."""
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp()) as table:
        _run(table, "first", "profile", 10.0, model=ARCHS[1])
        _run(table, "modules", "resume", 6.0)
    with LatencyTable.open(path) as table:
        assert [r.models_timed for r in table.runs()] == [1, 0]
        assert table.anchor_reference() == {ARCHS[0]: pytest.approx(10.0)}
    with LatencyTable.create(path, fp()) as table:
        _run(table, "more", "resume", 8.0, model=ARCHS[2])
    with LatencyTable.open(path) as table:  # both model runs count: the median of 10, 10, 8, 8
        assert table.anchor_reference() == {ARCHS[0]: pytest.approx(9.0)}


def test_a_schema_2_table_without_models_timed_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "lut.db"
    with LatencyTable.create(path, fp()) as table:
        table.start_run("old", "profile", 1)
        table.put_anchor_timing("old", ARCHS[0], "start", stats(4.0))
        table.finish_run("old")
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE timing_runs DROP COLUMN models_timed")  # as tables written before it was kept
    conn.commit()
    conn.close()
    with LatencyTable.open(path) as table:  # read as it is: an unknown count counts as a run that timed models
        assert [r.models_timed for r in table.runs()] == [None]
        assert table.anchor_reference() == {ARCHS[0]: pytest.approx(4.0)}
    with LatencyTable.create(path, fp()) as table:
        table.start_run("new", "resume", 1)
        table.finish_run("new", models_timed=0)
    with LatencyTable.open(path) as table:
        assert [r.models_timed for r in table.runs()] == [None, 0]
