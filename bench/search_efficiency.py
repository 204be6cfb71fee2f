"""Gated SM-NAS evolution vs random search vs evolution without the gate, at the same training budget.

Each variant trains the same number of candidates with the same recipe, on the same data, with the
same latency table and initial predictor. Printed per variant: hypervolume of the measured front
(reference point: budget ms, AP 0; normalised by budget x 1 AP), front size, trainings spent on
candidates that measured over the budget, timings taken, wall time.

    flock /tmp/smnas-bench.lock .venv/bin/python bench/search_efficiency.py --scale small

Scales (bench/_search_bench.py): `quick` (tiny 64x64 space, 96 images, 1 epoch: minutes; AP ~0.01, so
only the wasted trainings mean anything), `small` (one-stage 96x96 space, 1,000 images rendered at
128 px, 4 epochs: about a minute per candidate, an hour for three variants), `full` (the demo space
and data with configs/search_demo.yaml: hours). The latency table is profiled here (whole models of
the space on ort-cpu, one thread) when --lut does not exist.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_bench import (
    BENCH_DIR,
    SCALES,
    ensure_data,
    ensure_table,
    fit_initial_predictor,
    median_model_ms,
    space_arg,
    summarise_run,
)

from smnas_trt.search import load_search_config, run_search
from smnas_trt.search.config import apply_overrides


def variant_overrides(name: str, generations: int, per_gen: int) -> dict[str, Any]:
    """Same number of trainings for every variant: `generations` x `per_gen` (first generation structural)."""
    common = {"structural.generations": 1, "structural.train": per_gen, "modular.generations": generations - 1,
              "modular.train": per_gen}
    if name == "gated":
        return {**common, "gate.enabled": True}
    if name == "no-gate":
        return {**common, "gate.enabled": False}
    if name == "random":
        return {**common, "strategy": "random", "gate.enabled": False}
    raise ValueError(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="small", help="space, data and recipe (see above)")
    ap.add_argument("--config", default="demo", help="base search config (default: the built-in demo config)")
    ap.add_argument("--data", default=None, help="dataset folder (generated when missing)")
    ap.add_argument("--lut", default=None, help="latency table (profiled when missing)")
    ap.add_argument("--out", default=None, help="work folder (default /tmp/smnas-bench/search_efficiency-SCALE)")
    ap.add_argument("--generations", type=int, default=None, help="generations per variant (default: the scale's)")
    ap.add_argument("--per-gen", type=int, default=None, help="trainings per generation (default: the scale's)")
    ap.add_argument("--budget-ms", type=float, default=None, help="latency budget (default: the table's median)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds (results averaged)")
    ap.add_argument("--variants", nargs="+", default=["gated", "random", "no-gate"])
    ap.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first")
    args = ap.parse_args()

    scale = SCALES[args.scale]
    out = Path(args.out or BENCH_DIR / f"search_efficiency-{args.scale}")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    generations = args.generations or scale.generations
    per_gen = args.per_gen or scale.per_gen
    data = ensure_data(Path(args.data) if args.data else out / "data", scale)
    table = ensure_table(Path(args.lut) if args.lut else out / "lut.db", scale)
    raw = yaml.safe_load(Path(load_search_config_path(args.config)).read_text())
    raw = apply_overrides(raw, {"space": space_arg(scale), "data": str(data), "latency.lut": str(table),
                                **scale.overrides})
    predictor_dir = fit_initial_predictor(table, out / "predictor", raw)
    budget = args.budget_ms or median_model_ms(table, raw["latency"].get("scope", "network"))
    raw = apply_overrides(raw, {"latency.predictor": str(predictor_dir), "latency.budget_ms": round(budget, 3)})
    print(f"budget {budget:.3f} ms ({raw['latency']['backend']} {raw['latency'].get('scope', 'network')}), "
          f"{generations} generations x {per_gen} trainings per variant, seeds {args.seeds}")

    results: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for name in args.variants:
            cfg_raw = apply_overrides(raw, {**variant_overrides(name, generations, per_gen), "seed": seed,
                                            "name": f"{name}-s{seed}"})
            cfg_path = out / f"{name}-s{seed}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg_raw))
            run_dir = out / f"run-{name}-s{seed}"
            start = time.perf_counter()
            run_search(load_search_config(cfg_path), run_dir, resume=True, show_progress=False)
            summary = summarise_run(run_dir)
            summary["wall_s"] = round(time.perf_counter() - start, 1)
            results.setdefault(name, []).append(summary)
            print(f"  {name} seed {seed}: {json.dumps(summary)}", flush=True)

    print()
    print("| variant | hypervolume (mean) | front size | trained | trained over budget | timed | "
          "measured over budget, not trained | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        n = len(rows)

        def mean(key: str, rows: list[dict[str, Any]] = rows, n: int = n) -> float:
            return sum(float(r[key]) for r in rows) / n

        print(f"| {name} | {mean('hypervolume'):.4f} | {mean('front_size'):.1f} | {mean('trained'):.1f} | "
              f"{mean('trained_over_budget'):.1f} | {mean('timed'):.1f} | {mean('skipped_over_budget'):.1f} | "
              f"{mean('wall_s'):.0f} |")
    best = max(results, key=lambda k: sum(r["hypervolume"] for r in results[k]))
    print(f"\nhighest hypervolume: {best}; gated trainings wasted on over-budget candidates: "
          f"{sum(r['trained_over_budget'] for r in results.get('gated', []))}")


def load_search_config_path(name: str) -> Path:
    from smnas_trt.search.config import BUILTIN_SEARCH_CONFIGS

    return BUILTIN_SEARCH_CONFIGS.get(name, Path(name))


if __name__ == "__main__":
    # Validate the import of the config module early for a clear error if the package is missing.
    _ = load_search_config
    main()
