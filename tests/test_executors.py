"""The local executor's worker processes: really at once, one failure per dead worker, errors come back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from smnas_trt.errors import DataError
from smnas_trt.search.executors import LocalExecutor, WorkerDied


def rendezvous(job: tuple[str, str, str]) -> str:
    """Say this job started, then wait for the other one: only finishes when both run at the same time."""
    folder, me, other = job
    Path(folder, f"{me}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path(folder, f"{other}.started").exists():
        if time.monotonic() > deadline:
            return f"{me}: {other} never started while I ran"
        time.sleep(0.01)
    return f"{me}: met {other}"


def die_or_answer(job: str) -> str:
    if job == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if job == "raise":
        raise DataError("data: instances_train.json is missing")
    return f"{job} from {os.getpid()}"


def test_two_jobs_that_wait_for_each_other_both_finish(tmp_path: Path) -> None:
    pool = LocalExecutor(max_parallel=2, threads_per_task=1)
    jobs = [(str(tmp_path), "a", "b"), (str(tmp_path), "b", "a")]
    started: list[str] = []
    results = dict(pool.run(rendezvous, jobs, on_start=lambda job: started.append(job[1])))
    assert results == {jobs[0]: "a: met b", jobs[1]: "b: met a"}
    assert started == ["a", "b"]
    # Each ran in a worker process of its own, not in this one.
    pids = {Path(tmp_path, f"{n}.started").read_text() for n in "ab"}
    assert len(pids) == 2 and str(os.getpid()) not in pids


def test_a_sigkilled_worker_fails_its_own_job_only() -> None:
    pool = LocalExecutor(max_parallel=2, threads_per_task=1)
    results = dict(pool.run(die_or_answer, ["die", "ok", "raise", "ok2"]))
    assert isinstance(results["die"], WorkerDied) and "killed by SIGKILL" in str(results["die"])
    assert results["ok"].startswith("ok from ") and results["ok2"].startswith("ok2 from ")
    # An error raised in the job comes back as that error, with its message, not as a dead worker.
    assert isinstance(results["raise"], DataError) and "instances_train.json" in str(results["raise"])


def test_serial_jobs_run_in_this_process() -> None:
    pool = LocalExecutor(max_parallel=2, threads_per_task=1)
    results = dict(pool.run(die_or_answer, ["x"], parallel=False))
    assert results["x"] == f"x from {os.getpid()}"


def test_more_jobs_than_slots_all_finish() -> None:
    pool = LocalExecutor(max_parallel=2, threads_per_task=1)
    results = dict(pool.run(die_or_answer, ["job0", "job1", "job2"]))
    assert sorted(results) == ["job0", "job1", "job2"] and all(" from " in r for r in results.values())


def test_workers_are_kept_between_jobs_and_runs_until_close() -> None:
    pool = LocalExecutor(max_parallel=1, threads_per_task=1)
    first = dict(pool.run(die_or_answer, ["a", "b"]))
    again = dict(pool.run(die_or_answer, ["c"]))
    pids = {answer.split(" from ")[1] for answer in [*first.values(), *again.values()]}
    assert len(pids) == 1 and str(os.getpid()) not in pids  # one worker, no new interpreter per job
    worker = pool._idle[0].process
    pool.close()
    assert not worker.is_alive() and worker.exitcode == 0 and not pool._idle  # told to stop, not killed


def test_a_worker_killed_while_idle_is_replaced_without_failing_a_job() -> None:
    pool = LocalExecutor(max_parallel=1, threads_per_task=1)
    [(_, answer)] = list(pool.run(die_or_answer, ["a"]))
    idle = pool._idle[0].process
    os.kill(idle.pid or 0, signal.SIGKILL)
    idle.join(timeout=30)
    assert not idle.is_alive()
    [(_, again)] = list(pool.run(die_or_answer, ["b"]))
    assert again.startswith("b from ") and again.split(" from ")[1] != answer.split(" from ")[1]
    pool.close()
