"""Benchmark: latency predictions per second for a batch of 100,000 archs, featurisation included,
and the ratio to the cost of profiling one model for real.

Uses the predictor from bench/predictor_accuracy.py (bench_out/predictor/model) when it exists, or
--predictor; otherwise fits one on the first --fit-models archs of bench_out/predictor/train.db, or
profiles that many into bench_out/predictor/throughput.db (prediction cost depends on the number
and depth of trees, not on how many rows trained them). Each batch is timed on a freshly loaded
predictor (cold caches) and again on a second batch of new archs (warm caches).

Target: >= 100,000 predictions/s including featurisation.
Run: flock /tmp/smnas-bench.lock .venv/bin/python bench/predictor_throughput.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

OUT = Path("bench_out/predictor")


def get_predictor(path: Path | None, fit_models: int, threads: int) -> Path:
    from smnas_trt.predictors import FitConfig, LatencyPredictor, TrainingData, load_training_data

    default = OUT / "model"
    if path is not None:
        return path
    if (default / "predictor.json").is_file():
        return default
    model = OUT / "throughput_model"
    if (model / "predictor.json").is_file():
        return model
    table = OUT / "train.db"
    if not table.is_file() or len(load_training_data(table).archs) < fit_models:
        table = OUT / "throughput.db"
        sys_profile(table, fit_models, threads)
    data = load_training_data(table)
    n = min(fit_models, len(data.archs))
    data = TrainingData(data.archs[:n], data.ms[:n], data.fingerprint, data.module_ms, data.scope, data.source)
    predictor, _ = LatencyPredictor.fit(data, FitConfig(threads=threads))
    predictor.save(model)
    return model


def sys_profile(table: Path, n: int, threads: int) -> None:
    """Time `n` demo archs (seed 7) into `table` with `smnas profile-lut`'s library call (resumes a table)."""
    from smnas_trt.profiling.profile import profile_lut
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.profiling.timing import TimingConfig
    from smnas_trt.space import load_space

    report = profile_lut(space=load_space("demo"), out=table, spec=BackendSpec(backend="ort-cpu", threads=threads),
                         models=n, seed=7, resume=table.is_file(), timing=TimingConfig(budget_s=0.5),
                         repeat_check=False)
    for failure in report.failures:  # a body that cannot export is skipped; the rest suffice here
        print(f"  skipped {failure[:160]}")


def profile_one_seconds(archs: list, threads: int) -> list[tuple[str, float, float]]:
    """Wall seconds to profile one model for real (build, export, load, time), per exporter (no cache hit:
    the cache key names the exporter, and the cache is a fresh temporary folder)."""
    from smnas_trt.profiling.cache import OnnxCache
    from smnas_trt.profiling.profile import model_job, time_jobs
    from smnas_trt.profiling.spec import BackendSpec
    from smnas_trt.profiling.timing import TimingConfig

    backend = BackendSpec(backend="ort-cpu", threads=threads).build()
    out = []
    with OnnxCache(None) as cache:
        for arch in archs:
            row = [str(arch)]
            for exporter in ("legacy", "dynamo"):
                start = time.perf_counter()
                job = model_job(arch, 81, 1, "fp32", exporter)  # type: ignore[arg-type]
                for result in time_jobs(backend, [job], TimingConfig(), cache, 1, exporter):  # type: ignore[arg-type]
                    if result.stats is None:
                        print(f"  {exporter} failed on {arch}: {result.error[:120]}")
                row.append(time.perf_counter() - start)
            out.append((row[0], row[1], row[2]))
    return out


def exportable_archs(n: int) -> list:
    """Archs whose bodies are known to export: the first timed ones of a bench table, else one-stage samples."""
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.space import load_space, parse

    for table in (OUT / "train.db", OUT / "throughput.db"):
        if table.is_file():
            with LatencyTable.open(table) as lut:
                rows = lut.model_rows("network")
            if len(rows) >= n:
                return [parse(r.arch) for r in rows[:n]]
    space, rng = load_space("demo"), random.Random(0)
    archs: list = []
    while len(archs) < n:
        arch = space.sample_arch(rng)
        if not arch.two_stage:
            archs.append(arch)
    return archs


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--predictor", type=Path, default=None)
    parser.add_argument("--fit-models", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile-archs", type=int, default=2, help="archs profiled for the cost ratio")
    parser.add_argument("--ratio-only", action="store_true", help="skip the rate measurement (reuse --rate)")
    parser.add_argument("--rate", type=float, default=None, help="predictions/s to use with --ratio-only")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder of bench/predictor_accuracy.py's tables and model (default: %(default)s)")
    args = parser.parse_args()
    OUT = args.out

    import numpy as np
    import torch

    from smnas_trt.predictors import LatencyPredictor
    from smnas_trt.space import load_space

    torch.set_num_threads(args.threads)
    path = get_predictor(args.predictor, args.fit_models, args.threads)
    meta = LatencyPredictor.load(path).meta
    print(f"predictor {path}: {meta.n_train} models, {meta.fit_config.rounds} trees of depth "
          f"{meta.fit_config.max_depth} (+ {meta.fit_config.scale_rounds} scale trees), "
          f"{len(meta.feature_names)} features")
    print(f"{'space':<7}{'input':<9}{'caches':<7}{'featurise /s':>14}{'predict /s':>14}{'(ms per 100k)':>15}")
    rates: dict[str, float] = {"demo/Arch/cold": args.rate or 0.0}
    for space_name in () if args.ratio_only else ("demo", "paper"):
        space = load_space(space_name)
        for kind in ("Arch", "str"):
            cold, warm, feat_cold, feat_warm = [], [], [], []
            for r in range(args.repeats):
                rng = random.Random(1000 * r + 1)
                batch1 = [space.sample_arch(rng) for _ in range(args.n)]
                batch2 = [space.sample_arch(rng) for _ in range(args.n)]
                if kind == "str":
                    batch1, batch2 = [str(a) for a in batch1], [str(a) for a in batch2]
                predictor = LatencyPredictor.load(path)
                start = time.perf_counter()
                ms, unc = predictor.predict(batch1)
                cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                predictor.predict(batch2)
                warm.append(time.perf_counter() - start)
                assert len(ms) == args.n and np.isfinite(ms).all() and (unc > 0).all()
                fresh = LatencyPredictor.load(path)
                start = time.perf_counter()
                fresh.features(batch1)
                feat_cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                fresh.features(batch2)
                feat_warm.append(time.perf_counter() - start)
            for label, tot, feat in (("cold", cold, feat_cold), ("warm", warm, feat_warm)):
                t, f = statistics.median(tot), statistics.median(feat)
                rates[f"{space_name}/{kind}/{label}"] = args.n / t
                print(f"{space_name:<7}{kind:<9}{label:<7}{args.n / f:>14,.0f}{args.n / t:>14,.0f}{t * 1e3:>15,.0f}")
    demo_cold = rates["demo/Arch/cold"]
    if not demo_cold:
        raise SystemExit("--ratio-only needs --rate (predictions/s)")
    print(f"target >= 100,000 predictions/s (demo, Arch objects, cold caches): {demo_cold:,.0f}/s "
          f"-> {'met' if demo_cold >= 100_000 else 'NOT met'}")
    costs = profile_one_seconds(exportable_archs(args.profile_archs), args.threads)
    per_pred = 1.0 / demo_cold
    for arch, legacy, dynamo in costs:
        print(f"profiling one model for real ({arch}): legacy export {legacy:.2f} s, dynamo export {dynamo:.2f} s")
    median_cost = statistics.median(c for _, legacy, dynamo in costs for c in (legacy, dynamo))
    print(f"one prediction: {per_pred * 1e6:.2f} us; profiling one model: {median_cost:.2f} s (median); "
          f"ratio {median_cost / per_pred:,.0f}x")


if __name__ == "__main__":
    main()
