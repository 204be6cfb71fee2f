"""Benchmark: architectures sampled + encoded + parsed per second, and detector build time.

Target: >= 50,000 archs/s, so the predictor gate never waits on the space.
Run: .venv/bin/python bench/space_throughput.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from smnas_trt.models import build_detector
from smnas_trt.space import load_space, parse


def sample_encode_parse_rate(space_name: str, n: int, repeats: int) -> float:
    space = load_space(space_name)
    rng = random.Random(0)
    for _ in range(1000):  # fills the code-pattern caches
        space.sample_arch(rng)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            arch = space.sample_arch(rng)
            if parse(str(arch)) != arch:
                raise AssertionError(f"round trip failed for {arch}")
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def build_seconds(space_name: str, count: int) -> list[tuple[str, float]]:
    space = load_space(space_name)
    rng = random.Random(0)
    out = []
    for _ in range(count):
        arch = space.sample_structure(rng)
        start = time.perf_counter()
        build_detector(arch, num_classes=11)
        out.append((str(arch), time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="archs per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--builds", type=int, default=5, help="detectors to build per space")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{'space':<8}{'archs/s (sample+encode+parse)':>32}{'target':>10}")
    for name in ("demo", "paper"):
        rate = sample_encode_parse_rate(name, args.n, args.repeats)
        print(f"{name:<8}{rate:>32,.0f}{'>= 50,000':>10}")
    for name in ("demo", "paper"):
        times = build_seconds(name, args.builds)
        med = statistics.median(t for _, t in times)
        print(f"\n{name}: detector build time, median {med * 1000:.0f} ms over {len(times)} structures")
        for text, seconds in times:
            print(f"  {seconds * 1000:8.0f} ms  {text}")


if __name__ == "__main__":
    main()
