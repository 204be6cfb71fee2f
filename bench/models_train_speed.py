"""Benchmark: CPU training step (forward + backward + SGD step) time per image of demo-space detectors.

Builds each demo structure with the space's default module genes (from scratch: GN + WS), feeds
batches of random images with three boxes each, and prints ms/image and images/s (median over
--steps timed steps after one warm-up step).
Run: flock /tmp/smnas-bench.lock .venv/bin/python bench/models_train_speed.py [--all] [--size 128x128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from smnas_trt.models import build_detector
from smnas_trt.space import load_space


def _batch(n: int, w: int, h: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, h, w, generator=gen) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.1 + 0.4 * torch.rand(3, 2, generator=gen)) * torch.tensor([w, h])
        boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 11, (3,), generator=gen)})
    return images, targets


def step_seconds(arch, batch: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    model = build_detector(arch, num_classes=11).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = _batch(batch, arch.size.width, arch.size.height, gen)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        if i:  # the first step warms up allocators and caches
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="128x128", help="one of the demo sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="every demo structure (default: each family x head "
                        "with FPN P3-P6, and each neck with ResNet-18)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space("demo")
    archs = [a for a in space.iter_structures() if str(a.size) == args.size]
    if not args.all:
        archs = [a for a in archs if str(a.neck).startswith("fpn:P3-P6") or a.backbone.depth == 18]
    print(f"{len(archs)} structures at {args.size}, batch {args.batch}, {args.threads} threads")
    print(f"{'ms/img':>8}{'img/s':>8}  arch")
    rates = []
    for arch in archs:
        seconds = step_seconds(arch, args.batch, args.steps)
        rates.append(args.batch / seconds)
        print(f"{seconds / args.batch * 1000:8.1f}{args.batch / seconds:8.1f}  {arch}", flush=True)
    print(f"median {statistics.median(rates):.1f} img/s, min {min(rates):.1f}, max {max(rates):.1f}")


if __name__ == "__main__":
    main()
