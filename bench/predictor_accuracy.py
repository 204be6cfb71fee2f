"""Benchmark: latency-predictor accuracy on held-out architectures, against two baselines.

`--protocol separate-runs` (the default; issue #14): what a user does. `smnas profile-lut` makes the
table (--train-models, seed --train-seed, --train-passes), then a second, later `smnas profile-lut`
process times --test-models held-out models of another seed (an arch file of models the table does not
hold; --passes); `smnas predictor fit` on the first and `smnas predictor eval` on the second, each in its
own process. Prints the raw and the anchor-corrected (drift) predictor side by side with both baselines
and the interval coverage. Tables and reports under --out/separate/ (a finished table is reused).

`--protocol interleaved` (the README's first figure):
Profiles the demo space on ort-cpu into latency tables under --out (default bench_out/predictor/;
reused and resumed on later runs) with the profiling layer's API: `train.db` with --train-models
whole models (seed 0) and `test.db` with --test-models others (seed 1; archs that are also train
candidates are dropped), both spread over every structural combination (`sample_models`); bodies
that fail to export are replaced by further candidates. Train and test models are timed interleaved
in one stream, each in --passes passes seconds apart keeping the median pass (`time_jobs`), so a
burst of other work or a slow spell of the machine neither lands on one model nor on one split.
One ORT thread by default: on 2 cores, it is what repeats run to run. `test.db` also gets every
module piece of its first --piece-archs archs (for the LUT-sum baseline; one pass), and
`retest.db` a second timing of its first --retest archs (the measurement noise floor: how well
one timing predicts another). Then fits the predictor on train (K-fold CV, which also calibrates
the interval), scores it on test, and prints the predictor and both baselines side by side, the
90%-interval coverage, the noise floor, and where the reports, predictions CSVs and scatter plots
were written.

Targets: >= 95% of test models within +-10%, Kendall tau >= 0.9, better than both baselines.
Measured (2-core AMD EPYC VM, quiet, --pieces all --piece-archs 100, 2026-11-26): 97.0% within +-10%,
MAPE 3.16%, tau 0.977, coverage 89% (LUT sum 81.0%, FLOPs fit 16.0%); one pass per model scored 88%.
Run: flock /tmp/smnas-bench.lock .venv/bin/python bench/predictor_accuracy.py
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("bench_out/predictor")


def _passes_of(extra: dict) -> int:
    return len(extra.get("pass_medians_ms", [0]))


def _ort(threads: int):
    from smnas_trt.profiling.spec import BackendSpec

    return BackendSpec(backend="ort-cpu", threads=threads).build()


def profile_models(wanted: dict[Path, tuple[list, int]], threads: int, budget_s: float, passes: int) -> None:
    """Whole-model `network` timings, until each table holds its target count of its candidates.

    `wanted` maps a table to (candidates, target). The tables' missing models are timed interleaved in
    one stream (train and test alike see whatever the machine does meanwhile), each in `passes` passes.
    Resumes (archs already timed are skipped) and remembers archs whose graphs fail to export
    (<table>.failed.txt), so a rerun does not retry them. Uses the legacy ONNX exporter (profile-lut's
    default) and profile-lut's own jobs (`model_job`: the graphs `models.graphs.detector_graphs` cuts).
    """
    from smnas_trt.profiling.cache import OnnxCache
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.profiling.profile import model_job, time_jobs
    from smnas_trt.profiling.timing import TimingConfig

    backend = _ort(threads)
    timing = TimingConfig(min_runs=10, max_runs=1000, budget_s=budget_s)
    tables = {path: LatencyTable.create(path, backend.fingerprint()) for path in wanted}
    failed = {path: _failed(path) for path in wanted}
    start = time.perf_counter()
    try:
        for path, table in tables.items():
            counts = {_passes_of(r.extra) for r in table.model_rows("network")}
            if counts - {passes}:
                raise SystemExit(f"{path} holds models timed in {sorted(counts)} passes, not {passes}: "
                                 f"use --passes {min(counts)} or another --out")
        while True:
            queues = {}
            for path, (candidates, target) in wanted.items():
                table = tables[path]
                have = sum(table.has_model(a, "network") for a in candidates)
                todo = [a for a in candidates if str(a) not in failed[path] and not table.has_model(a, "network")]
                queues[path] = todo[:max(0, target - have)]
                print(f"{path}: {have} of the {target} wanted models already timed", flush=True)
            # One job per (table, arch): named by the arch, labelled by its table.
            jobs = [dataclasses.replace(model_job(a, 81, 1, "fp32", "legacy"), name=str(a), label=str(path))
                    for path, a in _interleave(queues)]
            if not jobs:
                break
            with OnnxCache(None) as cache:  # fresh exports, as in a new profile run
                for done, r in enumerate(time_jobs(backend, jobs, timing, cache, passes, "legacy"), start=1):
                    path = Path(r.job.label)
                    if r.stats is None:
                        failed[path].add(r.job.name)
                        with path.with_suffix(".failed.txt").open("a") as f:
                            f.write(f"{r.job.name}\n")
                        print(f"  failed {r.job.name}: {r.error[-110:]}", flush=True)
                    else:
                        tables[path].put_model(r.job.name, "network", r.stats, r.extra)
                    if done % 20 == 0:
                        print(f"  {done}/{len(jobs)} models in {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        for table in tables.values():
            table.close()


def _failed(path: Path) -> set[str]:
    failed_file = path.with_suffix(".failed.txt")
    return set(failed_file.read_text().splitlines()) if failed_file.is_file() else set()


def _interleave(queues: dict[Path, list]) -> list[tuple[Path, object]]:
    """(table, arch) pairs with each table's archs spread evenly over the whole sequence."""
    keyed = [((i + 0.5) / len(archs), path, a) for path, archs in queues.items() for i, a in enumerate(archs)]
    return [(path, a) for _, path, a in sorted(keyed, key=lambda k: k[0])]


def profile_pieces(path: Path, archs: list, threads: int, budget_s: float) -> None:
    """Module entries (stem, stages, neck, heads) of the given archs, for the LUT features and baseline.

    One pass each: there are several times more pieces than models.
    """
    from smnas_trt.models.pieces import module_pieces
    from smnas_trt.profiling.cache import OnnxCache
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.profiling.profile import dedup_pieces, piece_config, piece_job, time_jobs
    from smnas_trt.profiling.timing import TimingConfig

    backend = _ort(threads)
    timing = TimingConfig(min_runs=10, max_runs=1000, budget_s=budget_s)
    start = time.perf_counter()
    with LatencyTable.create(path, backend.fingerprint()) as table, OnnxCache(None) as cache:
        pieces = {p.key: p for p in dedup_pieces(p for a in archs for p in module_pieces(a, num_classes=81))
                  if not table.has(p.key)}
        jobs = [dataclasses.replace(piece_job(p, 1, "fp32", "legacy"), name=p.key) for p in pieces.values()]
        print(f"{path}: {len(jobs)} module pieces to time", flush=True)
        for done, r in enumerate(time_jobs(backend, jobs, timing, cache, 1, "legacy"), start=1):
            piece = pieces[r.job.name]
            if r.stats is None:
                print(f"  failed {piece.key}: {r.error[:150]}", flush=True)
            else:
                table.put_module(piece.key, piece.kind, piece_config(piece), r.stats, r.extra)
            if done % 50 == 0:
                print(f"  {path.name}: {done} pieces in {time.perf_counter() - start:.0f} s", flush=True)


def timed_archs(path: Path) -> list:
    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.space import parse

    with LatencyTable.open(path) as table:
        return [parse(r.arch) for r in table.model_rows("network")]


def bench_archs(train_models: int, test_models: int, space_name: str = "demo") -> tuple[list, list]:
    """Candidate train archs (seed 0) and test archs (seed 1, minus any train candidate), spread over structures.

    Longer than needed: some bodies fail to export and are replaced by the next candidates
    (sample_models is prefix-stable, so a longer list keeps the earlier archs).
    """
    from smnas_trt.profiling.profile import sample_models
    from smnas_trt.space import load_space

    space = load_space(space_name)
    train = sample_models(space, int(train_models * 1.4), seed=0)
    seen = {str(a) for a in train}
    test = [a for a in sample_models(space, int(test_models * 1.6), seed=1) if str(a) not in seen]
    return train, test


SMNAS = ("from smnas_trt.cli import main; import sys; sys.argv = ['smnas', *sys.argv[1:]]; main()")


def smnas(*argv: str) -> None:
    """One `smnas ...` command in its own process, as a user runs it (what the `smnas` script calls)."""
    print("$ smnas " + " ".join(argv), flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SMNAS, *argv], env={**os.environ, "COLUMNS": "160"},
                          capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    for line in lines[-4:] if argv[0] == "profile-lut" else []:
        print("  | " + line[:180])
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit(f"smnas {argv[0]} exited with status {proc.returncode}")


def separate_runs(args: argparse.Namespace) -> bool:
    """Issue #14's protocol: the table in one `smnas profile-lut` run, the held-out models in a later one
    (its own process, its own seed, its own anchors), `smnas predictor fit` on the first and `smnas predictor
    eval` on the second; prints the raw and the anchor-corrected predictor side by side with both baselines."""
    import json

    from smnas_trt.profiling.profile import sample_models
    from smnas_trt.space import load_space

    root = OUT / "separate"
    root.mkdir(parents=True, exist_ok=True)
    train_db, test_db = root / "train.db", root / "test.db"
    train_passes = args.train_passes or args.passes
    common = ["--space", args.space, "--threads", str(args.threads), "--budget-s", str(args.budget_s),
              "--modules", args.modules]
    if not args.no_profile:
        # 1. The table, as the README's first step (resumed when an earlier run was cut short).
        if not train_db.exists() or len(timed_archs_text(train_db)) < args.train_models:
            smnas("profile-lut", *common, "--out", str(train_db), "--models", str(args.train_models),
                  "--seed", str(args.train_seed), "--passes", str(train_passes),
                  *(["--resume"] if train_db.exists() else []))
        # 2. Later, in another process: held-out models of another seed that the table does not hold.
        if not test_db.exists():
            train = set(timed_archs_text(train_db))
            held_out = [a for a in sample_models(load_space(args.space), int(args.test_models * 1.6) + 10,
                                                 seed=args.test_seed) if str(a) not in train][:args.test_models]
            arch_file = root / "held_out.txt"
            arch_file.write_text("".join(f"{a}\n" for a in held_out))
            smnas("profile-lut", *common, "--out", str(test_db), "--archs", str(arch_file),
                  "--passes", str(args.passes))
    if args.profile_only:
        return True
    # 3. Fit on the table, evaluate on the later run's timings (training archs are excluded by eval).
    smnas("predictor", "fit", "--lut", str(train_db), "--out", str(root / "model"), "--folds", str(args.folds),
          "--threads", "1", *(["--search"] if args.search else []))
    smnas("predictor", "eval", "--predictor", str(root / "model"), "--lut", str(test_db),
          "--out", str(root / "test_eval"))
    cv = json.loads((root / "model" / "cv" / "report.json").read_text())
    report = json.loads((root / "test_eval" / "report.json").read_text())
    from smnas_trt.predictors.report import format_report

    print()
    print(format_report(report, f"separate runs: {report['title']} (fitted on {train_db.name}, "
                                f"{train_passes} pass(es); held out {args.passes} pass(es))"))
    raw, corr = report["predictor_raw"], report["predictor"]
    print(f"\n{'held-out, separate run':<30}{'n':>5}{'±5%':>8}{'±10%':>8}{'MAPE %':>9}{'tau':>7}{'coverage':>10}")
    rows = [("predictor, raw", raw, raw.get("coverage")), ("predictor, drift-corrected", corr, report["coverage"]),
            ("sum of LUT entries", report["lut_sum"], None), ("linear fit on FLOPs", report["flops_linear"], None),
            (f"(CV on {train_db.name})", cv["predictor"], cv["coverage"])]
    for label, m, cover in rows:
        print(f"{label:<30}{m['n']:>5}{_pct(m['within_5']):>8}{_pct(m['within_10']):>8}{_num(m['mape'], 2):>9}"
              f"{_num(m['kendall_tau'], 3):>7}{_pct(cover):>10}")
    print((report.get("errors") or {}).get("drift_note") or "drift: not measured")
    tau, cover = corr["kendall_tau"], report["coverage"]
    checks = {  # JSON has no NaN: a figure that could not be computed reads None and fails its check
        f"corrected within ±10% >= 95% ({_pct(corr['within_10'])})": (corr["within_10"] or 0) >= 0.95,
        f"corrected Kendall tau >= 0.95 ({_num(tau, 3)})": tau is not None and tau >= 0.95,
        f"90% interval coverage in [85%, 95%] ({_pct(cover)})": cover is not None and 0.85 <= cover <= 0.95,
    }
    for label, passed in checks.items():
        print(f"  [{'x' if passed else ' '}] {label}")
    print(f"reports in {root}/model/cv and {root}/test_eval")
    return all(checks.values())


MODULE_KINDS = ("stem", "stage", "neck", "head", "rpn", "roi")


def compare_modules(args: argparse.Namespace) -> None:
    """Issue #13: what each kind of module piece costs to profile and adds to the predictor, side by side.

    The table of the separate-runs protocol gets every module piece by `smnas profile-lut --resume --modules all`
    (how a user adds pieces to a table; a copy, `train_modules.db`, empty ONNX cache), observed per kind of
    entry by profile_throughput's driver. Then one predictor per module set, each fitted by `smnas predictor
    fit` on the same 300 model timings and evaluated by `smnas predictor eval` on the same held-out run:
    none (the default table, train.db), all kinds, and each kind alone (a copy holding only that kind).
    """
    import json
    import shutil
    import sqlite3
    from contextlib import closing

    from profile_throughput import kind_rows, print_kinds, run_profile

    root = OUT / "separate"
    train_db, test_db, full_db = root / "train.db", root / "test.db", root / "train_modules.db"
    split_file = root / "modules_split.json"
    if not (train_db.is_file() and test_db.is_file()):
        raise SystemExit(f"--compare-modules needs the separate-runs tables in {root}: run without it first")
    with closing(sqlite3.connect(full_db if full_db.exists() else train_db)) as db:
        have = db.execute("SELECT count(*) FROM module_entries").fetchone()[0]
    if not have and not args.no_profile:
        if not full_db.exists():
            with closing(sqlite3.connect(train_db)) as src, closing(sqlite3.connect(full_db)) as dst:
                src.backup(dst)  # a consistent copy of a WAL database
        cache = root / "modules_onnx_cache"
        shutil.rmtree(cache, ignore_errors=True)
        run = run_profile(["--space", args.space, "--threads", str(args.threads), "--budget-s", str(args.budget_s),
                           "--out", str(full_db), "--models", str(args.train_models), "--seed", str(args.train_seed),
                           "--passes", str(args.train_passes or args.passes), "--modules", "all", "--resume",
                           "--onnx-cache", str(cache)], split_file, root / "modules_profile.log")
        split_file.with_suffix(".wall.json").write_text(json.dumps({"wall_s": run["wall_s"]}))
    observed = json.loads(split_file.read_text()) if split_file.is_file() else {"kinds": {}}
    wall = json.loads(split_file.with_suffix(".wall.json").read_text())["wall_s"] if observed["kinds"] else 0.0
    rows = kind_rows(observed, wall)
    if rows:
        print_kinds(f"profile-lut --resume --modules all: {wall / 60:.1f} min", rows)
    cost = {r["kind"].removeprefix("module "): (r["n"], r["wall_s"]) for r in rows if r["phase"] == "entries"}

    with closing(sqlite3.connect(full_db)) as db:
        present = [k for (k,) in db.execute("SELECT DISTINCT kind FROM module_entries")]
    variants: list[tuple[str, Path, tuple[str, ...]]] = [("none (default)", train_db, ())]
    variants.append(("all kinds", full_db, tuple(k for k in MODULE_KINDS if k in present)))
    for kind in (k for k in MODULE_KINDS if k in present):
        only = root / f"train_modules_{kind}.db"
        if not only.exists():
            with closing(sqlite3.connect(full_db)) as src, closing(sqlite3.connect(only)) as dst:
                src.backup(dst)
            with closing(sqlite3.connect(only)) as db, db:  # the inner `db` commits the delete
                db.execute("DELETE FROM module_entries WHERE kind != ?", (kind,))
        variants.append((f"{kind} only", only, (kind,)))

    print(f"\n{'module set (held out: ' + test_db.name + ')':<24}{'pieces':>7}{'profile min':>12}{'±5%':>8}"
          f"{'±10%':>8}{'MAPE %':>9}{'tau':>7}{'coverage':>10}{'CV ±10%':>9}")
    for label, table, kinds in variants:
        tag = label.split()[0]
        model = root / f"model_modules_{tag}"
        smnas("predictor", "fit", "--lut", str(table), "--out", str(model), "--folds", str(args.folds),
              "--threads", "1", *([] if kinds else ["--no-lut-features"]))
        smnas("predictor", "eval", "--predictor", str(model), "--lut", str(test_db), "--out", str(model / "test_eval"))
        report = json.loads((model / "test_eval" / "report.json").read_text())
        cv = json.loads((model / "cv" / "report.json").read_text())
        m = report["predictor"]
        n = sum(cost.get(k, (0, 0.0))[0] for k in kinds)
        minutes = sum(cost.get(k, (0, 0.0))[1] for k in kinds) / 60
        print(f"{label:<24}{n:>7}{minutes:>12.1f}{_pct(m['within_5']):>8}{_pct(m['within_10']):>8}"
              f"{_num(m['mape'], 2):>9}{_num(m['kendall_tau'], 3):>7}{_pct(report['coverage']):>10}"
              f"{_pct(cv['predictor']['within_10']):>9}", flush=True)
    print("(drift-corrected predictor; profile min: wall of those pieces in the resume run, on top of the table's "
          "own profiling)")


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def timed_archs_text(path: Path) -> list[str]:
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(path) as table:
        return [r.arch for r in table.model_rows("network")]


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("separate-runs", "interleaved"), default="separate-runs",
                        help="separate-runs (issue #14, default): the table and the held-out models in two "
                             "profile-lut runs, one after the other; interleaved: both timed in one stream")
    parser.add_argument("--space", default="demo", help="space of the models (default %(default)s)")
    parser.add_argument("--train-models", type=int, default=300)
    parser.add_argument("--test-models", type=int, default=100)
    parser.add_argument("--train-seed", type=int, default=7, help="separate-runs: profile-lut --seed of the table")
    parser.add_argument("--test-seed", type=int, default=8, help="separate-runs: seed of the held-out sample")
    parser.add_argument("--train-passes", type=int, default=None,
                        help="separate-runs: --passes of the table's run (default: --passes)")
    parser.add_argument("--modules", default="none",
                        help="separate-runs: profile-lut --modules of both runs (none, all or a comma list)")
    parser.add_argument("--pieces", choices=("none", "test", "all"), default="test",
                        help="interleaved: time every module piece of the test archs (default), of all, or none")
    parser.add_argument("--piece-archs", type=int, default=30, help="interleaved: test archs whose pieces are timed")
    parser.add_argument("--retest", type=int, default=40,
                        help="interleaved: test archs timed a second time (retest.db): the measurement noise floor")
    parser.add_argument("--no-profile", action="store_true", help="use the tables as they are")
    parser.add_argument("--budget-s", type=float, default=0.5, help="timed-run budget per entry")
    parser.add_argument("--passes", type=int, default=3,
                        help="time each model this many times, seconds apart, and keep the median pass")
    parser.add_argument("--out", type=Path, default=Path("bench_out/predictor"),
                        help="folder of the tables, model and reports")
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads; 1 repeats best on a 2-core machine (see profile_stability)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--profile-only", action="store_true", help="only build the tables")
    parser.add_argument("--search", action="store_true", help="small hyper-parameter grid search by CV")
    parser.add_argument("--compare-modules", action="store_true",
                        help="separate-runs: add every module piece to (a copy of) the table, then fit one predictor "
                             "per module set (none, all, each kind alone) and evaluate each on the held-out run")
    args = parser.parse_args()
    OUT = args.out

    import torch

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.compare_modules and args.protocol != "separate-runs":
        parser.error("--compare-modules works on the separate-runs tables: use --protocol separate-runs")
    if args.protocol == "separate-runs":
        interleaved_only = (("pieces", "test"), ("piece_archs", 30), ("retest", 40))
        ignored = [f"--{k.replace('_', '-')}" for k, default in interleaved_only if getattr(args, k) != default]
        if ignored:
            print(f"note: {', '.join(ignored)} apply to --protocol interleaved only (module pieces here: --modules)")
        if args.compare_modules:
            compare_modules(args)
            return
        sys.exit(0 if separate_runs(args) else 1)
    train_db, test_db = OUT / "train.db", OUT / "test.db"
    train, test = bench_archs(args.train_models, args.test_models, args.space)
    if not args.no_profile:
        wanted = {train_db: (train, args.train_models), test_db: (test, args.test_models)}
        profile_models(wanted, args.threads, args.budget_s, args.passes)
        if args.retest:
            again = timed_archs(test_db)[:args.retest] + timed_archs(train_db)[:args.retest // 2]
            profile_models({OUT / "retest.db": (again, len(again))}, args.threads, args.budget_s, args.passes)
        if args.pieces != "none":
            profile_pieces(test_db, timed_archs(test_db)[:args.piece_archs], args.threads, args.budget_s)
        if args.pieces == "all":
            profile_pieces(train_db, timed_archs(train_db), args.threads, args.budget_s)
    if args.profile_only:
        return
    ok = evaluate(train_db, test_db, args.folds, args.search)
    noise_floor(test_db, OUT / "retest.db")
    noise_floor(train_db, OUT / "retest.db")
    sys.exit(0 if ok else 1)


def noise_floor(test_db: Path, retest_db: Path) -> None:
    """How well a second measurement of the same archs predicts the first: no predictor can do better."""
    import numpy as np

    from smnas_trt.predictors import accuracy
    from smnas_trt.profiling.lut import LatencyTable

    if not retest_db.is_file():
        return
    with LatencyTable.open(test_db) as a, LatencyTable.open(retest_db, a.fingerprint) as b:
        first = {r.arch: r.median_ms for r in a.model_rows("network")}
        second = {r.arch: r.median_ms for r in b.model_rows("network")}
    common = [k for k in second if k in first]
    if not common:
        return
    m = accuracy(np.array([first[k] for k in common]), np.array([second[k] for k in common]))
    ratio = float(np.median([second[k] / first[k] for k in common]))
    print(f"noise floor ({test_db.name}): re-timing {m['n']} of its models (median ratio second/first {ratio:.3f}), "
          f"the second median is within ±10% of the first for "
          f"{100 * m['within_10']:.1f}% (±5%: {100 * m['within_5']:.1f}%), MAPE {m['mape']:.1f}%, "
          f"Kendall tau {m['kendall_tau']:.3f}")


def evaluate(train_db: Path, test_db: Path, folds: int, search: bool) -> bool:
    """Fit on train (CV report in model/cv/), score on test (report in test_eval/); print both and the verdict."""
    from smnas_trt.predictors import FitConfig, LatencyPredictor, evaluate_on_table, fit_predictor
    from smnas_trt.predictors.report import format_report
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(train_db) as t:
        n_train = len(t.model_rows("network"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"fitting on {n_train} models of {train_db} ({folds}-fold CV{', grid search' if search else ''})")
    start = time.perf_counter()
    predictor, result, cv_report = fit_predictor(train_db, OUT / "model", FitConfig(folds=folds, search=search))
    print(f"fit in {time.perf_counter() - start:.1f} s; {predictor.describe()}")
    print(format_report(cv_report, cv_report["title"]))
    print()
    model = LatencyPredictor.load(OUT / "model")
    report = evaluate_on_table(model, test_db, OUT / "test_eval", exclude=set(result.archs))
    print(format_report(report, report["title"]))
    p, lut, flops = report["predictor"], report["lut_sum"], report["flops_linear"]
    # Each baseline is compared on the rows it covers (the LUT sum needs every piece of an arch timed).
    pairs = [(report.get("predictor_on_lut_rows", p), lut), (p, flops)]
    beats = all(math.isnan(b["within_10"]) or (q["within_10"] >= b["within_10"] and q["mape"] < b["mape"])
                for q, b in pairs)
    checks = {
        f"train models >= 300 ({n_train})": n_train >= 300,
        f"test models >= 100 ({p['n']})": p["n"] >= 100,
        f"within ±10% >= 95% ({100 * p['within_10']:.1f}%)": p["within_10"] >= 0.95,
        f"Kendall tau >= 0.9 ({p['kendall_tau']:.3f})": p["kendall_tau"] >= 0.9,
        "better than both baselines (±10% share and MAPE, on the rows each covers)": beats,
    }
    for label, passed in checks.items():
        print(f"  [{'x' if passed else ' '}] {label}")
    print(f"90% interval coverage on test: {100 * report['coverage']:.1f}%  (load during the run: {load}; "
          f"reports in {OUT}/model/cv and {OUT}/test_eval)")
    return all(checks.values())


if __name__ == "__main__":
    main()
