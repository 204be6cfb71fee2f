"""How the deployed INT8 model's AP moves with the calibration: image count and method, side by side in one run.

The models are a search run's Pareto front (`--run`, e.g. the demo's). Each is deployed once in fp32 (the
reference) and once per (method, images) setting in int8 on ort-cpu, with the library's own deploy (the code
behind `smnas deploy --precision int8 --calibration-images N --calibration-method M`); every deployed model is
verified against PyTorch and scored (COCO AP of its own runtime on the val split). Latency is not the point
here (scales do not change it), so timing is the short smoke timing. Writes OUT/calibration.md and .json.

Usage:
  python bench/int8_calibration.py --run demo_out/run --out bench_out/int8_calibration
  python bench/int8_calibration.py --run demo_out/run --images 16,64 --methods minmax --out /tmp/cal
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from smnas_trt.deploy import DeployOptions, targets_from_run
from smnas_trt.deploy.compare import comparison_rows, parse_precisions
from smnas_trt.deploy.deployer import DeployResult, deploy_models
from smnas_trt.errors import SmnasError
from smnas_trt.fileio import atomic_write_json, atomic_write_text
from smnas_trt.profiling.quantize import CALIBRATION_METHODS
from smnas_trt.profiling.timing import TimingConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="search run directory: deploy its Pareto front")
    parser.add_argument("--out", required=True, help="output folder (one deploy folder per setting)")
    parser.add_argument("--images", default="16,64,256", help="calibration image counts, comma-separated")
    parser.add_argument("--methods", default=",".join(CALIBRATION_METHODS), help="calibration methods")
    parser.add_argument("--score-images", type=int, default=None, help="first N val images scored (default all)")
    args = parser.parse_args(argv)
    try:
        counts = [int(n) for n in args.images.split(",")]
        methods = [m.strip() for m in args.methods.split(",")]
        fp32, int8 = parse_precisions("fp32,int8", "ort-cpu", 1)
        targets = targets_from_run(args.run)
        base = DeployOptions(out=Path(args.out), timing=TimingConfig.quick(), score_images=args.score_images,
                             overwrite=True)
        results: dict[str, DeployResult] = {}
        seconds: dict[str, float] = {}
        settings = [("fp32", fp32, "minmax", 0)] + [(f"int8 {m} {n}", int8, m, n) for m in methods for n in counts]
        for label, spec, method, count in settings:
            t0 = time.perf_counter()
            options = replace(base, out=Path(args.out) / label.replace(" ", "-"), spec=spec,
                              calibration_method=method, calibration_images=max(count, 1))
            results[label] = deploy_models(targets, options)
            seconds[label] = time.perf_counter() - t0
            print(f"{label}: {seconds[label]:.0f} s", flush=True)
    except (SmnasError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = comparison_rows(results)  # ΔAP against the first setting: the fp32 deploy
    lines = ["# INT8 calibration: deployed AP by method and image count", "",
             f"Run {args.run}; ΔAP against the fp32 deployed model; seconds: the whole deploy of the front.", "",
             "| id | setting | status | AP (deployed) | ΔAP | AP50 | deploy s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ap = "-" if r["ap"] is None else f"{r['ap']:.3f}"
        delta = "-" if r["delta_ap"] is None else f"{r['delta_ap']:+.3f}"
        ap50 = "-" if r["ap50"] is None else f"{r['ap50']:.3f}"
        lines.append(f"| {r['arch_id']} | {r['precision']} | {r['status']} | {ap} | {delta} | {ap50} | "
                     f"{seconds[r['precision']]:.0f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    atomic_write_text(out / "calibration.md", text)
    atomic_write_json(out / "calibration.json", {"run": args.run, "rows": rows, "seconds": seconds})
    print(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
