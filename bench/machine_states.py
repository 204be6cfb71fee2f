"""How steady is this machine? One model's latency, block by block, for a minute or more.

One session of one model (ort-cpu, the profiler's defaults: 1 thread) timed without pause in blocks of
--block-s seconds, each block with the library's own timing loop (no warm-up after the first). Prints the
blocks' medians over time, how much of the time the machine spends in a fast state (blocks within 20% of
the fastest), how long it stays in one, and what a single timing of the profiler's budget (or longer)
would have read: the p10-p90 of such timings is the floor under any table's repeat difference, any drift
correction and any predictor's accuracy on this machine, whatever the software does.

Usage (alone on the machine: anything else running is part of what it measures):
  flock /tmp/smnas-bench.lock .venv/bin/python bench/machine_states.py --seconds 90
  .venv/bin/python bench/machine_states.py --arch "160x160/r18_16_11-21-2-21/none:C4/none/fcos:2x64"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from smnas_trt.profiling.cache import OnnxCache, default_onnx_cache
from smnas_trt.profiling.profile import model_job
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import TimingConfig
from smnas_trt.space import parse

DEFAULT_ARCH = "128x128/r18_16_11-21-2-21/none:C4/none/fcos:2x64"  # the demo front's fastest model
WINDOWS_S = (0.25, 1.0, 2.0, 4.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=DEFAULT_ARCH)
    parser.add_argument("--num-classes", type=int, default=11, help="the demo dataset's 10 classes + background")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--block-s", type=float, default=0.25, help="one block; 0.25 s is about one profiler timing")
    args = parser.parse_args(argv)
    spec = BackendSpec(threads=1)
    backend = spec.build()
    job = model_job(parse(args.arch), args.num_classes, spec.batch, spec.precision, "legacy")
    [graph] = job.build()  # one-stage archs: one graph (give a one-stage arch)
    with OnnxCache(default_onnx_cache()) as cache:
        info = cache.export(f"{job.cache_key}|{graph.name}", graph.module, graph.example_inputs, exporter="legacy",
                            precision="fp32", input_names=graph.input_names, output_names=graph.output_names)
    block = TimingConfig(warmup_runs=0, warmup_s=0.0, min_runs=1, max_runs=100_000, budget_s=args.block_s)
    with backend.load(info.path) as runner:
        runner.time(TimingConfig(warmup_runs=20, warmup_s=0.5, min_runs=1, max_runs=1, budget_s=0.0))
        medians: list[float] = []
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            medians.append(runner.time(block).median_ms)
    b = np.asarray(medians)
    fast = b < 1.2 * b.min()
    edges = np.flatnonzero(np.diff(fast.astype(int))) + 1
    stays = np.diff(np.r_[0, edges, len(b)]) * args.block_s
    print(f"{args.arch}: {len(b)} blocks of {args.block_s:g} s over {args.seconds:g} s (ort-cpu, 1 thread)")
    print(f"block medians: min {b.min():.2f} ms, p10 {np.percentile(b, 10):.2f}, median {np.median(b):.2f}, "
          f"p90 {np.percentile(b, 90):.2f}, max {b.max():.2f}")
    print(f"fast state (within 20% of the fastest block): {100 * fast.mean():.0f}% of the time; a state lasts "
          f"{np.median(stays):.2f} s (median), {stays.max():.1f} s at most")
    print("one timing of W seconds would read (p10 - p90 of the medians of W-second windows):")
    for window in WINDOWS_S:
        w = max(1, round(window / args.block_s))
        reads = [statistics.median(b[i:i + w]) for i in range(0, len(b) - w + 1, w)]
        lo, hi = np.percentile(reads, 10), np.percentile(reads, 90)
        print(f"  W = {window:4.2f} s: {lo:.2f} - {hi:.2f} ms ({100 * (hi / lo - 1):.0f}% apart, {len(reads)} windows)")
    print("series (ms): " + " ".join(f"{x:.2f}" for x in b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
