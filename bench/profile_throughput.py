"""Benchmark (issue #13): `smnas profile-lut` as a user runs it, and where its wall time goes.

1. `smnas profile-lut --space SPACE --models N --out new.db --onnx-cache EMPTY_DIR` with every other flag
   at its default, from an empty table and an empty ONNX cache, in its own process. Prints wall minutes,
   entries per minute, and the share of wall time in export / session build / warm-up / timed runs per
   kind of entry (anchors, models, module pieces, the repeat check), then the table's self-measured
   repeatability (its repeat check: median and p90 relative difference, what `smnas lut show` prints).
2. The "old export path" on a sample of --old-sample of the same models: the same command on an arch file
   of them with `--exporter dynamo --no-onnx-cache`. Prints the ratio of per-entry wall time, old / new,
   on the very same entries.

The CLI runs in a subprocess through `smnas_trt.cli.main` (what the `smnas` script calls) with one
observer added: `profiling.profile.time_jobs` is wrapped to add up each result's `TimeSplit` (the
figures profile-lut's own share line sums) and the wall time between results, per phase and kind of
entry, written as JSON when the process exits. Nothing else in the run changes; its share line is
parsed as well, as a cross-check.

Targets (issue #13): at most 20 minutes for 300 demo models, at least half the wall in timed runs, and a
repeat difference of at most 3% (median).

    flock /tmp/smnas-bench.lock .venv/bin/python bench/profile_throughput.py --models 300 --old-sample 40
    .venv/bin/python bench/profile_throughput.py --models 3 --old-sample 2        # smoke run, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runs in the child process: the `smnas` entry point with an observer around time_jobs.
DRIVER = r'''
import atexit, json, os, sys, time
import smnas_trt.profiling.profile as profile

PHASES = {"_time_entries": "entries", "_repeat_check": "repeat check", "time_anchors": "anchors"}
FIELDS = ("export_s", "build_s", "warmup_s", "timed_s")
kinds, jobs = {}, {}
original = profile.time_jobs


def kind_of(job):
    prefix = job.name.split(":", 1)[0]
    if prefix == "module":
        return "module " + (job.label.split()[1] if len(job.label.split()) > 1 else "?")
    return "model " + prefix


def observed(phase, results):
    last = time.perf_counter()
    for r in results:
        now = time.perf_counter()
        rec = kinds.setdefault(phase + "|" + kind_of(r.job), {"n": 0, "failed": 0, "wall_s": 0.0,
                                                              **{f: 0.0 for f in FIELDS}})
        rec["n"] += 1
        rec["failed"] += r.stats is None
        rec["wall_s"] += now - last
        for f in FIELDS:
            rec[f] += getattr(r.split, f)
        if phase == "entries":
            jobs[r.job.name] = {"wall_s": now - last, "ok": r.stats is not None,
                                **{f: getattr(r.split, f) for f in FIELDS}}
        last = now
        yield r


def time_jobs(*args, **kwargs):
    phase = PHASES.get(sys._getframe(1).f_code.co_name, sys._getframe(1).f_code.co_name)
    return observed(phase, original(*args, **kwargs))


profile.time_jobs = time_jobs


@atexit.register
def dump():
    with open(os.environ["SMNAS_BENCH_SPLIT"], "w") as f:
        json.dump({"kinds": kinds, "jobs": jobs}, f)


from smnas_trt.cli import main

sys.argv = ["smnas", *sys.argv[1:]]
main()
'''

SHARE_LINE = re.compile(r"wall (\d+) s: (.+?); ONNX cache (\d+) hits, (\d+) exports")
SPLIT_NAMES = {"export_s": "export", "build_s": "session build", "warmup_s": "warm-up", "timed_s": "timed runs"}


def run_profile(args_list: list[str], split_file: Path, log: Path) -> dict[str, Any]:
    """One `smnas profile-lut ...` process; returns its wall time, exit status, output and observed splits."""
    env = {**os.environ, "SMNAS_BENCH_SPLIT": str(split_file), "COLUMNS": "200"}
    cmd = [sys.executable, "-c", DRIVER, "profile-lut", *args_list]
    print("$ smnas profile-lut " + " ".join(args_list), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-6:]
    for line in tail:
        print("  | " + line[:200])
    if proc.returncode != 0:
        raise SystemExit(f"profile-lut exited with status {proc.returncode}; full output in {log}")
    observed = json.loads(split_file.read_text()) if split_file.is_file() else {"kinds": {}, "jobs": {}}
    match = SHARE_LINE.search(" ".join(proc.stdout.split()))  # the console may wrap the line anywhere at a space
    return {"wall_s": wall, "stdout": proc.stdout, "observed": observed,
            "share_line": match.group(0) if match else None,
            "cache_hits": int(match.group(3)) if match else None,
            "cache_exports": int(match.group(4)) if match else None}


def table_facts(path: Path) -> dict[str, Any]:
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(path) as table:
        counts = table.counts()
        check = table.repeat_check()
        archs = [r.arch for r in table.model_rows("network")]
        device = table.summary()["device"]
    return {"counts": counts, "archs": archs, "device": device,
            "repeat_n": check.repeat_n if check else None,
            "repeat_median": check.repeat_median if check else None,
            "repeat_p90": check.repeat_p90 if check else None}


def kind_rows(observed: dict[str, Any], wall_s: float) -> list[dict[str, Any]]:
    rows = []
    for key, rec in sorted(observed["kinds"].items()):
        phase, kind = key.split("|", 1)
        accounted = sum(rec[f] for f in SPLIT_NAMES)
        rows.append({"phase": phase, "kind": kind, "n": rec["n"], "failed": rec["failed"],
                     "wall_s": rec["wall_s"], "share_of_run": rec["wall_s"] / max(wall_s, 1e-9),
                     "per_entry_s": rec["wall_s"] / max(rec["n"], 1),
                     **{f: rec[f] for f in SPLIT_NAMES},
                     "shares": {**{SPLIT_NAMES[f]: rec[f] / max(rec["wall_s"], 1e-9) for f in SPLIT_NAMES},
                                "other": max(0.0, 1 - accounted / max(rec["wall_s"], 1e-9))}})
    return rows


def total_split(observed: dict[str, Any], wall_s: float) -> dict[str, float]:
    sums = {f: sum(rec[f] for rec in observed["kinds"].values()) for f in SPLIT_NAMES}
    shares = {SPLIT_NAMES[f]: v / max(wall_s, 1e-9) for f, v in sums.items()}
    shares["other (imports, sampling, table writes)"] = max(0.0, 1 - sum(shares.values()))
    return shares


def print_kinds(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}: share of each kind's wall time (wall between results, export/build/warm-up/timed from "
          "profile-lut's TimeSplit)")
    print(f"  {'phase':<13}{'kind':<16}{'n':>5}{'wall s':>9}{'of run':>8}{'s/entry':>9}"
          f"{'export':>8}{'build':>8}{'warm-up':>9}{'timed':>8}{'other':>8}")
    for r in rows:
        s = r["shares"]
        print(f"  {r['phase']:<13}{r['kind']:<16}{r['n']:>5}{r['wall_s']:>9.1f}{r['share_of_run']:>8.1%}"
              f"{r['per_entry_s']:>9.2f}{s['export']:>8.1%}{s['session build']:>8.1%}{s['warm-up']:>9.1%}"
              f"{s['timed runs']:>8.1%}{s['other']:>8.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=300, help="profile-lut --models (default %(default)s)")
    parser.add_argument("--old-sample", type=int, default=40,
                        help="models of the new table re-profiled on the old export path (0: skip)")
    parser.add_argument("--space", default="demo", help="profile-lut --space (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the old-path sample (profile-lut keeps its own)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the tables, logs and ONNX cache here (must not hold them yet; default: a "
                             "temporary folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/profile_throughput.json"),
                        help="JSON summary (default %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smnas-profile-throughput-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        new_db, cache = work / "new.db", work / "onnx_cache"
        if new_db.exists() or (cache.exists() and any(cache.iterdir())):
            raise SystemExit(f"{work} already holds a table or an ONNX cache: this benchmark starts from empty ones")
        load_before = os.getloadavg()
        print(f"# profile_throughput: {args.models} models of space {args.space}, default flags, empty table and "
              f"ONNX cache (load {load_before[0]:.1f} on {os.cpu_count()} CPUs)")
        new = run_profile(["--space", args.space, "--models", str(args.models), "--out", str(new_db),
                           "--onnx-cache", str(cache)], work / "new.split.json", work / "new.log")
        facts = table_facts(new_db)
        entries = facts["counts"]["models"] + facts["counts"]["modules"]
        wall_min = new["wall_s"] / 60
        new_rows = kind_rows(new["observed"], new["wall_s"])
        new_total = total_split(new["observed"], new["wall_s"])
        print_kinds("new (default flags)", new_rows)
        show = subprocess.run([sys.executable, "-c", "from smnas_trt.cli import main; import sys; "
                               "sys.argv = ['smnas', 'lut', 'show', sys.argv[1]]; main()", str(new_db)],
                              capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        print("\n$ smnas lut show new.db")
        for line in show.stdout.splitlines()[:6]:
            print("  | " + line)

        old: dict[str, Any] | None = None
        if args.old_sample > 0 and facts["archs"]:
            sample = random.Random(args.seed).sample(facts["archs"], min(args.old_sample, len(facts["archs"])))
            arch_file = work / "old_sample.txt"
            arch_file.write_text("".join(f"{a}\n" for a in sample))
            run = run_profile(["--space", args.space, "--archs", str(arch_file), "--out", str(work / "old.db"),
                               "--exporter", "dynamo", "--no-onnx-cache"], work / "old.split.json", work / "old.log")
            old_rows = kind_rows(run["observed"], run["wall_s"])
            print_kinds("old export path (dynamo, no ONNX cache)", old_rows)
            new_jobs, old_jobs = new["observed"]["jobs"], run["observed"]["jobs"]
            same = [f"network:{a}" for a in sample
                    if new_jobs.get(f"network:{a}", {}).get("ok") and old_jobs.get(f"network:{a}", {}).get("ok")]
            new_s = sum(new_jobs[k]["wall_s"] for k in same)
            old_s = sum(old_jobs[k]["wall_s"] for k in same)
            new_export = sum(new_jobs[k]["export_s"] for k in same)
            old_export = sum(old_jobs[k]["export_s"] for k in same)
            old = {"sample": len(sample), "compared": len(same), "wall_s": run["wall_s"],
                   "per_entry_new_s": new_s / max(len(same), 1), "per_entry_old_s": old_s / max(len(same), 1),
                   "ratio_old_over_new": old_s / new_s if new_s else None,
                   "export_per_entry_new_s": new_export / max(len(same), 1),
                   "export_per_entry_old_s": old_export / max(len(same), 1),
                   "share_line": run["share_line"], "kinds": old_rows}
            print(f"\nsame {len(same)} models, per-entry wall: new {old['per_entry_new_s']:.2f} s, old "
                  f"{old['per_entry_old_s']:.2f} s (export {old['export_per_entry_new_s']:.2f} vs "
                  f"{old['export_per_entry_old_s']:.2f} s)")

    timed_share = new_total["timed runs"]
    summary: dict[str, Any] = {
        "space": args.space, "models_asked": args.models, "device": facts["device"],
        "entries": entries, "models": facts["counts"]["models"], "modules": facts["counts"]["modules"],
        "wall_s": new["wall_s"], "wall_min": wall_min, "entries_per_min": entries / max(wall_min, 1e-9),
        "shares": new_total, "share_line": new["share_line"],
        "onnx_cache_hits": new["cache_hits"], "onnx_cache_exports": new["cache_exports"],
        "kinds": new_rows,
        "repeat": {"n": facts["repeat_n"], "median": facts["repeat_median"], "p90": facts["repeat_p90"]},
        "old_path": old, "load_before": load_before, "load_after": os.getloadavg(),
    }
    rep = summary["repeat"]
    checks = {
        # Anchors and the repeat check cost the same at any size, so a smaller run says nothing about 300.
        f"wall <= 20 min for --models 300 ({wall_min:.1f} min for {args.models}"
        + ("" if args.models == 300 else ": only judged at --models 300") + ")": args.models == 300 and wall_min <= 20,
        f"timed runs >= 50% of wall ({timed_share:.1%})": timed_share >= 0.5,
        "repeat difference median <= 3% (" + (f"{rep['median']:.2%}" if rep["median"] is not None else "none")
        + ")": rep["median"] is not None and rep["median"] <= 0.03,
    }
    summary["checks"] = checks

    print("\n========== profile_throughput summary ==========")
    print(f"space {args.space}, {facts['device']}")
    print(f"table: {facts['counts']['models']} models, {facts['counts']['modules']} module entries "
          f"(asked --models {args.models}), wall {new['wall_s']:.0f} s = {wall_min:.2f} min, "
          f"{summary['entries_per_min']:.1f} entries/min")
    print("share of wall: " + " · ".join(f"{k} {v:.1%}" for k, v in new_total.items()))
    print(f"profile-lut's own line: {new['share_line']}")
    if rep["median"] is not None:
        print(f"repeatability (the table's repeat check, {rep['n']} entries): median {rep['median']:.2%}, "
              f"p90 {rep['p90']:.2%}")
    else:
        print("repeatability: the table recorded no repeat check")
    if old is not None and old["ratio_old_over_new"] is not None:
        print(f"old export path (dynamo, no cache) on {old['compared']} of the same models: "
              f"{old['per_entry_old_s']:.2f} s per entry vs {old['per_entry_new_s']:.2f} s: "
              f"ratio old/new {old['ratio_old_over_new']:.2f}x")
    for label, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {label}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
