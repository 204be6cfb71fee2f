"""Benchmark: how repeatable are ort-cpu timings, how fast does profile-lut fill a table, and how
does ONNX Runtime compare with PyTorch eager on the same bodies.

Two independent passes (fresh export, fresh session) over the same 10 whole models of a space:
- median relative difference between the passes (target <= 3% for models over 5 ms)
- module entries and models timed per minute (export + session build + timing, end to end)
- ONNX Runtime vs PyTorch eager speed ratio on the same bodies (torch median / ORT median)

Run (never two benchmarks at once on a small box):
    flock /tmp/smnas-bench.lock .venv/bin/python bench/profile_stability.py --space demo --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.profile import PIECE_KINDS, profile_lut, sample_models
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import TimingConfig
from smnas_trt.space import load_space


class ItemClock:
    """Seconds spent per kind of entry ("module" / "model"), from profile_lut's on_item callbacks
    (entries are timed one after the other, so the time since the previous callback is this entry's)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def __call__(self, label: str) -> None:
        now = time.perf_counter()
        kind = label.split(" ", 1)[0]
        self.seconds[kind] = self.seconds.get(kind, 0.0) + now - self.last
        self.count[kind] = self.count.get(kind, 0) + 1
        self.last = now

    def start(self, _total: int) -> None:
        self.last = time.perf_counter()


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
    timing = TimingConfig(budget_s=args.budget_s)
    ort = BackendSpec(backend="ort-cpu", threads=args.threads)
    eager = BackendSpec(backend="torch", device="cpu", threads=args.threads)
    print(f"space {space.name}: {len(archs)} models, ort-cpu and torch at {args.threads} threads, {timing}")
    # Each pass is one profile_lut run with its own (temporary) ONNX cache: fresh export, fresh sessions.
    # No anchors and no repeat check: the passes themselves are the repeat check here.
    common = {"space": space, "archs": archs, "timing": timing, "anchors": 0, "repeat_check": False}

    with tempfile.TemporaryDirectory() as tmp:
        dbs = {name: Path(tmp) / f"{name}.db" for name in ("pass1", "pass2", "torch")}
        clock = ItemClock()
        first = profile_lut(out=dbs["pass1"], spec=ort, module_kinds=PIECE_KINDS, all_structures=False,
                            on_plan=clock.start, on_item=clock, **common)  # fmt: skip
        t_modules, t_models = clock.seconds.get("module", 0.0), clock.seconds.get("model", 0.0)
        for name, spec in (("pass2", ort), ("torch", eager)):
            report = profile_lut(out=dbs[name], spec=spec, module_kinds=(), **common)
            for failure in report.failures:
                print(f"  {name} failed: {failure}")
        medians = {}
        for name, path in dbs.items():
            with LatencyTable.open(path) as table:
                medians[name] = {r.arch: r.median_ms for r in table.model_rows("network")}

    print(f"\n{'arch':<64} {'pass1 ms':>9} {'pass2 ms':>9} {'rel diff':>8} {'torch ms':>9} {'torch/ort':>9}")
    rel_all, rel_big, ratios = [], [], []
    for arch in medians["pass1"]:
        if arch not in medians["pass2"] or arch not in medians["torch"]:
            continue
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
        f"module entries: {first.modules_timed} in {t_modules:.0f} s = "
        f"{60 * first.modules_timed / max(t_modules, 1e-9):.1f}/min"
    )
    print(f"models (network scope): {len(medians['pass1'])} in {t_models:.0f} s = "
          f"{60 * len(medians['pass1']) / max(t_models, 1e-9):.1f}/min")  # fmt: skip
    print(
        f"PyTorch eager / ONNX Runtime median time ratio: {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}); > 1 means ORT is faster"
    )
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
