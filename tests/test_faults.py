"""Fault campaign (#17 item 6): real subprocesses of `smnas`, real SIGKILL, real SQLite, real ONNX Runtime.

- SIGKILL of `profile-lut` at seeded random moments, then `--resume`: the same keys as an uninterrupted run,
  `PRAGMA integrity_check` ok, every row complete.
- SIGKILL of `deploy`, then a rerun: a model folder that exists always loads with every file matching.
- SIGKILL of `search` during timing, training, evaluation and the predictor refit, then `--resume`: finishes,
  and candidates finished before a kill are never trained again.
- A full disk (RLIMIT_FSIZE on the child, SIGXFSZ ignored so write() fails with EFBIG) while writing a
  checkpoint, a table row, a predictor and a deployed model: one line, exit non-zero, the previous file intact.

Run: `pytest -m slow tests/test_faults.py -s` (prints the campaign's figures).
"""

from __future__ import annotations

import json
import math
import os
import queue
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from smnas_trt.cli import main; main()"]
ARCH = "64x64/r18_8_11-21-21-21/none:C4/none/fcos:1x16"
QUICK = ["--budget-s", "0", "--min-runs", "2"]
QUICK_TIMING = {"warmup_runs": 1, "warmup_s": 0.0, "min_runs": 3, "max_runs": 10, "budget_s": 0.02}
LUT_MODELS = 12
STAT_COLUMNS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "n")

# The campaign's figures: kills per command, faults injected, files checked, anything lost or half-written.
FIGURES: dict[str, Counter[str]] = {}


def tally(command: str, **counts: int) -> None:
    FIGURES.setdefault(command, Counter()).update(counts)


@pytest.fixture(scope="module", autouse=True)
def print_figures() -> Iterator[None]:
    yield
    print("\nfault campaign figures:")
    for command, counts in FIGURES.items():
        print(f"  {command}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def child_env() -> dict[str, str]:
    env = dict(os.environ)  # SMNAS_CACHE: the test session's private ONNX cache (conftest)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


def fsize_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited through exec: write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def smnas(*args: str, limit: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=child_env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=fsize_limit(limit) if limit else None)


def kill_after(args: list[str], seconds: float, when: Callable[[], bool] | None = None) -> tuple[bool, float]:
    """Start `smnas ARGS`, SIGKILL it `seconds` after `when()` holds (polled; at once without it).

    Returns (killed before it finished, seconds it ran)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*CLI, *args], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while when is not None and proc.poll() is None and not when():
            time.sleep(0.05)
        proc.wait(timeout=seconds)
        return False, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_one_line_error(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode != 0, f"{what}: exit 0 under a full disk"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, f"{what}: traceback\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), f"{what}: no error line\n{proc.stderr}"
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny demo data, an uninterrupted reference table (ort-cpu, tiny space), a predictor fitted on it and a
    checkpoint."""
    from smnas_trt.data import generate_demo

    root = tmp_path_factory.mktemp("faults")
    data = generate_demo(root / "data", n_train=16, n_val=4, size=64, seed=0)
    ref = root / "ref.db"
    t0 = time.monotonic()
    proc = smnas("profile-lut", "--space", "tiny", "--backend", "ort-cpu", "--models", str(LUT_MODELS),
                 "--modules", "none", *QUICK, "--out", str(ref))
    assert proc.returncode == 0, proc.stderr
    ref_seconds = time.monotonic() - t0
    predictor = root / "predictor"
    proc = smnas("predictor", "fit", "--lut", str(ref), "--out", str(predictor), "--folds", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    train = root / "train"
    proc = smnas("train", "--arch", ARCH, "--data", str(data), "--epochs", "1", "--batch-size", "4",
                 "--warmup-iters", "1", "--threads", "1", "--out", str(train))
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "data": data, "ref": ref, "ref_seconds": ref_seconds, "predictor": predictor,
            "checkpoint": train / "last.pt"}


# ---------------------------------------------------------------------------------------------- table checks
def table_keys(path: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return ({("model", f"{a}|{s}") for a, s in db.execute("SELECT arch, scope FROM model_entries")}
                | {("module", k) for (k,) in db.execute("SELECT key FROM module_entries")})
    finally:
        db.close()


def check_table(path: Path) -> int:
    """integrity_check ok and every row complete; returns the rows checked. Opens it as the next writer would."""
    from smnas_trt.profiling.lut import LatencyTable

    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        meta = dict(db.execute("SELECT key, value FROM meta"))
        rows = 0
        for table in ("model_entries", "module_entries"):
            db.row_factory = sqlite3.Row
            for row in db.execute(f"SELECT * FROM {table}"):
                rows += 1
                assert row["fingerprint_key"] == meta["fingerprint_key"]
                assert row["created_at"]
                for c in STAT_COLUMNS:
                    assert isinstance(row[c], int | float) and math.isfinite(row[c]), (table, c, row[c])
                assert row["n"] >= 1 and row["median_ms"] > 0 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
                assert isinstance(json.loads(row["extra"]), dict)
                if table == "model_entries":
                    assert row["arch"] and len(row["arch_id"]) == 10 and row["scope"] in ("network", "end2end")
            db.row_factory = None
    finally:
        db.close()
    with LatencyTable.open(path) as t:  # the project's own reader accepts every row too
        t.model_rows("network")
    return rows


def test_profile_lut_sigkill_then_resume(world: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(17)
    out = tmp_path / "lut.db"
    # A fresh ONNX cache: the killed runs export as well as time (the cache's own writes get killed too).
    args = ["profile-lut", "--space", "tiny", "--backend", "ort-cpu", "--models", str(LUT_MODELS),
            "--modules", "none", *QUICK, "--out", str(out), "--onnx-cache", str(tmp_path / "onnx")]
    # The reference took ref_seconds from a cold cache; five kills of up to a third of that leave work
    # for the final --resume, and land anywhere from the start-up to the repeat check at the end.
    # Two kills at a random moment from the start (start-up, table creation, the anchors, exports), three a
    # random moment after the table has reached a random number of rows (while rows are being written).
    span = max(world["ref_seconds"] / 3, 12.0)
    moments: list[tuple[float, int]] = [(rng.uniform(4.0, span), 0) for _ in range(2)]
    moments += [(rng.uniform(0.0, 2.0), rng.randint(1, LUT_MODELS - 1)) for _ in range(3)]
    moments.sort(key=lambda m: m[1])

    def model_rows() -> int:
        try:
            db = sqlite3.connect(f"file:{out}?mode=ro", uri=True, timeout=0.2)
            try:
                return int(db.execute("SELECT count(*) FROM model_entries").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            return 0

    kills = rows_checked = 0
    for at, after_rows in moments:
        killed, ran = kill_after([*args, *(["--resume"] if out.exists() else [])], at,
                                 (lambda n=after_rows: model_rows() >= n) if after_rows else None)
        kills += killed
        rows = check_table(out) if out.exists() else 0
        rows_checked += rows
        print(f"profile-lut: SIGKILL {at:.1f} s after {after_rows} rows ({'killed' if killed else 'finished first'} "
              f"after {ran:.1f} s): {rows} complete rows in the table")
    proc = smnas(*args, *(["--resume"] if out.exists() else []))
    assert proc.returncode == 0, proc.stderr
    rows_checked += check_table(out)
    assert table_keys(out) == table_keys(world["ref"])
    tally("profile-lut", kills_tried=len(moments), kills_landed=kills, tables_checked=len(moments) + 1,
          rows_checked=rows_checked, half_written_rows=0, keys_lost=0)


# ---------------------------------------------------------------------------------------------- deploy
def check_deploy_out(out: Path) -> tuple[int, int]:
    """Every model folder in OUT loads with every file matching its manifest; (folders loaded, leftover temp dirs).

    A killed deploy may leave its hidden temporary sibling (`.ID.*.tmp`): never a model folder, counted."""
    from smnas_trt.deploy import Detector, check_files, read_manifest

    loaded = temps = 0
    if not out.exists():
        return 0, 0
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            temps += 1  # a temp folder of a killed deploy: never a model folder (hidden, no manifest read)
            continue
        manifest = read_manifest(folder)
        check_files(folder, manifest)
        Detector.load(folder, threads=1)
        loaded += 1
    listed = set()
    if (out / "models.json").exists():  # written atomically: whole JSON or absent
        listed = {m["folder"] for m in json.loads((out / "models.json").read_text())["models"]}
    unlisted = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in listed]
    if unlisted:  # killed between the model folder's rename and the table's rewrite: the folder is whole
        print(f"deploy: model folder(s) {unlisted} not (yet) in models.json")
    return loaded, temps


def test_deploy_sigkill_then_rerun(world: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(6)
    out = tmp_path / "deployed"
    args = ["deploy", "--checkpoint", str(world["checkpoint"]), "--data", str(world["data"]), "--backend", "ort-cpu",
            "--quick", "--verify-images", "1", "--threads", "1", "--out", str(out)]
    kills = folders_checked = refused = temps_seen = 0
    # A deploy here takes 10-22 s (start-up about 6): three kills early, two late (some may finish first).
    moments = [rng.uniform(4.0, 12.0) for _ in range(3)] + [rng.uniform(12.0, 24.0) for _ in range(2)]
    for at in moments:
        killed, ran = kill_after(args, at)
        kills += killed
        loaded, temps = check_deploy_out(out)
        folders_checked += loaded
        temps_seen = max(temps_seen, temps)
        print(f"deploy: SIGKILL at {at:.1f} s ({'killed' if killed else 'finished first'} after {ran:.1f} s): "
              f"{loaded} model folder(s) load, {temps} temp folder(s) left")
        if loaded:  # complete: a rerun refuses it with one line
            proc = smnas(*args)
            assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--overwrite" in proc.stderr
            refused += 1
            shutil.rmtree(out)  # start over, so the next kill lands in a deploy that writes
    proc = smnas(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded, _ = check_deploy_out(out)
    assert loaded == 1
    tally("deploy", kills_tried=len(moments), kills_landed=kills, folders_checked=folders_checked + loaded,
          reruns_refused_one_line=refused, incomplete_folders=0, stale_temp_folders=temps_seen)


# ---------------------------------------------------------------------------------------------- search
PHASES = ("timing", "training", "evaluation", "refit")


def search_config(world: dict[str, Any], path: Path) -> Path:
    from smnas_trt.profiling.lut import read_model_records

    times = sorted(r.median_ms for r in read_model_records(world["ref"], scope="network"))
    raw = {
        "name": "faults", "space": "tiny", "data": str(world["data"]), "seed": 0,
        "latency": {"budget_ms": round(times[-1] * 2, 4), "backend": "ort-cpu", "lut": str(world["ref"]),
                    "predictor": str(world["predictor"]), "threads": 1, "timing": QUICK_TIMING,
                    "predictor_fit": {"rounds": 40, "folds": 2, "scale_rounds": 20, "threads": 1}},
        "training": {"batch_size": 4, "lr": 0.01, "warmup_iters": 1},
        "evaluation": {"split": "val", "max_images": 4, "batch_size": 4},
        "structural": {"generations": 1, "train": 2, "rungs": [1]},
        "modular": {"generations": 1, "train": 2, "rungs": [1], "population": 2},
        "gate": {"oversampling": 4},
        "executor": {"kind": "inprocess", "threads_per_task": 1},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def candidates(run: Path) -> list[sqlite3.Row]:
    if not (run / "run.db").exists():
        return []
    try:
        db = sqlite3.connect(f"file:{run / 'run.db'}?mode=ro", uri=True, timeout=0.2)
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM candidates").fetchall()
        db.close()
        return rows
    except sqlite3.Error:
        return []


def phase_now(run: Path, lines: list[str], started: float) -> str | None:
    """What the search is doing now, from its log lines and the run store and candidate folders."""
    last = lines[-1] if lines else ""
    if "refitting the latency predictor" in last:
        return "refit"
    if last.strip().startswith("timing ") and " on ort-cpu" in last:
        return "timing"
    for c in candidates(run):
        if c["status"] != "training":
            continue
        folder = run / "candidates" / c["arch_id"]
        ckpt, ev = folder / "last.pt", folder / "eval.json"
        fresh = ckpt.exists() and ckpt.stat().st_mtime >= started
        if not fresh:
            return "training"
        if not ev.exists() or ev.stat().st_mtime < ckpt.stat().st_mtime:
            return "evaluation"
    return None


def run_until(args: list[str], run: Path, phase: str, timeout: float = 300) -> tuple[bool, str]:
    """Start `smnas ARGS`; SIGKILL it as soon as it is in `phase`. (killed in that phase, the log so far)"""
    proc = subprocess.Popen([*CLI, *args], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    q: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [q.put(line) for line in proc.stdout or []], daemon=True)
    reader.start()
    started = time.time() - 1.0  # mtime granularity
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            while not q.empty():
                lines.append(q.get())
                if phase_now(run, lines, started) == phase:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return True, "".join(lines)
            if proc.poll() is not None and q.empty():
                break
            if phase_now(run, [], started) == phase:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True, "".join(lines)
            time.sleep(0.03)
        return False, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=5)


def test_search_sigkill_in_each_phase_then_resume(world: dict[str, Any], tmp_path: Path) -> None:
    cfg = search_config(world, tmp_path / "search.yaml")
    run = tmp_path / "run"
    first = ["search", "--config", str(cfg), "--out", str(run)]
    resume = ["search", "--out", str(run), "--resume"]
    finished: dict[str, tuple[int, float | None]] = {}
    caught: dict[str, bool] = {}
    for phase in PHASES:
        killed, _log = run_until(first if not (run / "run.db").exists() else resume, run, phase)
        caught[phase] = killed
        print(f"search: SIGKILL in {phase}: {'landed' if killed else 'missed (the run finished or never got there)'}")
        for c in candidates(run):
            if c["status"] == "done":
                finished.setdefault(c["arch_id"], (c["attempts"], c["ap"]))
        if not killed:
            break
    proc = smnas(*resume, "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = {c["arch_id"]: c for c in candidates(run)}
    # Finished before a kill: never trained again (same attempts, same AP).
    for arch_id, (attempts, ap) in finished.items():
        assert final[arch_id]["attempts"] == attempts and final[arch_id]["ap"] == ap, arch_id
    assert all(c["status"] in ("done", "over_budget", "failed") for c in final.values())
    assert not [c for c in final.values() if c["status"] == "failed"], [c["error"] for c in final.values()]
    assert len({c["arch"] for c in final.values()}) == len(final)
    db = sqlite3.connect(run / "run.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert [s for (s,) in db.execute("SELECT status FROM generations ORDER BY generation")] == ["done", "done"]
    db.close()
    for c in final.values():
        if c["status"] == "done":
            assert (run / c["checkpoint"]).is_file()
    rows = check_table(run / "lut.db")
    # Every predictor the run refitted (one was killed mid-refit) loads whole; a killed refit leaves none half-written.
    from smnas_trt.predictors import LatencyPredictor

    predictors = [p for p in sorted((run / "predictors").iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for folder in predictors:
        LatencyPredictor.load(folder)
    assert all(caught.values()), caught
    tally("search", kills_tried=len(caught), kills_landed=sum(caught.values()),
          candidates_checked=len(final), finished_before_a_kill=len(finished), retrained=0,
          run_tables_rows_checked=rows, predictor_folders_checked=len(predictors))
    print(f"search: kills landed in {[p for p, k in caught.items() if k]}; {len(finished)} candidates finished "
          f"before a kill, none retrained")


# ---------------------------------------------------------------------------------------------- full disk
def test_full_disk_while_writing_a_checkpoint(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "train"
    args = ["train", "--arch", ARCH, "--data", str(world["data"]), "--epochs", "1", "--batch-size", "4",
            "--warmup-iters", "1", "--threads", "1", "--out", str(out)]
    assert smnas(*args).returncode == 0
    before = snapshot(out)
    proc = smnas(*args, limit=100_000)  # the checkpoint is ~750 KB
    line = assert_one_line_error(proc, "train")
    assert "last.pt" in line and "cannot write" in line, line
    assert snapshot(out) == before
    tally("full disk", faults_injected=1, files_checked=len(before), files_changed=0)


def test_full_disk_while_writing_a_table_row(world: dict[str, Any], tmp_path: Path) -> None:
    archs = [a for (a,) in sqlite3.connect(world["ref"]).execute(
        "SELECT arch FROM model_entries WHERE scope = 'network' ORDER BY id")]
    five, seven = tmp_path / "five.txt", tmp_path / "seven.txt"
    five.write_text("\n".join(archs[:5]) + "\n")
    seven.write_text("\n".join(archs[:7]) + "\n")  # graphs all in the ONNX cache: only the table is written
    out = tmp_path / "lut.db"
    base = ["profile-lut", "--space", "tiny", "--backend", "ort-cpu", "--modules", "none", *QUICK, "--out", str(out)]
    assert smnas(*base, "--archs", str(five)).returncode == 0
    db = sqlite3.connect(out)
    rows_before = db.execute("SELECT * FROM model_entries ORDER BY id").fetchall()
    db.close()
    proc = smnas(*base, "--archs", str(seven), "--resume", limit=40_000)  # room for the -shm, not for many WAL frames
    line = assert_one_line_error(proc, "profile-lut")
    assert "cannot write the latency table" in line, line
    check_table(out)
    db = sqlite3.connect(out)
    rows_after = db.execute("SELECT * FROM model_entries ORDER BY id").fetchall()
    db.close()
    # The rows already there are kept as they were (SQLite may checkpoint committed run records into the file).
    assert rows_after[:len(rows_before)] == rows_before
    tally("full disk", faults_injected=1, files_checked=1, table_rows_checked=len(rows_after), rows_lost=0,
          half_written_rows=0)


def test_full_disk_while_writing_a_predictor(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "predictor"
    shutil.copytree(world["predictor"], out)
    before = snapshot(out)
    proc = smnas("predictor", "fit", "--lut", str(world["ref"]), "--out", str(out), "--folds", "2", "--threads", "1",
                 limit=100_000)  # mean.ubj is ~135 KB
    line = assert_one_line_error(proc, "predictor fit")
    assert "cannot write" in line, line
    assert snapshot(out) == before
    from smnas_trt.predictors import LatencyPredictor

    LatencyPredictor.load(out)
    tally("full disk", faults_injected=1, files_checked=len(before), files_changed=0)


def test_full_disk_while_writing_a_deployed_model(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "deployed"
    args = ["deploy", "--checkpoint", str(world["checkpoint"]), "--data", str(world["data"]), "--backend", "ort-cpu",
            "--quick", "--verify-images", "1", "--threads", "1", "--out", str(out)]
    assert smnas(*args).returncode == 0
    before = snapshot(out)
    proc = smnas(*args, "--overwrite", limit=60_000)  # body.onnx is ~270 KB
    # A model that fails is reported in the table and one `failed:` line, exit 1 (the deploy contract).
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 1 and "File too large" in failed[0], proc.stdout[-2000:]
    assert snapshot(out) == before
    loaded, temps = check_deploy_out(out)
    assert loaded == 1 and temps == 0
    tally("full disk", faults_injected=1, files_checked=len(before), files_changed=0)
