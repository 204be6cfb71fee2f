"""Where candidate work runs: in this process, or one Ray task per candidate on a Ray cluster.

Both executors take a top-level function and a list of jobs and yield `(job, result_or_exception)`
as jobs finish. `on_start(job)` is called right before a job is handed out, so the driver can mark
the candidate as started in the run store first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from smnas_trt.errors import SearchError
from smnas_trt.search.config import ExecutorConfig

J = TypeVar("J")


class Executor(Protocol):
    name: str

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Runs jobs one after another in this process; exceptions come back as results."""

    name = "inprocess"

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]:
        for job in jobs:
            if on_start:
                on_start(job)
            try:
                result: Any = fn(job)
            except Exception as e:  # reported per candidate; KeyboardInterrupt still stops the run
                result = e
            yield job, result

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per job on the cluster at `address` (or a local cluster started here).

    Tasks ask for `cpus_per_task` CPUs and, when the cluster has GPUs, `gpus_per_task` GPUs
    (`auto`: 1). Jobs read the dataset and write checkpoints through paths in the job, so on a
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
                                  f"({str(e).splitlines()[0]})") from None
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
        by_cpu = int(self.cluster_cpus // self.config.cpus_per_task) or 1
        by_gpu = int(self.cluster_gpus // gpus) if gpus else by_cpu
        return max(1, min(by_cpu, by_gpu, self.config.max_parallel or by_cpu))

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[J], on_start: Callable[[J], None] | None = None,
            parallel: bool = True, use_gpu: bool = True) -> Iterator[tuple[J, Any]]:
        ray = self.ray
        remote = ray.remote(fn).options(num_cpus=self.config.cpus_per_task, num_gpus=self.gpus_per_task(use_gpu),
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
    return InProcessExecutor()
