"""Where candidate work runs: worker processes on this machine, this process, or a Ray cluster.

Every executor takes a top-level function and a list of jobs and yields `(job, result_or_exception)`
as jobs finish. `on_start(job)` is called right before a job is handed out, so the driver can mark
the candidate as started in the run store first. `parallel=False` runs the jobs one at a time (the
search times latency that way, with no training in flight, so timings are not disturbed).

- `LocalExecutor` (the default): up to `max_parallel` spawned worker processes, kept from one job to the
  next, each with `threads_per_task` torch threads and, where there are GPUs, its own GPU. On a CPU
  machine one-thread workers side by side do far more work than one process using every core
  (bench/train_parallel.py). A worker that dies (OOM killer, SIGKILL) fails its own job only.
- `InProcessExecutor`: one job after another in the driver's process (debugging, tests).
- `RayExecutor`: one Ray task per job, on a cluster (multi-node).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
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
    except (OSError, AttributeError):  # not Linux: an orphan finishes its job, then exits (EOF on its pipe)
        return
    if os.getppid() != parent_pid:  # the driver died before the request took effect
        os._exit(1)


def _serve(threads: int | None, gpu: int | None, parent_pid: int, tasks: Connection, results: Connection) -> None:
    """A worker process's body: set its threads and GPU once, then run the jobs it is sent, one at a time,
    sending back each result or error, until it is told to stop (None) or the driver goes away."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops the workers
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # read when CUDA initialises, i.e. inside a job
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            task = tasks.recv()
        except EOFError:
            return
        if task is None:
            return
        fn, job = task
        try:
            result: Any = fn(job)
        except BaseException as e:
            result = e
        try:
            pickle.dumps(result)
        except Exception:
            result = RuntimeError(f"{type(result).__name__}: {str(result)[:300]}")  # an unpicklable error, as text
        results.send(result)


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


class _Worker:
    """One spawned worker process and its two pipes; it keeps its imports (torch, the dataset code) from one
    job to the next."""

    def __init__(self, context: Any, threads: int | None, gpu: int | None) -> None:
        self.gpu = gpu
        task_receive, self.tasks = context.Pipe(duplex=False)
        self.results, result_send = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, name="smnas-worker",
                                       args=(threads, gpu, os.getpid(), task_receive, result_send))
        self.process.start()
        task_receive.close()
        result_send.close()  # the child holds the only writing end: EOF here means it is gone

    def stop(self, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(OSError):  # already gone
                self.tasks.send(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.tasks.close()
        self.results.close()


def _stop_all(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().stop()


class LocalExecutor:
    """Jobs in spawned worker processes on this machine, up to `max_parallel` at once.

    Workers are started on demand and kept between jobs (and between `run` calls, until `close`), so a job
    does not pay for a fresh interpreter importing torch (about 6 s a job on a 2-core machine,
    bench/worker_reuse.py). A worker that dies
    (OOM killer, SIGKILL) takes only the job it was running with it (reported as WorkerDied) and is replaced;
    a job that raises is reported with its error and leaves the worker running. With GPUs, each worker owns
    one GPU (CUDA_VISIBLE_DEVICES). Jobs with `parallel=False` run in this process, one at a time, while the
    idle workers wait without using the CPU (the search times latency that way).
    """

    name = "local"

    def __init__(self, max_parallel: int, threads_per_task: int | None, gpus: int = 0) -> None:
        self.max_parallel = max_parallel
        self.threads_per_task = threads_per_task
        self.gpus = gpus
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        # An executor dropped without close() leaves no process; at exit this runs before multiprocessing
        # joins its children (exitpriority >= 0), which would otherwise wait for idle workers forever.
        multiprocessing.util.Finalize(self, _stop_all, args=(self._idle,), exitpriority=10)

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

    def _take_worker(self, use_gpu: bool, busy: list[_Worker]) -> _Worker:
        """An idle worker of the right kind (a GPU one for GPU jobs), or a new one."""
        wanted_gpu = use_gpu and self.gpus > 0
        for w in [w for w in self._idle if not w.process.is_alive()]:  # died while idle (OOM killer)
            self._idle.remove(w)
            w.stop(kill=True)
        for i, w in enumerate(self._idle):
            if (w.gpu is not None) == wanted_gpu:
                return self._idle.pop(i)
        gpu = None
        if wanted_gpu:
            taken = {w.gpu for w in [*self._idle, *busy]}
            gpu = next(g for g in range(self.gpus) if g not in taken)
        # Keep at most max_parallel processes alive: drop an idle worker of the other kind first.
        while self._idle and len(self._idle) + len(busy) >= self.max_parallel:
            self._idle.pop(0).stop()
        return _Worker(self._context, self.threads_per_task, gpu)

    def _run_workers(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None,
                     use_gpu: bool) -> Iterator[tuple[J, Any]]:
        queue = list(jobs)
        limit = min(self.max_parallel, self.gpus) if use_gpu and self.gpus else self.max_parallel
        running: dict[Connection, tuple[J, _Worker]] = {}  # result pipe -> (job, worker)
        try:
            while queue or running:
                while queue and len(running) < limit:
                    job = queue.pop(0)
                    worker = self._take_worker(use_gpu, [w for _, w in running.values()])
                    if on_start:
                        on_start(job)
                    worker.tasks.send((fn, job))
                    running[worker.results] = (job, worker)
                for ready in wait(list(running)):
                    assert isinstance(ready, Connection)
                    job, worker = running.pop(ready)
                    try:
                        result: Any = ready.recv()
                    except EOFError:
                        worker.process.join()
                        result = _death(worker.process.exitcode)
                        worker.stop(kill=True)
                    else:
                        self._idle.append(worker)
                    yield job, result
        finally:
            for _job, worker in running.values():  # interrupted: no orphan keeps training
                worker.stop(kill=True)

    def close(self) -> None:
        _stop_all(self._idle)


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
