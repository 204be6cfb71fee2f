"""Does the searched front dominate hand-designed detectors trained the same way?

Faster R-CNN R50-FPN and RetinaNet R50-FPN are expressed in the run's space at its input size with
the space's standard module widths (the demo space has P2-P5 and P3-P6 FPNs, so Faster R-CNN uses
P2-P5 and RetinaNet P3-P6 instead of P3-P7; base 16 channels, FPN 64, 2-FC 128, RetinaNet head 2x64),
trained with the recipe of the run's top rung (its schedule length in epochs), timed on the run's
backend, stored in the run's `references_` table (so `smnas report` plots them) and compared with the
front. The paper's claim is checked against each: a front model at most half the reference's time
with at least +1 AP point.

    flock /tmp/smnas-bench.lock .venv/bin/python bench/vs_reference.py --run runs/demo
    flock /tmp/smnas-bench.lock .venv/bin/python bench/vs_reference.py --scale medium  # search_efficiency's run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_bench import BENCH_DIR, SCALES

from smnas_trt.profiling.cache import default_onnx_cache
from smnas_trt.report import reference_verdicts, write_report
from smnas_trt.search import RunStore, load_frozen_config
from smnas_trt.search.engine import TABLE_FILE
from smnas_trt.search.latency import add_timing, table_num_classes
from smnas_trt.search.tasks import TimeJob, TrainJob, candidate_seed, time_candidate, train_candidate
from smnas_trt.space import load_space, parse

R50 = "111-2111-211111-211"


def reference_archs(space_name: str, size: str | None) -> dict[str, str]:
    space = load_space(space_name)
    d = space.config.defaults
    size = size or space.config.sizes[-1]
    return {
        "Faster R-CNN R50-FPN": f"{size}/r50_{d.base}_{R50}/fpn:P2-P5:{d.fpn_channels}/rpn/2fc:{d.fc_width}",
        "RetinaNet R50-FPN": f"{size}/r50_{d.base}_{R50}/fpn:P3-P6:{d.fpn_channels}/none/"
                             f"retina:{d.dense_depth}x{d.dense_width}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a finished search run directory")
    ap.add_argument("--scale", default=None, choices=sorted(SCALES),
                    help="compare against the multi-fidelity seed-0 run of `bench/search_efficiency.py --scale SCALE`")
    ap.add_argument("--size", default=None, help="input size of the references (default: the space's largest)")
    ap.add_argument("--retrain", action="store_true", help="train references again even if the run has them")
    args = ap.parse_args()
    if not args.run and not args.scale:
        ap.error("give --run DIR or --scale SCALE")
    run_dir = Path(args.run) if args.run else BENCH_DIR / f"search_efficiency-{args.scale}" / "run-multi-fidelity-s0"
    if not (run_dir / "run.db").is_file():
        ap.error(f"{run_dir} holds no search run; run bench/search_efficiency.py --scale {args.scale} first")
    cfg = load_frozen_config(run_dir)
    epochs = cfg.modular.epochs if cfg.modular.generations and cfg.strategy == "smnas" else cfg.structural.epochs
    lat = cfg.latency
    threads = cfg.executor.threads_per_task or 1
    store = RunStore(run_dir / "run.db")
    num_classes = table_num_classes(lat, run_dir / TABLE_FILE)  # the classes the run's table was timed with
    done = {r.name for r in store.references() if r.status == "done"}
    for name, text in reference_archs(cfg.space, args.size).items():
        arch = parse(text)
        if name in done and not args.retrain:
            continue
        folder = run_dir / "references" / arch.id
        print(f"{name}: {arch} — training {epochs} epoch(s) with the run's recipe", flush=True)
        start = time.perf_counter()
        res = train_candidate(TrainJob(arch.id, str(arch), cfg.data, str(folder), epochs, epochs,
                                       candidate_seed(cfg.seed, arch.id), dict(cfg.training), cfg.evaluation.split,
                                       cfg.evaluation.max_images, cfg.evaluation.batch_size, cfg.device, threads))
        # As the search's engine times a candidate: the run's backend spec, scope, classes, timing and passes.
        timing = time_candidate(TimeJob(arch.id, str(arch), lat.spec().model_dump(), lat.scope, num_classes,
                                        lat.timing.model_dump(), lat.passes, str(default_onnx_cache())))
        add_timing(run_dir / TABLE_FILE, timing, lat)
        store.put_reference(name, arch.id, str(arch), "done", measured_ms=timing.ms, ap=res.ap, ap50=res.ap50,
                            metrics_json=json.dumps(res.metrics), train_seconds=res.train_seconds, epochs=res.epochs,
                            checkpoint=str(Path(res.checkpoint).resolve().relative_to(run_dir.resolve())))
        print(f"  AP {res.ap:.4f} AP50 {res.ap50:.4f}, {timing.ms:.2f} ms, {time.perf_counter() - start:.0f} s",
              flush=True)
    front = store.front()
    refs = store.references()
    store.close()

    print(f"\nrun {run_dir}: front of {len(front)} (budget {lat.budget_ms:g} ms, {lat.backend} {lat.scope})")
    for c in front:
        print(f"  front  {c.measured_ms:8.2f} ms  AP {c.ap:.4f}  {c.arch}")
    for v in reference_verdicts(front, refs):
        r = v.reference
        within = "within" if (r.measured_ms or 0) <= lat.budget_ms else "over"
        verdict = "dominated by " + ", ".join(c.arch_id for c in v.dominated_by) if v.dominated_by else "NOT dominated"
        print(f"  ref    {r.measured_ms:8.2f} ms  AP {r.ap:.4f}  {r.name} ({within} budget): {verdict}")
    for ref in refs:
        if not ref.measured_ms or ref.ap is None:
            continue
        hits = [c for c in front if c.measured_ms is not None and c.ap is not None
                and c.measured_ms <= 0.5 * ref.measured_ms and c.ap >= ref.ap + 0.01]
        found = ", ".join(f"{c.arch_id} ({c.measured_ms:.2f} ms, AP {c.ap:.4f})" for c in hits)
        print(f"paper claim vs {ref.name} (<= {0.5 * ref.measured_ms:.2f} ms at AP >= {ref.ap + 0.01:.4f}): "
              f"{'met by ' + found if found else 'not met'}")
    files = write_report(run_dir)
    print(f"report: {files.report_md} (plot {files.pareto_png})")


if __name__ == "__main__":
    main()
