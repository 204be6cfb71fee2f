"""Benchmark: training speed of paper-space reference detectors on CUDA with AMP, through the real trainer.

Trains Faster R-CNN R50-FPN and RetinaNet R50-FPN (bench/_paper_archs.py: the paper space's standard genes,
at --size, default 512x512) from scratch with `smnas_trt.training.train_arch` for about --iters iterations
on generated demo digits, and prints per-epoch images/s, the steady-state images/s (epochs after the first,
which pays for cuDNN and allocator warm-up and the first loader start), loss first -> last, peak GPU memory
and AMP on/off; then evaluates the checkpoint on the val images on the same device (a check that CUDA
evaluation runs; the AP of so short a run says little).

Measured (NVIDIA H200, torch 2.11.0+cu130, 16 cores, bench/gpu_checks.sh, --budget-s 45, 2026-11-26):
Faster R-CNN R50-FPN 70.3 img/s overall, 74.9 steady, 160 iterations, loss 1.394 -> 0.571, 11.5 GiB peak;
RetinaNet R50-FPN 75.9 / 75.3 img/s, 200 iterations, loss 1.957 -> 0.775, 11.4 GiB peak (AMP on, batch 16).

The demo data comes from `generate_demo` (one process; about 40 s for the default 672 images at 512 px) and
is reused on the next run.

    python3 bench/train_cuda_speed.py --json gpu_out/train_cuda_speed.json          # on the GPU machine
    python3 bench/train_cuda_speed.py --no-amp --archs 1                            # AMP off, to compare
    .venv/bin/python bench/train_cuda_speed.py --device cpu --size 128 --iters 4 --archs 1 --batch-size 2 \
        --train-images 4 --val-images 2 --workers 0                                 # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _paper_archs import parse_size, reference_archs

from smnas_trt.data import generate_demo
from smnas_trt.errors import SmnasError
from smnas_trt.fileio import atomic_write_json
from smnas_trt.profiling.fingerprint import cpu_count
from smnas_trt.training import TrainConfig, evaluate_checkpoint, train_arch
from smnas_trt.training.trainer import CHECKPOINT_NAME


# --------------------------------------------------------------------------------------- training
class OutOfTime(Exception):
    """Raised from the epoch callback to end a run at an epoch boundary; the trainer has saved by then."""


def steady_rate(history: list[dict[str, Any]]) -> float | None:
    """Images/s over the epochs after the first (None with a single epoch)."""
    later = history[1:]
    if not later:
        return None
    return sum(h["images_per_s"] * h["seconds"] for h in later) / sum(h["seconds"] for h in later)


def train_one(name: str, arch: Any, data: Path, out: Path, cfg: TrainConfig, budget_s: float,
              iters_per_epoch: int, eval_batch: int) -> dict[str, Any]:
    device = torch.device(cfg.device)
    if out.exists():
        shutil.rmtree(out)  # this bench's own scratch folder: always a fresh run
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    print(f"\n{name}: {arch}\n{'epoch':>5} {'iters':>5} {'loss':>8} {'img/s':>7} {'seconds':>7}", flush=True)
    started = time.perf_counter()

    def on_epoch(record: dict[str, Any]) -> None:
        print(f"{record['epoch']:5d} {record['epoch'] * iters_per_epoch:5d} {record['loss']:8.4f} "
              f"{record['images_per_s']:7.1f} {record['seconds']:7.2f}", flush=True)
        if record["epoch"] >= 2 and record["epoch"] < cfg.epochs and time.perf_counter() - started > budget_s:
            raise OutOfTime

    stopped_early = False
    try:
        result = train_arch(arch, data, out, cfg, on_epoch=on_epoch)
        history, checkpoint = result.history, result.checkpoint
    except OutOfTime:
        stopped_early = True
        history = json.loads((out / "metrics.json").read_text())["history"]
        checkpoint = out / CHECKPOINT_NAME
    wall_train = time.perf_counter() - started
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    reserved_gib = torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else None
    images = sum(h["images_per_s"] * h["seconds"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    steady = steady_rate(history)
    row: dict[str, Any] = {
        "name": name, "arch": str(arch), "epochs": len(history), "iters": len(history) * iters_per_epoch,
        "stopped_early": stopped_early, "images": round(images), "train_seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9), "first_epoch_images_per_s": history[0]["images_per_s"],
        "steady_images_per_s": steady, "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"],
        "peak_gpu_gib": peak_gib, "peak_reserved_gib": reserved_gib, "wall_train_s": wall_train,
        "history": [{k: h[k] for k in ("epoch", "loss", "images_per_s", "seconds", "cpu_seconds")} for h in history],
    }
    if stopped_early:
        print(f"  stopped after epoch {len(history)}: past the {budget_s:.0f} s budget for this model")
    steady_text = f"{steady:.1f}" if steady is not None else "- (one epoch)"
    memory = f", peak GPU memory {peak_gib:.2f} GiB allocated ({reserved_gib:.2f} reserved)" if peak_gib else ""
    print(f"  {row['iters']} iterations, {row['images']} images in {seconds:.1f} s: {row['images_per_s']:.1f} img/s "
          f"overall, {steady_text} img/s steady (epochs 2+); loss {row['loss_first']:.3f} -> "
          f"{row['loss_last']:.3f}{memory}", flush=True)
    start_eval = time.perf_counter()
    metrics = evaluate_checkpoint(checkpoint, data, split="val", batch_size=eval_batch, device=cfg.device)
    row["eval_seconds"] = time.perf_counter() - start_eval
    row["metrics"] = metrics
    print(f"  eval on {cfg.device} ({row['eval_seconds']:.1f} s): AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f}"
          f" after {row['iters']} iterations", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run at tiny settings")
    p.add_argument("--size", default="512x512", help="input WIDTHxHEIGHT or one number (the paper space has 512x512)")
    p.add_argument("--iters", type=int, default=300, help="target training iterations (rounded to whole epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--archs", type=int, default=2, help="the first N reference models (1: Faster R-CNN only)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision (CUDA)")
    p.add_argument("--workers", type=int, default=min(8, cpu_count()), help="data loader processes")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark (fixed sizes)")
    p.add_argument("--train-images", type=int, default=640)
    p.add_argument("--val-images", type=int, default=32)
    p.add_argument("--data", default=None, help="demo data folder (default: one per size and count under /tmp)")
    p.add_argument("--work-dir", default="/tmp/smnas-train-cuda-speed", help="checkpoints (replaced each run)")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="per model: stop at the first epoch boundary (after epoch 2) past this many seconds")
    p.add_argument("--space", default="paper")
    p.add_argument("--json", default=None, help="JSON file for every figure")
    args = p.parse_args()

    wall = time.perf_counter()
    size = parse_size(args.size)
    side = max(size.width, size.height)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (use --device cpu for a dry run)")
    refs = reference_archs(size, args.archs, args.space)
    data_dir = Path(args.data or f"/tmp/smnas-speed-data-{side}-{args.train_images}-{args.val_images}")
    start = time.perf_counter()
    try:
        data = generate_demo(data_dir, n_train=args.train_images, n_val=args.val_images, size=side)  # reused if there
    except SmnasError as e:
        raise SystemExit(f"--data: {e}") from None
    data_s = time.perf_counter() - start
    print(f"data {data}: {args.train_images} train + {args.val_images} val images at {side} px "
          f"({data_s:.1f} s to generate or find)", flush=True)

    iters_per_epoch = math.ceil(args.train_images / args.batch_size)
    epochs = max(1, round(args.iters / iters_per_epoch))
    amp_on = args.amp and args.device == "cuda"
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(device=args.device, amp=args.amp, batch_size=args.batch_size, workers=args.workers,
                      epochs=epochs, input_size=(size.width, size.height), progress=False, eval_every=0,
                      threads=cpu_count() if args.device == "cpu" else None)
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        card = f"{torch.cuda.get_device_name(0)} (sm {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        card = f"CPU, {cpu_count()} threads (dry run)"
    cuda_text = f", CUDA {torch.version.cuda}" if args.device == "cuda" else ""
    print(f"device {card}; torch {torch.__version__}{cuda_text}")
    print(f"recipe: batch {cfg.batch_size}, {epochs} epochs x {iters_per_epoch} iters = {epochs * iters_per_epoch} "
          f"iterations, AMP {'on (fp16 autocast + GradScaler)' if amp_on else 'off'}, {cfg.workers} loader workers, "
          f"cudnn.benchmark {torch.backends.cudnn.benchmark}, {cfg.optimizer} lr {cfg.lr}, "
          f"warm-up {cfg.warmup_iters} iters")
    if any(not r.in_space for r in refs):
        print(f"note: size {args.size} is not in space {args.space!r} (a dry run); the other genes were checked")

    results: dict[str, Any] = {"device": card, "torch": torch.__version__, "cuda": torch.version.cuda,
                               "amp": amp_on, "config": cfg.to_dict(), "data": str(data), "data_seconds": data_s,
                               "models": [], "failures": []}
    for ref in refs:
        try:
            row = train_one(ref.name, ref.arch, data, Path(args.work_dir) / ref.arch.id, cfg, args.budget_s,
                            iters_per_epoch, args.batch_size)
            results["models"].append(row)
        except Exception as e:  # one model failing (e.g. a non-finite loss) must not lose the other's figures
            message = f"{ref.name}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(f"  FAILED {message}", flush=True)
            results["failures"].append(message)
        if args.json:
            atomic_write_json(args.json, results)
        if args.device == "cuda":
            torch.cuda.empty_cache()

    results["wall_s"] = time.perf_counter() - wall
    print(f"\n{'model':24s} {'iters':>5s} {'img/s':>7s} {'steady':>7s} {'loss':>15s} {'peak GiB':>8s} AMP")
    for r in results["models"]:
        steady = f"{r['steady_images_per_s']:7.1f}" if r["steady_images_per_s"] is not None else f"{'-':>7s}"
        peak = f"{r['peak_gpu_gib']:8.2f}" if r["peak_gpu_gib"] is not None else f"{'-':>8s}"
        loss = f"{r['loss_first']:.3f}->{r['loss_last']:.3f}"
        print(f"{r['name']:24s} {r['iters']:5d} {r['images_per_s']:7.1f} {steady} {loss:>15s} {peak} "
              f"{'on' if amp_on else 'off'}")
    print(f"wall {results['wall_s']:.1f} s (data {data_s:.1f} s)")
    if args.json:
        atomic_write_json(args.json, results)
        print(f"wrote {args.json}")
    sys.exit(1 if results["failures"] else 0)


if __name__ == "__main__":
    main()
