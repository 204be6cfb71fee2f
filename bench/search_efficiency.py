"""Multi-fidelity gated SM-NAS vs the gated search with fixed epochs vs random search, at equal training compute.

Every variant starts from the same data, latency table and initial predictor, trains with the same recipe
and the same default executor (one-thread workers side by side), and gets the same training budget in
CPU-seconds (`max_train_cpu_s`; the figures count only trainings finished within it, replayed in the order
they finished, so a variant that overshoots at its last generation gains nothing from it). Variants:

- `multi-fidelity`: predictor gate + Pareto-aware successive halving (the scale's rungs, eta 3, one
  top-rung candidate per generation): structural, then modular generations;
- `fixed-epochs`: the same gated search, `per_gen` candidates per generation trained for the top epochs;
- `random`: uniform random architectures, no gate, trained for the top epochs.

Printed per variant over the seeds: hypervolume mean and spread (reference point: budget ms, AP 0; normalised
by budget x 1 AP), the best AP under the latency budget, trainings spent on over-budget candidates, and
CPU-seconds counted.

    flock /tmp/smnas-bench.lock .venv/bin/python bench/search_efficiency.py --scale medium --seeds 0 1 2

Scales (bench/_search_bench.py): `quick` (tiny 64x64 space, minutes; AP ~0.01, plumbing only) and `medium`
(the demo space and data, 8 epochs at the top rung, 40 CPU-minutes per variant: hours for 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_bench import (
    BENCH_DIR,
    SCALES,
    Scale,
    ensure_data,
    ensure_table,
    fit_initial_predictor,
    median_model_ms,
    space_arg,
    summarise_run,
)

from smnas_trt.search import load_search_config, run_search
from smnas_trt.search.config import apply_overrides

VARIANTS = ("multi-fidelity", "fixed-epochs", "random")


def variant_overrides(name: str, scale: Scale) -> dict[str, Any]:
    """The stage shape of each variant; generations run until the CPU budget stops them."""
    top = scale.rungs[-1]
    fixed = {"train": scale.per_gen, "rungs": [top], "eta": 3}
    stages = {"multi-fidelity": {"train": 1, "rungs": list(scale.rungs), "eta": 3}, "fixed-epochs": fixed,
              "random": fixed}[name]
    common = {"max_train_cpu_s": scale.cpu_budget_s, "structural": {"generations": 1, **stages},
              "modular": {"generations": 50, "population": 6, **stages}}
    if name == "random":
        return {**common, "strategy": "random", "gate.enabled": False}
    return {**common, "gate.enabled": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="medium", help="space, data and recipe (see above)")
    ap.add_argument("--config", default="demo", help="base search config (default: the built-in demo config)")
    ap.add_argument("--data", default=None, help="dataset folder (generated when missing)")
    ap.add_argument("--lut", default=None, help="latency table (profiled when missing)")
    ap.add_argument("--out", default=None, help="work folder (default /tmp/smnas-bench/search_efficiency-SCALE)")
    ap.add_argument("--cpu-budget-s", type=float, default=None, help="training CPU-seconds per variant")
    ap.add_argument("--budget-ms", type=float, default=None, help="latency budget (default: the scale's, else "
                    "the table's median)")
    ap.add_argument("--rungs", type=int, nargs="+", default=None,
                    help="the multi-fidelity variant's epochs per rung (default: the scale's; the last is every "
                    "variant's top epochs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first")
    args = ap.parse_args()

    scale = SCALES[args.scale]
    if args.cpu_budget_s:
        scale = replace(scale, cpu_budget_s=args.cpu_budget_s)
    if args.rungs:
        scale = replace(scale, rungs=tuple(args.rungs))
    out = Path(args.out or BENCH_DIR / f"search_efficiency-{args.scale}")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_data(Path(args.data) if args.data else out / "data", scale)
    table = ensure_table(Path(args.lut) if args.lut else out / "lut.db", scale)
    raw = yaml.safe_load(Path(load_search_config_path(args.config)).read_text())
    raw = apply_overrides(raw, {"space": space_arg(scale), "data": str(data), "latency.lut": str(table),
                                **scale.overrides})
    predictor_dir = fit_initial_predictor(table, out / "predictor", raw)
    budget = float(args.budget_ms or scale.overrides.get("latency.budget_ms")
                   or median_model_ms(table, raw["latency"].get("scope", "network")))
    raw = apply_overrides(raw, {"latency.predictor": str(predictor_dir), "latency.budget_ms": round(budget, 3)})
    print(f"scale {args.scale}: budget {budget:.3f} ms ({raw['latency']['backend']} "
          f"{raw['latency'].get('scope', 'network')}), {scale.cpu_budget_s:.0f} training CPU-s per variant, "
          f"rungs {list(scale.rungs)}, seeds {args.seeds}; load {os.getloadavg()[0]:.2f}", flush=True)

    # Other rungs get their own run folders: --resume must not continue a run of another shape.
    tag = "" if scale.rungs == SCALES[args.scale].rungs else "-rungs" + "-".join(map(str, scale.rungs))
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for variant in args.variants:
            name = variant + tag
            cfg_raw = apply_overrides(raw, {**variant_overrides(variant, scale), "seed": seed,
                                            "name": f"{name}-s{seed}"})
            cfg_path = out / f"{name}-s{seed}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg_raw))
            run_dir = out / f"run-{name}-s{seed}"
            start = time.perf_counter()
            run_search(load_search_config(cfg_path), run_dir, resume=True, show_progress=False)
            summary = summarise_run(run_dir, scale.cpu_budget_s)
            summary["wall_s"] = round(time.perf_counter() - start, 1)
            results.setdefault(name, []).append(summary)
            print(f"  {name} seed {seed}: {json.dumps(summary)}", flush=True)

    print()
    print("| variant | hypervolume mean ± sd (per seed) | best AP under budget, mean (per seed) | trainings | "
          "over budget | CPU-s counted | wall min |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        hv = [r["hypervolume"] for r in rows]
        best = [r["best_ap"] for r in rows]
        sd = statistics.stdev(hv) if len(hv) > 1 else 0.0
        print(f"| {name} | {statistics.fmean(hv):.4f} ± {sd:.4f} ({', '.join(f'{x:.4f}' for x in hv)}) | "
              f"{statistics.fmean(best):.3f} ({', '.join(f'{x:.3f}' for x in best)}) | "
              f"{statistics.fmean(r['trainings'] for r in rows):.1f} | "
              f"{sum(r['trainings_over_budget'] for r in rows)} | {statistics.fmean(r['cpu_s'] for r in rows):.0f} | "
              f"{statistics.fmean(r['wall_s'] for r in rows) / 60:.1f} |")
    by_hv = max(results, key=lambda k: statistics.fmean(r["hypervolume"] for r in results[k]))
    by_ap = max(results, key=lambda k: statistics.fmean(r["best_ap"] for r in results[k]))
    print(f"\nhighest mean hypervolume: {by_hv}; best mean AP under the budget: {by_ap}; "
          f"load at end {os.getloadavg()[0]:.2f}")


def load_search_config_path(name: str) -> Path:
    from smnas_trt.search.config import BUILTIN_SEARCH_CONFIGS

    return BUILTIN_SEARCH_CONFIGS.get(name, Path(name))


if __name__ == "__main__":
    # Validate the import of the config module early for a clear error if the package is missing.
    _ = load_search_config
    main()
