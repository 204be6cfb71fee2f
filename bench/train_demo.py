"""Benchmark: train a small demo-space architecture from scratch on the demo data, on 2 CPU cores.

Prints the learning curve (val AP per epoch), then AP, AP50, training minutes and images/s.
Target: AP >= 0.5 and AP50 >= 0.75 within 10 minutes of training (evaluation time excluded).

Run:  flock /tmp/smnas-bench.lock .venv/bin/python bench/train_demo.py
Measured (defaults, 2-core AMD EPYC VM, load 1.0-1.8): val AP 0.520, AP50 0.754 after 9.67 training
minutes / 13 epochs at 44.8 img/s; the curve flattens after epoch 9 (6.9 min).
      (generates data/demo first if it is missing: 2,000 train + 300 val images at 256x256)
"""

from __future__ import annotations

import os

# Sleep instead of spin-waiting in OpenMP barriers: on a shared 2-core machine a spinning
# 2-thread torch runs 10-50x slower as soon as another process wants a core. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from smnas_trt.data import generate_demo
from smnas_trt.training import TrainConfig, evaluate_checkpoint, train_arch

DEFAULT_ARCH = "128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/demo")
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("--epochs", type=int, default=13)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-iters", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hflip", choices=("auto", "on", "off"), default="auto",
                   help="random horizontal flips (auto: the trainer's default, off for the demo digits)")
    p.add_argument("--max-train-images", type=int, default=None, help="Use the first N training images only.")
    p.add_argument("--eval-every", type=int, default=1, help="Val AP every N epochs (the learning curve).")
    p.add_argument("--eval-max-images", type=int, default=150, help="Curve on the first N val images (final: all).")
    p.add_argument("--out", default="bench_out/train_demo")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    data = generate_demo(args.data)  # reused as is when already there
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_iters=args.warmup_iters, threads=args.threads, eval_every=args.eval_every,
                      eval_max_images=args.eval_max_images, max_train_images=args.max_train_images, progress=False,
                      hflip={"auto": None, "on": True, "off": False}[args.hflip])
    load_start = os.getloadavg()
    print(f"arch {args.arch}\ndata {data}  threads {args.threads}  torch {torch.__version__}  "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  load avg at start {load_start[0]:.2f}")
    print(f"recipe: AdamW lr {cfg.lr} wd {cfg.weight_decay}, warmup {cfg.warmup_iters} iters, cosine, "
          f"batch {cfg.batch_size}, {cfg.epochs} epochs, hflip {args.hflip}")
    print(f"{'epoch':>5} {'loss':>7} {'img/s':>6} {'train min':>9} {'cpu min':>7} {'AP':>6} {'AP50':>6} {'load':>5}")
    cpu_total = [0.0]

    def on_epoch(r: dict[str, Any]) -> None:
        m = r.get("metrics") or {}
        ap = f"{m['AP']:6.3f} {m['AP50']:6.3f}" if m else f"{'-':>6} {'-':>6}"
        cpu_total[0] += r["cpu_seconds"]
        print(f"{r['epoch']:5d} {r['loss']:7.4f} {r['images_per_s']:6.1f} {r['train_seconds'] / 60:9.2f} "
              f"{cpu_total[0] / 60:7.2f} {ap} {os.getloadavg()[0]:5.2f}", flush=True)

    wall = time.perf_counter()
    result = train_arch(args.arch, data, args.out, cfg, resume=args.resume, on_epoch=on_epoch)
    metrics = evaluate_checkpoint(result.checkpoint, data, split="val", out_json=Path(args.out) / "eval.json")
    images = sum(h["images_per_s"] * h["seconds"] for h in result.history)
    minutes = result.train_seconds / 60
    cpu_minutes = sum(h.get("cpu_seconds", 0.0) for h in result.history) / 60
    # Cores actually kept busy: near 1 means this small model barely uses a second thread, so
    # wall time on an otherwise idle machine is close to the CPU time.
    cores_used = cpu_minutes / max(minutes, 1e-9)
    print("\nfinal val: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"training {minutes:.2f} min wall ({cpu_minutes:.2f} CPU min, {cores_used:.2f} cores busy on average), "
          f"{images / result.train_seconds:.1f} images/s, "
          f"{result.epochs} epochs; wall {(time.perf_counter() - wall) / 60:.2f} min incl. evaluation; "
          f"load avg at end {os.getloadavg()[0]:.2f}")
    accurate = metrics["AP"] >= 0.5 and metrics["AP50"] >= 0.75
    print(f"target AP >= 0.5, AP50 >= 0.75 within 10 min: accuracy {'PASS' if accurate else 'FAIL'}, "
          f"time {'PASS' if minutes <= 10 else 'FAIL'} (wall; compare the load column)")


if __name__ == "__main__":
    main()
