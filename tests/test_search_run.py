"""End-to-end searches on generated data: real trainings, real timings, real predictor, real SQLite.

One module fixture builds what a user would have before `smnas search`: a tiny space (64x64), a
generated dataset, a latency table profiled with the library call behind `smnas profile-lut`, and
a fitted predictor. Trainings are one epoch on 48 images, so a candidate costs about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from smnas_trt.errors import ConfigError, DataError, SearchError
from smnas_trt.search import RunStore, Search, load_front, load_search_config, parse_search_config, run_search
from smnas_trt.search.config import SearchConfig
from smnas_trt.search.engine import FRONT_FILE, open_run
from smnas_trt.search.executors import InProcessExecutor
from smnas_trt.search.pareto import dominates
from smnas_trt.space.config import BUILTIN_SPACES

BACKEND = "torch"  # eager PyTorch on CPU: a real backend that needs no export, so timings take ms
QUICK_TIMING = {"warmup_runs": 2, "warmup_s": 0.0, "min_runs": 5, "max_runs": 20, "budget_s": 0.05}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from smnas_trt.data import generate_demo
    from smnas_trt.profiling.profile import profile_lut
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.profiling.timing import TimingConfig
    from smnas_trt.search.latency import fit_predictor
    from smnas_trt.space import load_space

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("search")
    space = root / "space_tiny.yaml"
    space.write_text(BUILTIN_SPACES["tiny"].read_text())
    data = generate_demo(root / "data", n_train=48, n_val=16, size=64, seed=0)
    lut = root / "lut.db"
    report = profile_lut(space=load_space(str(space)), out=lut, spec=BackendSpec(backend=BACKEND, threads=1),
                         models=30, seed=3, timing=TimingConfig(**QUICK_TIMING), anchors=4)
    assert report.models_timed >= 30 and not report.failures
    raw = {
        "name": "tiny", "space": str(space), "data": str(data), "seed": 0,
        "latency": {"budget_ms": 1000.0, "backend": BACKEND, "lut": str(lut), "threads": 1, "timing": QUICK_TIMING,
                    "predictor_fit": {"rounds": 80, "folds": 3, "scale_rounds": 30, "threads": 1}},
        "training": {"batch_size": 8, "lr": 0.01, "warmup_iters": 4},
        "evaluation": {"split": "train", "max_images": 16, "batch_size": 8},
        "structural": {"generations": 1, "train": 3, "rungs": [1]},
        "modular": {"generations": 1, "train": 2, "rungs": [1], "population": 3},
        "gate": {"oversampling": 8},
        "executor": {"kind": "inprocess", "threads_per_task": 1},
    }
    predictor = root / "predictor"
    fit_predictor(lut, parse_search_config(raw).latency).save(predictor)
    raw["latency"]["predictor"] = str(predictor)
    from smnas_trt.profiling.lut import read_model_records

    times = sorted(r.median_ms for r in read_model_records(lut, scope="network"))
    # A budget between the fastest and the slowest model: the gate has something to reject.
    raw["latency"]["budget_ms"] = round(times[len(times) * 2 // 3], 4)
    return {"root": root, "raw": raw, "times": times}


def _config(env: dict[str, Any], **over: Any) -> SearchConfig:
    raw = json.loads(json.dumps(env["raw"]))
    for key, value in over.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_search_config(raw)


class SecondWriterExecutor(InProcessExecutor):
    """The in-process executor, which before its first batch of jobs runs a second `smnas search`
    on the same run directory: that one meets a search that holds the run, on any machine speed."""

    def __init__(self, out: Path, seen: dict[str, Any]) -> None:
        super().__init__(threads_per_task=1)
        self.out, self.seen = out, seen

    def run(self, fn: Any, jobs: Any, on_start: Any = None, **kw: Any) -> Any:
        if "second_writer" not in self.seen:
            self.seen["second_writer"] = subprocess.run(
                [str(Path(sys.executable).parent / "smnas"), "search", "--resume", "--out", str(self.out)],
                capture_output=True, text=True, timeout=120)
        return super().run(fn, jobs, on_start, **kw)


@pytest.fixture(scope="module")
def finished_run(env: dict[str, Any]) -> Path:
    """A finished tiny search; while it ran, a second `smnas search` on its directory tried to start."""
    out = env["root"] / "run-a"
    run_search(_config(env), out, executor=SecondWriterExecutor(out, env), show_progress=False)
    return out


def test_a_second_search_on_a_run_in_use_is_refused_in_one_line(env: dict[str, Any], finished_run: Path) -> None:
    refused = env["second_writer"]
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (f"error: run directory {str(finished_run)!r} is in use by another search (pid {os.getpid()} since"
            in refused.stderr)
    assert not finished_run.with_name("run-a.lock").exists()  # released when the search ended
    # The killed search of test_sigkill_during_training_then_resume held the lock too: its resume runs.


def test_tiny_search_completes_with_a_non_dominated_front(env: dict[str, Any], finished_run: Path) -> None:
    cfg = _config(env)
    store = RunStore(finished_run / "run.db", readonly=True)
    gens = store.generations()
    cands = store.candidates()
    front = store.front()
    assert [(g.generation, g.stage, g.status) for g in gens] == [(0, "structural", "done"), (1, "modular", "done")]
    assert all(c.status in ("done", "over_budget", "failed") for c in cands)
    assert not [c for c in cands if c.status == "failed"], [c.error for c in cands]
    trained = [c for c in cands if c.status == "done"]
    assert 3 <= len(trained) <= 5 and all(c.attempts == 1 for c in trained)
    # Nothing over the budget was trained: the gate plus the confirmation timing saw to it.
    assert all(c.measured_ms is not None and c.measured_ms <= cfg.latency.budget_ms for c in trained)
    # Every trained candidate has its results and a checkpoint in the run directory.
    for c in trained:
        assert c.ap is not None and c.ap50 is not None and c.train_seconds and c.predicted_ms
        assert (finished_run / str(c.checkpoint)).is_file()
    # Modular children descend from trained parents and were never trained twice.
    parents = {c.arch_id for c in cands}
    assert all(c.parent_id in parents for c in cands if c.stage == "modular")
    assert len({c.arch for c in cands}) == len(cands)
    # The front is non-dominated and nothing trained within budget dominates any of its points.
    assert front
    assert not any(dominates(a.point, b.point) for a in front for b in front)
    assert not any(dominates(c.point, f.point) for c in trained for f in front)
    assert all(any(f.point == c.point or dominates(f.point, c.point) for f in front) for c in trained)
    assert [c.arch_id for c in load_front(finished_run)] == [c.arch_id for c in front]
    on_disk = json.loads((finished_run / FRONT_FILE).read_text())
    assert [e["arch_id"] for e in on_disk["front"]] == [c.arch_id for c in front]
    assert (gens[-1].hypervolume and gens[-1].hypervolume > 0) or all(c.ap == 0 for c in front)
    # The run's table gained the timings measured during the search; the predictor was refitted.
    from smnas_trt.profiling.lut import read_model_records

    timed = {r.arch for r in read_model_records(finished_run / "lut.db", scope="network")}
    assert {c.arch for c in cands if c.measured_ms is not None} <= timed
    assert (finished_run / str(gens[-1].predictor_path)).is_dir() and gens[-1].predictor_path != "predictors/initial"
    # Each generation measured its drift on the table's anchors first: in the run store and the run's table.
    drifts = store.drifts()
    assert [(d["generation"], d["phase"]) for d in drifts] == [(0, "generation"), (1, "generation")]
    assert all(d["ratio"] > 0 and d["anchors"] == 4 for d in drifts)
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(finished_run / "lut.db") as table:
        assert [r.kind for r in table.runs() if r.drift is not None] == ["search", "search"]
    store.close()


def test_report_of_a_run(finished_run: Path, tmp_path: Path) -> None:
    from smnas_trt.report import write_report

    files = write_report(finished_run, tmp_path / "report")
    for png in (files.pareto_png, files.rungs_png, files.predictor_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    store = RunStore(finished_run / "run.db", readonly=True)
    front = store.front()
    store.close()
    table = files.front_md.read_text().splitlines()
    assert len(table) == 2 + len(front)
    assert all(c.arch in files.front_md.read_text() for c in front)
    assert "predictor MAPE" in files.report_md.read_text()


def test_same_seed_same_candidates(env: dict[str, Any], finished_run: Path) -> None:
    # Same seed: the same proposals, gate decisions, ranking and chosen candidates. (The confirmation timing
    # is switched off here: with it, a candidate measured within noise of the budget may go either way.)
    # Drift correction off: with it, each run's own anchor timings move the predictions and the budget decisions.
    chosen, screened = [], []
    for name in ("run-seed-1", "run-seed-2"):
        run_search(_config(env, **{"gate.confirm": False, "latency.drift": False}), env["root"] / name,
                   show_progress=False, stop_after=1)
        store = RunStore(env["root"] / name / "run.db", readonly=True)
        assert store.drifts() == []
        chosen.append([(c.arch, c.predicted_ms) for c in store.candidates(generation=0)])
        screened.append([(s.arch, s.decision, s.rank) for s in store.screened(0)])
        store.close()
    assert len(chosen[0]) == 3 and chosen[0] == chosen[1] and screened[0] == screened[1]
    a = RunStore(finished_run / "run.db", readonly=True)
    # ...and given the same recorded results, planning the modular generation again gives the same children.
    replay = env["root"] / "run-replay"
    shutil.copytree(finished_run, replay)
    db = sqlite3.connect(replay / "run.db")
    with db:
        for table in ("screened", "candidates", "generations"):
            db.execute(f"DELETE FROM {table} WHERE generation >= 1")
    db.close()
    search = Search(load_search_config(replay / "config.yaml"), replay, show_progress=False)
    search.plan(1, "modular", search.predictor_for(1))
    replayed = [(s.arch, s.decision, s.rank, s.parent_id) for s in search.store.screened(1)]
    assert replayed == [(s.arch, s.decision, s.rank, s.parent_id) for s in a.screened(1)]
    # A different seed proposes something else.
    other = Search(load_search_config(replay / "config.yaml"), replay, show_progress=False)
    import random

    assert other.propose("structural", random.Random(1), 8) != other.propose("structural", random.Random(2), 8)
    for s in (a, search.store):
        s.close()


def test_run_directory_rules(env: dict[str, Any], finished_run: Path) -> None:
    listing = sorted(p.name for p in finished_run.iterdir())
    mtime = (finished_run / "run.db").stat().st_mtime_ns
    with pytest.raises(SearchError, match=r"holds a run with a different config \(differs in: seed\).*never "
                                          r"overwritten"):
        open_run(_config(env, seed=1), finished_run, resume=False)
    with pytest.raises(SearchError, match="different config"):
        open_run(_config(env, seed=1), finished_run, resume=True)
    with pytest.raises(SearchError, match="already holds this run; pass --resume"):
        open_run(_config(env), finished_run, resume=False)
    assert sorted(p.name for p in finished_run.iterdir()) == listing
    assert (finished_run / "run.db").stat().st_mtime_ns == mtime
    # Resuming a finished run trains nothing again.
    before = {c.arch_id: c.attempts for c in RunStore(finished_run / "run.db", readonly=True).candidates()}
    run_search(None, finished_run, resume=True, show_progress=False)
    after = {c.arch_id: c.attempts for c in RunStore(finished_run / "run.db", readonly=True).candidates()}
    assert after == before
    stray = env["root"] / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(SearchError, match="exists and is not a run directory"):
        open_run(_config(env), stray, resume=False)


def test_a_missing_data_folder_creates_nothing(env: dict[str, Any]) -> None:
    out = env["root"] / "new-parent" / "run"
    with pytest.raises(DataError, match=r"data folder not found: .*no-such-data"):
        run_search(_config(env, data=str(env["root"] / "no-such-data")), out, show_progress=False)
    assert not (env["root"] / "new-parent").exists()
    # The corrected retry starts (and is not told the run exists).
    _, created = open_run(_config(env), out, resume=False)
    assert created and (out / "run.db").is_file()


def test_impossible_budget_and_unknown_field(env: dict[str, Any]) -> None:
    fastest = env["times"][0]
    with pytest.raises(ConfigError, match=r"latency.budget_ms: .* below the fastest model in the table"):
        open_run(_config(env, **{"latency.budget_ms": fastest / 10}), env["root"] / "never", resume=False)
    assert not (env["root"] / "never").exists()
    bad = env["root"] / "bad.yaml"
    bad.write_text(yaml.safe_dump({**env["raw"], "populaton": 5}))
    smnas = Path(sys.executable).parent / "smnas"
    proc = subprocess.run([str(smnas), "search", "--config", str(bad), "--out",
                           str(env["root"] / "never")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: populaton: unknown field"]


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from smnas_trt.search import load_search_config, run_search
    run_search(load_search_config(sys.argv[1]), sys.argv[2], resume=True, show_progress=False)
""")


def test_sigkill_during_training_then_resume(env: dict[str, Any]) -> None:
    cfg_path = env["root"] / "kill.yaml"
    raw = _config(env, **{"training.max_train_images": 48}).frozen_dict()
    raw["structural"]["rungs"] = [3]  # long enough trainings for the kill to land inside one
    cfg_path.write_text(yaml.safe_dump(raw))
    out = env["root"] / "run-killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(cfg_path), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    in_training: list[tuple[str, int]] = []
    done_before: dict[str, float | None] = {}
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "run.db").exists():
                try:
                    db = sqlite3.connect(f"file:{out / 'run.db'}?mode=ro", uri=True)
                    rows = db.execute("SELECT arch_id, status, attempts, ap FROM candidates").fetchall()
                    db.close()
                except sqlite3.Error:
                    rows = []
                done = {r[0]: r[3] for r in rows if r[1] == "done"}
                training = [(r[0], r[2]) for r in rows if r[1] == "training"]
                if training and len(done) >= 1:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    in_training, done_before = training, done
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    assert in_training, f"never caught a candidate in training: {err}"
    # The store on disk still says 'training' for the killed candidate.
    store = RunStore(out / "run.db", readonly=True)
    assert [c.arch_id for c in store.candidates(status="training")] == [a for a, _ in in_training]
    store.close()

    run_search(load_search_config(cfg_path), out, resume=True, show_progress=False)
    store = RunStore(out / "run.db", readonly=True)
    cands = store.candidates()
    # No candidate lost: every one chosen is finished; the killed one was trained again (attempts 2).
    assert all(c.status in ("done", "over_budget") for c in cands)
    by_id = {c.arch_id: c for c in cands}
    for arch_id, attempts in in_training:
        assert by_id[arch_id].status == "done" and by_id[arch_id].attempts == attempts + 1
    # No duplicate: each arch once; candidates done before the kill were not trained again.
    assert len({c.arch for c in cands}) == len(cands)
    for arch_id, ap in done_before.items():
        assert by_id[arch_id].attempts == 1 and by_id[arch_id].ap == ap
    # Each generation filled its training slots, or ran out of children the gate kept.
    for g, slots in ((0, 3), (1, 2)):
        filled = [c for c in cands if c.generation == g and c.status == "done"]
        kept = store.screened(g, "kept")
        assert len(filled) == slots or {s.arch_id for s in kept} <= set(by_id)
    assert [g.status for g in store.generations()] == ["done", "done"]
    store.close()


def test_ray_executor_runs_a_generation(env: dict[str, Any]) -> None:
    """A structural generation on a real local Ray cluster: one task per candidate, results in the store."""
    pytest.importorskip("ray")
    from smnas_trt.search.executors import RayExecutor

    cfg = _config(env, **{"modular.generations": 0, "executor.kind": "ray"})
    executor = RayExecutor(cfg.executor, num_cpus=2)
    try:
        assert executor.slots(use_gpu=True) == 2 and executor.gpus_per_task(True) == 0.0  # no GPU here
        run_search(cfg, env["root"] / "run-ray", executor=executor, show_progress=False)
    finally:
        executor.close()
    store = RunStore(env["root"] / "run-ray" / "run.db", readonly=True)
    done = store.candidates(status="done")
    assert len(done) == 3 and all(c.attempts == 1 and c.ap is not None for c in done)
    # Trained in Ray worker processes, not in this one.
    assert all(c.worker and int(c.worker.rsplit(":", 1)[1]) != os.getpid() for c in done)
    assert all((env["root"] / "run-ray" / str(c.checkpoint)).is_file() for c in done)
    assert store.front()
    store.close()


def _children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []


def test_successive_halving_kill_mid_rung_then_resume(env: dict[str, Any]) -> None:
    """Worker processes (the default executor), rungs [1, 4], eta 2: two candidates at rung 0, the better one
    on to rung 1. The search is SIGKILLed while that one trains rung 1: its worker dies with it, and --resume
    continues the rung from the last epoch checkpoint without touching rung 0."""
    cfg_path = env["root"] / "rungs.yaml"
    raw = _config(env, **{"structural.train": 1, "structural.rungs": [1, 4], "structural.eta": 2,
                          "modular.generations": 0, "executor": {"kind": "local", "max_parallel": 2}}).frozen_dict()
    cfg_path.write_text(yaml.safe_dump(raw))
    out = env["root"] / "run-rungs"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(cfg_path), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    rung0_before: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            training = _rows(out / "run.db", "SELECT arch_id FROM candidates WHERE status = 'training' AND rung = 0")
            workers = _children_of(proc.pid)
            # In rung 1 with at least one of its epochs written: a kill now loses less than the rung.
            if training and workers and _epochs_done(out, training[0][0]) >= 2:
                rung0_before = _rows(out / "run.db", "SELECT * FROM rungs WHERE rung = 0 ORDER BY arch_id")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    assert rung0_before and len(rung0_before) == 2, f"never caught rung 1 in training: {err}"
    # The worker dies with the search (no orphan keeps writing into the run directory).
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)

    run_search(load_search_config(cfg_path), out, resume=True, show_progress=False)
    store = RunStore(out / "run.db", readonly=True)
    cands = {c.arch_id: c for c in store.candidates(generation=0) if c.status != "over_budget"}
    promoted = [c for c in cands.values() if c.status == "done"]
    stopped = [c for c in cands.values() if c.status == "stopped"]
    assert len(promoted) == 1 and len(stopped) == 1
    top, low = promoted[0], stopped[0]
    assert top.rung == 1 and top.epochs == 4 and top.attempts == 3  # rung 0, rung 1, rung 1 again after the kill
    assert low.rung == 0 and low.attempts == 1 and low.epochs == 1
    # Rung 0 was not trained again: its rows are as they were before the kill (decisions aside).
    after = store.rung_results()
    assert next(r for r in after if r.rung == 0 and r.arch_id == low.arch_id).decision == "stopped"
    assert {(r.arch_id, r.ap, r.finished_at) for r in after if r.rung == 0} == \
        {(row[0], row[3], row[9]) for row in rung0_before}
    assert [r.decision for r in after if r.arch_id == top.arch_id] == ["promoted", "top"]
    # The resumed rung went on from the epoch checkpoint: each epoch trained exactly once.
    history = json.loads((out / "candidates" / top.arch_id / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # Only the top-rung candidate can be on the front.
    assert [c.arch_id for c in store.front()] in ([top.arch_id], [])
    store.close()


def _epochs_done(run: Path, arch_id: str) -> int:
    path = run / "candidates" / arch_id / "metrics.json"
    try:
        return len(json.loads(path.read_text())["history"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_sigkilled_training_worker_is_that_candidates_failure(env: dict[str, Any]) -> None:
    import multiprocessing
    import threading

    cfg = _config(env, **{"modular.generations": 0, "executor": {"kind": "local", "max_parallel": 1},
                          "structural.rungs": [2]})
    out = env["root"] / "run-worker-killed"
    done: list[Any] = []
    search = threading.Thread(target=lambda: done.append(run_search(cfg, out, show_progress=False)))
    search.start()
    victim = None
    deadline = time.monotonic() + 180
    while search.is_alive() and time.monotonic() < deadline and victim is None:
        training = _rows(out / "run.db", "SELECT arch_id FROM candidates WHERE status = 'training'")
        children = multiprocessing.active_children()
        if training and children:
            victim = training[0][0]
            os.kill(children[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
        time.sleep(0.05)
    search.join(timeout=300)
    assert victim is not None and not search.is_alive() and done, "the search did not finish"
    store = RunStore(out / "run.db", readonly=True)
    by_id = {c.arch_id: c for c in store.candidates()}
    assert by_id[victim].status == "failed" and "worker process died: killed by SIGKILL" in str(by_id[victim].error)
    others = [c for c in by_id.values() if c.arch_id != victim and c.status not in ("over_budget",)]
    assert others and all(c.status == "done" for c in others)
    assert [g.status for g in store.generations()] == ["done"]
    store.close()
