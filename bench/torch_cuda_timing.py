"""Benchmark: the torch backend on CUDA for paper-space reference detectors — events vs host clock, CUDA graphs.

For each model (bench/_paper_archs.py: Faster R-CNN R50-FPN, RetinaNet R50-FPN, RetinaNet R18-C4, Cascade
R-CNN R50-FPN at --size, standard genes of the paper space) the `network` body (profile-lut's scope, 81
classes; two-stage models as profile-lut cuts them, `rpn` + `roi`, timed graph by graph and summed) is timed
with the library's own runners, fp32 and fp16:
  events  BackendSpec(backend="torch", device=...).build().load_module(...).time(): CUDA events on a side stream
  host    the same runner's module called, then torch.cuda.synchronize(), timed with HostClock: the naive
          host-side figure (launch overhead and the sync included)
  graphs  BackendSpec(backend="torch", device=..., cuda_graphs=True): one captured CUDA graph replayed, CUDA events
host/events > 1 says how much the host clock overstates device time; events/graphs > 1 is what removing
per-kernel launch cost buys. On --device cpu (a dry run) every clock is the host clock and graphs are skipped.

Measured (NVIDIA H200, driver 580.159.04, CUDA 13.0, torch 2.11.0, 800x600, batch 1, 2026-11-26), median ms
events / host / graphs, fp32 then fp16: Faster R-CNN R50-FPN 6.16 / 6.19 / 5.67, 5.39 / 5.27 / 4.61;
RetinaNet R50-FPN 7.53 / 7.52 / 6.50, 8.23 / 8.26 / 5.81; RetinaNet R18-C4 2.13 / 2.09 / 1.62, 2.20 / 2.13 / 1.51;
Cascade R-CNN R50-FPN 7.52 / 7.71 / 6.84, 7.49 / 7.63 / 5.13. Batch-1 bodies are launch-bound at this size:
host and events agree within 3%, graphs take 9-46% off, fp16 gains little without them.

    python3 bench/torch_cuda_timing.py --out gpu_out/torch_cuda_timing.json          # on the GPU machine
    .venv/bin/python bench/torch_cuda_timing.py --device cpu --size 512x512 --archs 1 --budget-s 0.2   # dry run
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _paper_archs import parse_size, reference_archs

from smnas_trt.fileio import atomic_write_json
from smnas_trt.profiling.backend import Runner
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import HostClock, LatencyStats, TimingConfig, sum_stats, time_runs


def torch_backend(device: str, precision: str = "fp32", cuda_graphs: bool = False) -> Any:
    return BackendSpec(backend="torch", device=device, precision=precision, cuda_graphs=cuda_graphs).build()


def network_graphs(arch: Any, num_classes: int) -> list[Any]:
    """profile-lut's `network` scope: the graphs `models.graphs.detector_graphs` cuts (one-stage `body`,
    two-stage `rpn` + `roi`); the model's latency is the sum of theirs."""
    from smnas_trt.models import build_detector
    from smnas_trt.models.graphs import detector_graphs

    with torch.no_grad():
        return detector_graphs(build_detector(arch, num_classes), arch)


def host_clock_stats(runner: Runner, inputs: tuple[Any, ...], device: str, config: TimingConfig) -> LatencyStats:
    """The runner's module called on the default stream, each call followed by a device synchronize."""
    module = runner.module  # type: ignore[attr-defined]  # TorchRunner's device copy (fp16 when asked)
    dtype = next(module.parameters()).dtype
    args = [t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs]
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        module(*args)
        sync()

    with torch.inference_mode():
        return time_runs(step, config, HostClock())


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def release(*runners: Runner | None) -> None:
    for r in runners:
        if r is not None:
            r.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_precision(specs: list[Any], device: str, precision: str, config: TimingConfig,
                   graphs: bool) -> dict[str, Any]:
    """Each graph of the model timed on its own, the figures summed (as profile-lut does)."""
    backend = torch_backend(device, precision)
    events_parts, host_parts = [], []
    for spec in specs:
        events = backend.load_module(spec.module, spec.example_inputs)
        try:
            events_parts.append(events.time(config))
            host_parts.append(host_clock_stats(events, spec.example_inputs, device, config))
        finally:
            release(events)
    row: dict[str, Any] = {"events": sum_stats(events_parts).as_dict(), "host": sum_stats(host_parts).as_dict()}
    if len(specs) > 1:
        row["graphs_ms"] = {s.name: e.median_ms for s, e in zip(specs, events_parts, strict=True)}
    if graphs:
        graph = None
        try:  # a capture failure must not lose the eager figures above
            captured = torch_backend(device, precision, cuda_graphs=True)
            parts = []
            for spec in specs:
                graph = captured.load_module(spec.module, spec.example_inputs)
                parts.append(graph.time(config))
                release(graph)
                graph = None
            row["graphs"] = sum_stats(parts).as_dict()
        except Exception as e:
            row["graphs_error"] = one_line(e)
            print(f"  {precision} CUDA graphs failed: {row['graphs_error'][:200]}", flush=True)
        finally:
            release(graph)
    row["host_over_events"] = row["host"]["median_ms"] / row["events"]["median_ms"]
    if "graphs" in row:
        row["events_over_graphs"] = row["events"]["median_ms"] / row["graphs"]["median_ms"]
    return row


def gflops(arch: Any) -> float | None:
    try:
        from smnas_trt.models.counts import count_flops

        return count_flops(arch).flops / 1e9
    except Exception as e:  # a count is a nicety; the timings are the point
        print(f"  (no FLOP count: {type(e).__name__}: {e})")
        return None


def card_header(device: str) -> dict[str, Any]:
    backend = torch_backend(device)
    info: dict[str, Any] = {"fingerprint": backend.fingerprint().to_dict(), "torch": torch.__version__,
                            "cudnn": torch.backends.cudnn.version() if device == "cuda" else None}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(card=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    print(f"device: {backend.fingerprint().describe()}")
    print(f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}, cuDNN {info['cudnn']}, "
                                          f"{info['memory_gib']} GiB" if device == "cuda" else ""))
    return info


def fmt(row: dict[str, Any] | None, key: str) -> str:
    if row is None or key not in row:
        return "-"
    value = row[key]
    return f"{value['median_ms']:.2f}" if isinstance(value, dict) else f"{value:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="800x600", help="input WIDTHxHEIGHT (the paper space has 800x600)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run, graphs skipped")
    p.add_argument("--budget-s", type=float, default=1.0, help="timed-run budget per measurement, seconds")
    p.add_argument("--archs", type=int, default=4, help="the first N reference models (at most 4)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                   help="also time fp16 (default: on cuda only; CPU fp16 convolutions are very slow)")
    p.add_argument("--space", default="paper")
    p.add_argument("--num-classes", type=int, default=81)
    p.add_argument("--deadline-s", type=float, default=80.0, help="start no new model after this many seconds")
    p.add_argument("--out", default=None, help="JSON file for every figure")
    args = p.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (use --device cpu for a dry run)")
    start = time.perf_counter()
    config = TimingConfig(warmup_runs=10, warmup_s=0.3, min_runs=20, max_runs=2000, budget_s=args.budget_s)
    header = card_header(args.device)
    graphs = args.device == "cuda"
    if not graphs:
        print("note: --device cpu is a dry run: every clock is the host clock and CUDA graphs are skipped")
    fp16 = args.fp16 if args.fp16 is not None else args.device == "cuda"
    precisions = ["fp32", "fp16"] if fp16 else ["fp32"]
    refs = reference_archs(parse_size(args.size), args.archs, args.space)
    results: dict[str, Any] = {"header": header, "size": args.size, "space": args.space,
                               "timing": {"warmup_runs": config.warmup_runs, "warmup_s": config.warmup_s,
                                          "min_runs": config.min_runs, "budget_s": config.budget_s},
                               "models": []}
    print(f"timing: warm-up {config.warmup_runs} runs and {config.warmup_s} s, then >= {config.min_runs} runs "
          f"and {config.budget_s} s per measurement; medians in ms (p10-p90 for events)")
    head = (f"{'model':24s} {'GFLOPs':>7s} {'prec':4s} {'events':>7s} {'p10-p90':>13s} {'host':>7s} "
            f"{'host/ev':>7s} {'graphs':>7s} {'ev/gr':>6s}")
    print(head)
    for ref in refs:
        if time.perf_counter() - start > args.deadline_s:
            print(f"deadline {args.deadline_s:.0f} s passed: skipping {ref.name} and the rest")
            break
        t_model = time.perf_counter()
        specs = network_graphs(ref.arch, args.num_classes)
        entry: dict[str, Any] = {"name": ref.name, "arch": str(ref.arch), "in_space": ref.in_space,
                                 "gflops": gflops(ref.arch), "input_shape": list(specs[0].example_inputs[0].shape),
                                 "graphs": [s.name for s in specs]}
        for precision in precisions:
            try:
                row = time_precision(specs, args.device, precision, config, graphs)
            except Exception as e:  # one failing mode must not lose the others' figures
                row = {"error": one_line(e)}
            entry[precision] = row
            gf = f"{entry['gflops']:7.1f}" if entry["gflops"] is not None else f"{'-':>7s}"
            if "error" in row:
                print(f"{ref.name:24s} {gf} {precision:4s} failed: {row['error'][:200]}", flush=True)
                continue
            ev = row["events"]
            print(f"{ref.name:24s} {gf} {precision:4s} {ev['median_ms']:7.2f} "
                  f"{ev['p10_ms']:6.2f}-{ev['p90_ms']:<6.2f} {fmt(row, 'host'):>7s} {fmt(row, 'host_over_events'):>7s} "
                  f"{fmt(row, 'graphs'):>7s} {fmt(row, 'events_over_graphs'):>6s}", flush=True)
        entry["seconds"] = time.perf_counter() - t_model
        results["models"].append(entry)
        del specs
        release()
        if args.out:
            atomic_write_json(args.out, results)  # after each model, so a cut-off run keeps what it measured
    results["seconds"] = time.perf_counter() - start
    if args.out:
        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    if any(not r.in_space for r in refs):
        print(f"note: size {args.size} is not in space {args.space!r}; the other genes were checked")
    print(f"total {results['seconds']:.1f} s")
    failed = [m["name"] for m in results["models"] for pr in precisions
              if "error" in m.get(pr, {}) or "graphs_error" in m.get(pr, {})]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
