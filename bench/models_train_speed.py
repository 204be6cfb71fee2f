"""Benchmark: training step (forward + backward + SGD step) time per image of demo-space detectors (CPU or CUDA).

Builds each demo structure with the space's default module genes (from scratch: GN + WS), feeds
batches of random images with three boxes each, and prints ms/image and images/s (median over
--steps timed steps after one warm-up step).
Run: flock /tmp/smnas-bench.lock .venv/bin/python bench/models_train_speed.py [--all] [--size 128x128]
On a GPU (what the trainer's images/s would be without data loading):
     python3 bench/models_train_speed.py --device cuda --amp --batch 16 --steps 20 --arch ARCH [--arch ARCH]
     Measured on an NVIDIA H200 (torch 2.11.0, 512x512 paper-space references, batch 16, 2026-11-26):
     Faster R-CNN R50-FPN 87.6 img/s with AMP, 90.9 without; RetinaNet R50-FPN 105.3 and 115.6.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from smnas_trt.models import build_detector
from smnas_trt.space import load_space, parse


def _batch(n: int, w: int, h: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, h, w, generator=gen) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.1 + 0.4 * torch.rand(3, 2, generator=gen)) * torch.tensor([w, h])
        boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 11, (3,), generator=gen)})
    return images, targets


def step_seconds(arch, batch: int, steps: int, device: str = "cpu", amp: bool = False) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of one training step on one fixed batch already on `device` (no data loading)."""
    gen = torch.Generator().manual_seed(0)
    model = build_detector(arch, num_classes=11).train().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images, targets = _batch(batch, arch.size.width, arch.size.height, gen)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 1):
        sync()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        scaler.scale(loss).backward()  # type: ignore[union-attr]
        scaler.step(opt)
        scaler.update()
        sync()
        if i:  # the first step warms up allocators and caches
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="128x128", help="one of the demo sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler (CUDA)")
    parser.add_argument("--arch", action="append", default=[], help="arch string to time (repeatable; "
                        "replaces the demo-space selection)")
    parser.add_argument("--all", action="store_true", help="every demo structure (default: each family x head "
                        "with FPN P3-P6, and each neck with ResNet-18)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.arch:
        archs = [parse(text) for text in args.arch]
    else:
        space = load_space("demo")
        archs = [a for a in space.iter_structures() if str(a.size) == args.size]
        if not args.all:
            archs = [a for a in archs if str(a.neck).startswith("fpn:P3-P6") or a.backbone.depth == 18]
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{args.threads} threads"
    print(f"{len(archs)} models, batch {args.batch}, {where}, AMP {'on' if args.amp else 'off'}")
    print(f"{'ms/img':>8}{'img/s':>8}  arch")
    rates = []
    for arch in archs:
        seconds = step_seconds(arch, args.batch, args.steps, args.device, args.amp)
        rates.append(args.batch / seconds)
        print(f"{seconds / args.batch * 1000:8.1f}{args.batch / seconds:8.1f}  {arch}", flush=True)
    print(f"median {statistics.median(rates):.1f} img/s, min {min(rates):.1f}, max {max(rates):.1f}")


if __name__ == "__main__":
    main()
