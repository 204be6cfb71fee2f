"""fp32 vs int8 on ort-cpu, side by side in one run: network/end2end latency, speed-up and ΔAP per model.

The models are a search run's Pareto front (`--run`, e.g. the demo's) or given checkpoints
(`--checkpoint CKPT --data DIR`, repeatable checkpoint). Each is deployed twice with the library's own
`deploy/compare.py` (the code behind `smnas deploy --compare fp32,int8`): fp32 graphs, and QDQ int8
graphs calibrated on `--calibration-images` training images; every deployed model is verified against
PyTorch, timed at batch 1 with `--threads` intra-op threads, and scored (COCO AP of its own runtime on
the val split). Writes OUT/compare.md and OUT/compare.json, and prints the goal check of issue #16:
int8 at least 1.5x faster than fp32 at no more than 2 AP points lost.

The speed-up is the one `smnas deploy --compare` prints: the two deployed networks of a model timed side by
side in one process, --rounds rounds of a 0.05 s block each, the ratio per round (median, p10-p90); beside
it, labelled, the ratio of the two deploys' own timings, minutes apart, which this machine's switching
between two speeds (bench/machine_states.py) skews by tens of %. Last, where the time goes: ONNX
Runtime's own profiler, kernel time per op type, fp32 against int8, for each model (the ops int8 speeds
up, and those it adds: QuantizeLinear, DequantizeLinear, layout Transposes).

On this project's machine (AMD EPYC Zen 3, AVX2, no AVX-512 and no VNNI) ONNX Runtime's U8S8 kernels
run on VPMADDUBSW, without the VNNI dot-product instructions that give INT8 its largest CPU speed-up;
small convolutions (the demo space's 128 px models), the Q/DQ nodes at every float op (Add, Resize,
Concat) and the ops left in float bound what int8 gains here. The figures say what it is.

Usage:
  python bench/int8_speed.py --run demo_out/run --out bench_out/int8
  python bench/int8_speed.py --checkpoint runs/x/train/last.pt --data demo_out/data --quick --out /tmp/int8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from smnas_trt.deploy import DeployOptions, read_manifest, target_from_checkpoint, targets_from_run
from smnas_trt.deploy.compare import COMPARE_MD, SIDE_BY_SIDE_ROUNDS, compare_precisions, parse_precisions
from smnas_trt.errors import SmnasError
from smnas_trt.profiling.timing import TimingConfig

GOAL_SPEEDUP = 1.5
GOAL_AP_LOSS = 0.02  # AP points on COCO's 0-1 scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="search run directory: deploy its Pareto front")
    parser.add_argument("--arch", action="append", default=[], help="with --run: these arch ids only")
    parser.add_argument("--checkpoint", action="append", default=[], help="checkpoint of smnas train (repeatable)")
    parser.add_argument("--data", help="dataset (with --checkpoint; default for --run: the run's)")
    parser.add_argument("--out", required=True, help="output folder (OUT/fp32, OUT/int8, OUT/compare.md)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--verify-images", type=int, default=8)
    parser.add_argument("--score-images", type=int, default=None, help="first N val images scored (default all)")
    parser.add_argument("--quick", action="store_true", help="short timing (smoke runs only)")
    parser.add_argument("--rounds", type=int, default=SIDE_BY_SIDE_ROUNDS,
                        help="side-by-side fp32/int8 timing rounds per model")
    args = parser.parse_args(argv)
    if bool(args.run) == bool(args.checkpoint):
        parser.error("give --run RUN or --checkpoint CKPT --data DIR")
    try:
        specs = parse_precisions("fp32,int8", "ort-cpu", args.threads)
        targets = (targets_from_run(args.run, args.arch or None, args.data) if args.run
                   else [target_from_checkpoint(c, args.data) for c in args.checkpoint])
        options = DeployOptions(out=Path(args.out), verify_images=args.verify_images,
                                timing=TimingConfig.quick() if args.quick else TimingConfig(),
                                calibration_images=args.calibration_images, score_images=args.score_images,
                                overwrite=True)
        report = compare_precisions(targets, options, specs, rounds=args.rounds)
    except SmnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / COMPARE_MD).read_text())
    for row in report["rows"]:
        if row["precision"] == "int8" and row["status"] == "ok":
            print(f"where the time goes, {row['arch_id']} (ONNX Runtime's profiler, kernel ms per run by op type):")
            ops = {p: op_times(Path(args.out) / p / row["arch_id"], p, args.threads) for p in ("fp32", "int8")}
            names = sorted(set(ops["fp32"]) | set(ops["int8"]), key=lambda k: -max(ops["fp32"].get(k, 0.0),
                                                                                  ops["int8"].get(k, 0.0)))
            for name in names[:10]:
                print(f"  {name:<24} fp32 {ops['fp32'].get(name, 0.0):6.3f}  int8 {ops['int8'].get(name, 0.0):6.3f}")
            print(f"  {'total':<24} fp32 {sum(ops['fp32'].values()):6.3f}  int8 {sum(ops['int8'].values()):6.3f}")
    for row in report["rows"]:
        if row["precision"] != "int8":
            continue
        delta = row["delta_ap"]
        for label, speedup in (("side by side", row["speedup_side_by_side"]), ("deploy timings", row["speedup"])):
            met = speedup is not None and delta is not None and speedup >= GOAL_SPEEDUP and delta >= -GOAL_AP_LOSS
            print(f"{row['arch_id']}: int8 {_x(speedup)} faster (network, {label}), ΔAP {_ap(delta)} -> goal "
                  f"(>= {GOAL_SPEEDUP}x, >= -{GOAL_AP_LOSS}) {'met' if met else 'NOT met'}")
    return 0


def op_times(folder: Path, precision: str, threads: int, runs: int = 200) -> dict[str, float]:
    """Kernel ms per run by ONNX op type of a deployed model's graphs, from ONNX Runtime's profiler."""
    import json
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    totals: Counter[str] = Counter()
    for graph in read_manifest(folder).graphs:
        assert graph.onnx is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            options.profile_file_prefix = f"{tmp}/profile"
            session = ort.InferenceSession(str(folder / graph.onnx), options, providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            feed = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
                    for i in session.get_inputs()}  # the graphs' inputs are float (image, proposals)
            for _ in range(runs):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                totals[e["args"]["op_name"]] += e["dur"] / 1000 / runs  # µs in total -> ms per run
    return dict(totals)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
