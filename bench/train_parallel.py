"""Benchmark: N one-thread trainings side by side against one N-thread training, same arch and data.

This is what sets the search's executor defaults (`executor.threads_per_task: 1`, `max_parallel`: one
per core). Each round runs, through the search's own worker pool and job function:
  A. N trainings at once, one torch thread each (`LocalExecutor(max_parallel=N, threads_per_task=1)`);
  B. one training with N torch threads (`LocalExecutor(max_parallel=1, threads_per_task=N)`).
Every training is one epoch over the same `--images` training images (then a tiny evaluation, not
counted). Printed per round: aggregate training images/s of A (sum over its trainings, from the
trainer's own epoch time), images/s of B, the ratio A/B, and each phase's wall time (the first
round's includes starting the workers, which are kept for later rounds); then the median ratio over
the rounds.

Run alone:  flock /tmp/smnas-bench.lock .venv/bin/python bench/train_parallel.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the workers: no spinning OpenMP threads

from smnas_trt.data import generate_demo
from smnas_trt.search.executors import LocalExecutor, usable_cpus
from smnas_trt.search.tasks import TrainJob, TrainOutcome, train_candidate

DEFAULT_ARCH = "128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64"


def jobs(n: int, arch: str, data: Path, out: Path, images: int, threads: int) -> list[TrainJob]:
    recipe = {"batch_size": 8, "lr": 3e-3, "warmup_iters": 50, "max_train_images": images}
    return [TrainJob(f"{i:010x}", arch, str(data), str(out / f"job{i}"), 1, 1, i, recipe, "val", 8, 8, "cpu",
                     threads) for i in range(n)]


def phase(pool: LocalExecutor, batch: list[TrainJob]) -> tuple[float, float, list[float]]:
    """(aggregate images/s, wall seconds, per-training images/s) of running `batch` on `pool`."""
    start = time.perf_counter()
    results = [r for _, r in pool.run(train_candidate, batch)]
    wall = time.perf_counter() - start
    failed = [r for r in results if not isinstance(r, TrainOutcome)]
    if failed:
        sys.exit(f"a training failed: {failed[0]}")
    rates = []
    for job, r in zip(batch, results, strict=True):
        images = job.training["max_train_images"]
        rates.append(images / r.train_seconds)
    return sum(rates), wall, rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("-n", type=int, default=usable_cpus(), help="trainings side by side (default: usable cores)")
    p.add_argument("--images", type=int, default=600, help="training images per training (one epoch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="/tmp/smnas-bench/train_parallel/data")
    p.add_argument("--out", default="/tmp/smnas-bench/train_parallel/runs")
    args = p.parse_args()

    data = generate_demo(args.data, n_train=max(args.images, 200), n_val=40, size=160, seed=0)
    print(f"arch {args.arch}\n{usable_cpus()} usable cores, load {os.getloadavg()[0]:.2f}; {args.images} images per "
          f"training, {args.rounds} rounds; A: {args.n} x 1 thread at once, B: 1 x {args.n} threads")
    side_by_side = LocalExecutor(max_parallel=args.n, threads_per_task=1)
    one_wide = LocalExecutor(max_parallel=1, threads_per_task=args.n)
    ratios = []
    print(f"{'round':>5} {'A img/s':>8} {'(each)':>14} {'A wall s':>8} {'B img/s':>8} {'B wall s':>8} {'A/B':>6}")
    for r in range(args.rounds):
        out = Path(args.out) / f"round{r}"
        a, a_wall, each = phase(side_by_side, jobs(args.n, args.arch, data, out / "a", args.images, 1))
        b, b_wall, _ = phase(one_wide, jobs(1, args.arch, data, out / "b", args.images, args.n))
        ratios.append(a / b)
        print(f"{r:5d} {a:8.1f} {'+'.join(f'{x:.1f}' for x in each):>14} {a_wall:8.1f} {b:8.1f} {b_wall:8.1f} "
              f"{a / b:6.2f}", flush=True)
    print(f"\nmedian A/B: {statistics.median(ratios):.2f}x the training throughput from {args.n} one-thread trainings "
          f"side by side (min {min(ratios):.2f}, max {max(ratios):.2f}); load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
