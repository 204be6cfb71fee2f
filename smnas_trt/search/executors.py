"""Where candidate work runs: worker processes on this machine, this process, or a Ray cluster.

Every executor takes a top-level function and a list of jobs and yields `(job, result_or_exception)`
as jobs finish. `on_start(job)` is called right before a job is handed out, so the driver can mark
the candidate as started in the run store first. `parallel=False` runs the jobs one at a time (the
search times latency that way, with no training in flight, so timings are not disturbed).

- `LocalExecutor` (the default): each job in a fresh worker process (spawn start method), up to
  `max_parallel` at once, each with `threads_per_task` torch threads and, where there are GPUs, its
  own GPU. On a CPU machine one-thread workers side by side do far more work than one process using
  every core (bench/train_parallel.py). A worker that dies (OOM killer, SIGKILL) fails its own job only.
- `InProcessExecutor`: one job after another in the driver's process (debugging, tests).
- `RayExecutor`: one Ray task per job, on a cluster (multi-node).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, TypeVar

from smnas_trt.errors import ConfigError, SearchError, SmnasError, first_line
from smnas_trt.search.config import ExecutorConfig

J = TypeVar("J")


class WorkerDied(SmnasError):
    """A worker process ended without a result (killed by a signal, out of memory, or exited)."""


class Executor(Protocol):
    name: str
    threads_per_task: int | None  # torch threads each training gets (None: torch's default)

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]: ...

    def close(self) -> None: ...


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """CUDA GPUs torch sees (0 without a CUDA build or a GPU). Does not create a CUDA context."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _run_inline(fn: Callable[[Any], Any], jobs: Sequence[J],
                on_start: Callable[[J], None] | None) -> Iterator[tuple[J, Any]]:
    for job in jobs:
        if on_start:
            on_start(job)
        try:
            result: Any = fn(job)
        except Exception as e:  # reported per candidate; KeyboardInterrupt still stops the run
            result = e
        yield job, result


class InProcessExecutor:
    """Runs jobs one after another in this process; exceptions come back as results."""

    name = "inprocess"

    def __init__(self, threads_per_task: int | None = None) -> None:
        self.threads_per_task = threads_per_task

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]:
        return _run_inline(fn, jobs, on_start)

    def close(self) -> None:
        pass


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker when the driver dies (Linux), so a SIGKILLed search leaves no orphan
    training that would write into the run directory beside the resumed one."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: orphans finish their one job, then exit
        return
    if os.getppid() != parent_pid:  # the driver died before the request took effect
        os._exit(1)


def _worker(fn: Callable[[Any], Any], job: Any, threads: int | None, gpu: int | None, parent_pid: int,
            conn: Connection) -> None:
    """A worker process's body: set its threads and GPU, run one job, send back the result or the error."""
    _die_with_parent(parent_pid)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # read when CUDA initialises, i.e. inside the job
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        result: Any = fn(job)
    except BaseException as e:
        result = e
    try:
        pickle.dumps(result)
    except Exception:
        result = RuntimeError(f"{type(result).__name__}: {str(result)[:300]}")  # an unpicklable error, as text
    try:
        conn.send(result)
    finally:
        conn.close()


def _death(exitcode: int | None) -> WorkerDied:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = f"killed by {name}" + (" (out of memory?)" if -exitcode == signal.SIGKILL else "")
    else:
        why = f"exited with code {exitcode} before sending a result"
    return WorkerDied(f"worker process died: {why}")


class LocalExecutor:
    """Jobs in spawned worker processes on this machine, up to `max_parallel` at once.

    A fresh process per job keeps jobs apart: a worker that dies takes only its own job with it
    (reported as WorkerDied), and nothing one training leaves behind (threads, memory) reaches the next.
    With GPUs, each in-flight job gets one GPU of its own (CUDA_VISIBLE_DEVICES). Jobs with
    `parallel=False` run in this process, one at a time.
    """

    name = "local"

    def __init__(self, max_parallel: int, threads_per_task: int | None, gpus: int = 0) -> None:
        self.max_parallel = max_parallel
        self.threads_per_task = threads_per_task
        self.gpus = gpus
        self._context = multiprocessing.get_context("spawn")

    @classmethod
    def from_config(cls, config: ExecutorConfig, cpus: int | None = None, gpus: int | None = None) -> LocalExecutor:
        """Defaults from this machine; `max_parallel` beyond what it has is refused with one line."""
        cpus = cpus or usable_cpus()
        gpus = visible_gpus() if gpus is None else gpus
        threads = config.threads_per_task or (max(1, cpus // gpus) if gpus else 1)
        have = gpus if gpus else max(1, cpus // threads)
        what = f"{gpus} GPU(s)" if gpus else f"{cpus} usable CPU core(s) at {threads} thread(s) per task"
        if config.max_parallel is not None and config.max_parallel > have:
            raise ConfigError(f"executor.max_parallel: {config.max_parallel} is more than this machine runs at once "
                              f"({have}: {what}); lower it or leave it unset")
        if not gpus and threads > cpus:
            raise ConfigError(f"executor.threads_per_task: {threads} is more than the {cpus} usable CPU core(s)")
        return cls(config.max_parallel or have, threads, gpus)

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]:
        if not parallel:
            return _run_inline(fn, jobs, on_start)
        return self._run_workers(fn, jobs, on_start, use_gpu)

    def _run_workers(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None,
                     use_gpu: bool) -> Iterator[tuple[J, Any]]:
        queue = list(jobs)
        free_gpus = list(range(self.gpus)) if use_gpu else []
        running: dict[Connection, tuple[J, Any, int | None]] = {}  # result pipe -> (job, process, gpu)
        try:
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    job = queue.pop(0)
                    gpu = free_gpus.pop(0) if free_gpus else None
                    if on_start:
                        on_start(job)
                    receive, send = self._context.Pipe(duplex=False)
                    process = self._context.Process(target=_worker, name="smnas-worker",
                                                    args=(fn, job, self.threads_per_task, gpu, os.getpid(), send))
                    process.start()
                    send.close()  # the child holds the only writing end: EOF here means it is gone
                    running[receive] = (job, process, gpu)
                for ready in wait(list(running)):
                    assert isinstance(ready, Connection)
                    job, process, gpu = running.pop(ready)
                    try:
                        result: Any = ready.recv()
                    except EOFError:
                        result = None
                    ready.close()
                    process.join()
                    if result is None:
                        result = _death(process.exitcode)
                    if gpu is not None:
                        free_gpus.append(gpu)
                    yield job, result
        finally:
            for conn, (_job, process, _gpu) in running.items():  # interrupted: no orphan keeps training
                process.kill()
                process.join()
                conn.close()

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per job on the cluster at `address` (or a local cluster started here).

    Tasks ask for `threads_per_task` CPUs (default 1) and, when the cluster has GPUs, `gpus_per_task`
    GPUs (`auto`: 1). Jobs read the dataset and write checkpoints through paths in the job, so on a
    multi-node cluster the run directory and data must be on a shared filesystem.
    """

    name = "ray"

    def __init__(self, config: ExecutorConfig, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise SearchError("executor: ray is not installed; pip install 'smnas-trt[ray]' or use "
                              "executor.kind: inprocess") from None
        self.ray = ray
        self.config = config
        self.cpus_per_task = config.threads_per_task or 1
        self.threads_per_task: int | None = self.cpus_per_task
        self._owns_cluster = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning",
                                      "log_to_driver": False}
            if config.address:
                kwargs["address"] = config.address
            else:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError) as e:
                raise SearchError(f"executor: cannot reach Ray at {config.address or 'a local cluster'} "
                                  f"({first_line(e)})") from None
            self._owns_cluster = True
        resources = ray.cluster_resources()
        self.cluster_gpus = float(resources.get("GPU", 0.0))
        self.cluster_cpus = float(resources.get("CPU", 1.0))

    def gpus_per_task(self, use_gpu: bool) -> float:
        if not use_gpu or self.cluster_gpus <= 0:
            return 0.0
        g = self.config.gpus_per_task
        return 1.0 if g == "auto" else float(g)

    def slots(self, use_gpu: bool) -> int:
        gpus = self.gpus_per_task(use_gpu)
        by_cpu = int(self.cluster_cpus // self.cpus_per_task) or 1
        by_gpu = int(self.cluster_gpus // gpus) if gpus else by_cpu
        return max(1, min(by_cpu, by_gpu, self.config.max_parallel or by_cpu))

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]:
        ray = self.ray
        remote = ray.remote(fn).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task(use_gpu),
                                        max_retries=0)
        limit = self.slots(use_gpu) if parallel else 1
        queue = list(jobs)
        in_flight: dict[Any, J] = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    job = queue.pop(0)
                    if on_start:
                        on_start(job)
                    in_flight[remote.remote(job)] = job
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    job = in_flight.pop(ref)
                    try:
                        result: Any = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        result = cause if isinstance(cause, BaseException) else e
                    except ray.exceptions.RayError as e:
                        result = e
                    yield job, result
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns_cluster:
            self.ray.shutdown()


def make_executor(config: ExecutorConfig) -> Executor:
    if config.kind == "ray":
        return RayExecutor(config)
    if config.kind == "inprocess":
        return InProcessExecutor(config.threads_per_task)
    return LocalExecutor.from_config(config)
