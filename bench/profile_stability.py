"""Benchmark: how repeatable are ort-cpu timings, how fast does profile-lut fill a table, and how
does ONNX Runtime compare with PyTorch eager on the same bodies.

Two independent passes (fresh export, fresh session) over the same 10 whole models of a space:
- median relative difference between the passes (target <= 3% for models over 5 ms)
- module entries and models timed per minute (export + session build + timing, end to end)
- ONNX Runtime vs PyTorch eager speed ratio on the same bodies (torch median / ORT median)

Run (never two benchmarks at once on a small box):
    flock /tmp/smnas-bench.lock .venv/bin/python bench/profile_stability.py --space demo --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.profile import default_hooks, profile_lut, sample_models
from smnas_trt.profiling.timing import TimingConfig
from smnas_trt.space import load_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="demo")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--budget-s", type=float, default=1.0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    archs = sample_models(space, args.models, args.seed)
    pieces, body, _ = default_hooks()
    timing = TimingConfig(budget_s=args.budget_s)
    opts = {"threads": args.threads}
    print(f"space {space.name}: {len(archs)} models, ort-cpu and torch at {args.threads} threads, {timing}")

    with tempfile.TemporaryDirectory() as tmp:
        dbs = {name: Path(tmp) / f"{name}.db" for name in ("pass1", "pass2", "torch")}
        t0 = time.perf_counter()
        first = profile_lut(space=space, out=dbs["pass1"], module_pieces=pieces, network_body=None, archs=archs,
                            all_structures=False, timing=timing, backend_opts=opts)  # fmt: skip
        t_modules = time.perf_counter() - t0
        t0 = time.perf_counter()
        profile_lut(space=space, out=dbs["pass1"], module_pieces=None, network_body=body, archs=archs, resume=True,
                    timing=timing, backend_opts=opts)  # fmt: skip
        t_models = time.perf_counter() - t0
        profile_lut(space=space, out=dbs["pass2"], module_pieces=None, network_body=body, archs=archs,
                    timing=timing, backend_opts=opts)  # fmt: skip
        profile_lut(space=space, out=dbs["torch"], module_pieces=None, network_body=body, archs=archs,
                    timing=timing, backend_name="torch", backend_opts=opts)  # fmt: skip
        medians = {}
        for name, path in dbs.items():
            with LatencyTable.open(path) as table:
                medians[name] = {r.arch: r.median_ms for r in table.model_rows("network")}

    print(f"\n{'arch':<64} {'pass1 ms':>9} {'pass2 ms':>9} {'rel diff':>8} {'torch ms':>9} {'torch/ort':>9}")
    rel_all, rel_big, ratios = [], [], []
    for arch in medians["pass1"]:
        a, b, t = medians["pass1"][arch], medians["pass2"][arch], medians["torch"][arch]
        rel = abs(a - b) / ((a + b) / 2)
        rel_all.append(rel)
        if min(a, b) > 5.0:
            rel_big.append(rel)
        ratios.append(t / a)
        print(f"{arch[:64]:<64} {a:9.3f} {b:9.3f} {rel:8.2%} {t:9.3f} {t / a:9.2f}")

    print(f"\nmedian relative difference between passes, all models: {statistics.median(rel_all):.2%}")
    if rel_big:
        print(f"median relative difference, models over 5 ms ({len(rel_big)}): {statistics.median(rel_big):.2%}"
              f"  (target <= 3%)")  # fmt: skip
    else:
        print("no model over 5 ms in this sample")
    print(
        f"module entries: {first.modules_timed} in {t_modules:.0f} s = {60 * first.modules_timed / t_modules:.1f}/min"
    )
    print(f"models (network scope): {len(medians['pass1'])} in {t_models:.0f} s = "
          f"{60 * len(medians['pass1']) / t_models:.1f}/min")  # fmt: skip
    print(
        f"PyTorch eager / ONNX Runtime median time ratio: {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}); > 1 means ORT is faster"
    )
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
