"""Benchmark: what a kept worker process saves per search job, against a fresh worker per job.

The search's `LocalExecutor` keeps its spawned workers from one job to the next, so a job does not pay
for a new interpreter importing torch, torchvision and the training code. This times the same real job
(`search.tasks.train_candidate`: one epoch over --images demo images, then the evaluation) both ways,
alternating, in one run:
  fresh: a new `LocalExecutor` per job, so the job starts a new worker (what every job paid before);
  kept:  one `LocalExecutor` for all jobs, its worker started before the first timed job.
Printed: each job's wall time (from handing it out to its result), the median of each, their
difference (the start-up a kept worker saves per job) and the trainer's own training seconds beside
them, which do not include the start-up.

Run alone:  flock /tmp/smnas-bench.lock .venv/bin/python bench/worker_reuse.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the workers: no spinning OpenMP threads

from smnas_trt.data import generate_demo
from smnas_trt.search.executors import LocalExecutor
from smnas_trt.search.tasks import TrainJob, TrainOutcome, train_candidate

DEFAULT_ARCH = "128x128/r18_16_11-21-2-21/none:C4/none/fcos:2x64"  # the demo front's model


def one_job(pool: LocalExecutor, job: TrainJob) -> tuple[float, float]:
    """(wall seconds from handing the job out to its result, the trainer's training seconds)."""
    start = time.perf_counter()
    [(_, result)] = list(pool.run(train_candidate, [job]))
    wall = time.perf_counter() - start
    if not isinstance(result, TrainOutcome):
        sys.exit(f"the training failed: {result}")
    return wall, result.train_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("--images", type=int, default=64, help="training images per job (one epoch)")
    p.add_argument("--rounds", type=int, default=4, help="jobs of each kind")
    p.add_argument("--data", default="/tmp/smnas-bench/worker_reuse/data")
    p.add_argument("--out", default="/tmp/smnas-bench/worker_reuse/runs")
    args = p.parse_args()

    data = generate_demo(args.data, n_train=max(args.images, 64), n_val=16, size=160, seed=0)
    shutil.rmtree(args.out, ignore_errors=True)  # every job trains from scratch
    recipe = {"batch_size": 8, "lr": 3e-3, "warmup_iters": 4, "max_train_images": args.images}

    def job(i: int) -> TrainJob:
        return TrainJob(f"{i:010x}", args.arch, str(data), str(Path(args.out) / f"job{i}"), 1, 1, 0, recipe,
                        "val", 8, 8, "cpu", 1)

    kept = LocalExecutor(max_parallel=1, threads_per_task=1)
    one_job(kept, job(999))  # starts the kept worker; not timed
    print(f"arch {args.arch}, {args.images} images, one epoch + evaluation per job, 1 thread; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'round':>5} {'fresh wall s':>13} {'(train s)':>10} {'kept wall s':>12} {'(train s)':>10}")
    fresh_walls, kept_walls = [], []
    for r in range(args.rounds):
        fresh = LocalExecutor(max_parallel=1, threads_per_task=1)
        f_wall, f_train = one_job(fresh, job(2 * r))
        fresh.close()
        k_wall, k_train = one_job(kept, job(2 * r + 1))
        fresh_walls.append(f_wall)
        kept_walls.append(k_wall)
        print(f"{r:5d} {f_wall:13.1f} {f_train:10.1f} {k_wall:12.1f} {k_train:10.1f}", flush=True)
    kept.close()
    f_med, k_med = statistics.median(fresh_walls), statistics.median(kept_walls)
    print(f"\nmedian wall per job: fresh worker {f_med:.1f} s, kept worker {k_med:.1f} s: a kept worker saves "
          f"{f_med - k_med:.1f} s per job; load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
