"""Why the search never times beside a training: the same models timed quiet and beside one training.

The search drains its trainings before it times (timings run in the driver, between rounds of training;
docs/ARCHITECTURE.md "Processes"). This measures what that buys on this machine: `--models` demo-space
models are timed with the profiler's defaults (ort-cpu, 1 thread, fresh sessions, the default timing
budget) in alternating rounds, quiet, beside one one-thread training in a worker process, quiet, beside
it again. Printed: how far two quiet rounds differ (the machine's own repeat error), and how far a round
beside a training reads from the quiet rounds around it.

Usage (alone on the machine: anything else running is part of what it measures):
  flock /tmp/smnas-bench.lock .venv/bin/python bench/timing_beside_training.py --models 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

from smnas_trt.profiling.cache import OnnxCache
from smnas_trt.profiling.profile import model_job, sample_models, time_jobs
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import TimingConfig
from smnas_trt.space import load_space

TRAIN_ARCH = "128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64"  # the README's reference training


def _train_forever(data: str, out: str) -> None:
    """A worker's one-thread training, as the search runs it (until it is terminated)."""
    import torch

    from smnas_trt.training import TrainConfig, train_arch

    torch.set_num_threads(1)
    train_arch(TRAIN_ARCH, data, out, TrainConfig(epochs=1000, batch_size=8, threads=1, progress=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--settle-s", type=float, default=20.0, help="wait this long after starting the training")
    args = parser.parse_args(argv)
    from smnas_trt.data import generate_demo

    space = load_space("demo")
    archs = sample_models(space, args.models, seed=args.seed)
    spec = BackendSpec(threads=1)
    backend = spec.build()
    timing = TimingConfig()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="smnas-beside-") as tmp, OnnxCache(Path(tmp) / "onnx") as cache:
        data = generate_demo(Path(tmp) / "data", n_train=400, n_val=4, size=128, seed=0)
        jobs = [model_job(a, 11, spec.batch, spec.precision, "legacy") for a in archs]
        for _ in time_jobs(backend, jobs, TimingConfig.quick(), cache):  # export everything first
            pass

        def round_ms() -> dict[str, float]:
            return {r.job.name: r.stats.median_ms for r in time_jobs(backend, jobs, timing, cache) if r.stats}

        rounds: list[tuple[str, dict[str, float]]] = []
        for label in ("quiet", "beside a training", "quiet", "beside a training"):
            trainer = None
            if label != "quiet":
                trainer = context.Process(target=_train_forever, args=(str(data), str(Path(tmp) / "train")))
                trainer.start()
                time.sleep(args.settle_s)  # imports, data, first iterations
                if not trainer.is_alive():
                    print(f"the training process ended early (exit code {trainer.exitcode})")
                    return 1
            t0 = time.perf_counter()
            rounds.append((label, round_ms()))
            print(f"round {len(rounds)} ({label}): {len(rounds[-1][1])} models in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            if trainer is not None:
                trainer.terminate()
                trainer.join()
    q1, b1, q2, b2 = (r for _, r in rounds)
    names = [n for n in q1 if all(n in r for r in (b1, q2, b2))]

    def diffs(a: dict[str, float], b: dict[str, float]) -> list[float]:
        return [abs(b[n] / a[n] - 1) for n in names]

    def ratios(busy: dict[str, float]) -> list[float]:
        return [busy[n] / statistics.mean((q1[n], q2[n])) for n in names]

    print(f"\n{len(names)} demo-space models, ort-cpu 1 thread, the profiler's default timing "
          f"({timing.budget_s:g} s budget, fresh session each)")
    print(f"{'model':62s} {'quiet 1':>8s} {'beside 1':>9s} {'quiet 2':>8s} {'beside 2':>9s}")
    for n in names:
        print(f"{n.split(':', 1)[1][:62]:62s} {q1[n]:8.2f} {b1[n]:9.2f} {q2[n]:8.2f} {b2[n]:9.2f}")
    quiet = diffs(q1, q2)
    beside = [*ratios(b1), *ratios(b2)]
    print(f"two quiet rounds differ by: median {100 * statistics.median(quiet):.1f}%, max {100 * max(quiet):.1f}%")
    print(f"beside a training / mean of the quiet rounds: median {statistics.median(beside):.3f}x, "
          f"range {min(beside):.3f}x - {max(beside):.3f}x; |difference| median "
          f"{100 * statistics.median(abs(r - 1) for r in beside):.1f}%")
    print(f"two rounds beside a training differ by: median {100 * statistics.median(diffs(b1, b2)):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
