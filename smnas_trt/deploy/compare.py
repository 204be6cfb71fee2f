"""`smnas deploy --compare fp32,int8`: the same models deployed once per precision, one table side by side.

Each precision goes into `OUT/<precision>/` (a normal deploy folder with its manifests and models.md);
`OUT/compare.md` and `OUT/compare.json` then hold one row per model and precision: size, the deployed
model's own AP (pycocotools on its runtime's detections), ΔAP against the first precision's deployed
model, network and end2end latency and the speed-up over the first precision, like an export benchmark.

The speed-up that counts is timed side by side: after the deploys, the networks of one model in every
precision are loaded in this process and timed in alternate blocks (`rounds` rounds of 0.05 s each), the
ratio taken per round. Each deploy's own timing is minutes from the other's, and a shared machine's speed
moves by tens of % within seconds (bench/machine_states.py), which the ratio of two such timings carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from smnas_trt.deploy.deployer import DeployOptions, DeployResult, DeployTarget, StageLog, deploy_models, deploy_spec
from smnas_trt.errors import DeployError
from smnas_trt.fileio import atomic_write_json, atomic_write_text
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import TimingConfig

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
# Short blocks, so both precisions of a round mostly share one machine state (they last 0.5-9 s here).
SIDE_BY_SIDE_ROUNDS = 100
SIDE_BY_SIDE_BLOCK = TimingConfig(warmup_runs=0, warmup_s=0.0, min_runs=1, max_runs=100_000, budget_s=0.05)


def parse_precisions(text: str, backend: str, threads: int | None = None, device: str | None = None
                     ) -> list[BackendSpec]:
    """`fp32,int8` -> one checked BackendSpec per precision (an impossible one is a one-line DeployError)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DeployError(f"--compare {text!r}: give two or more different precisions, e.g. fp32,int8")
    return [deploy_spec(backend, name, threads, device) for name in names]


def compare_precisions(targets: list[DeployTarget], options: DeployOptions, specs: Sequence[BackendSpec],
                       log: StageLog | None = None,
                       on_model: Callable[[int, DeployTarget], None] | None = None,
                       rounds: int = SIDE_BY_SIDE_ROUNDS) -> dict[str, Any]:
    """Deploy `targets` once per spec into `options.out/<precision>/`, time each model's precisions side by
    side (`rounds` rounds); write and return the comparison."""
    out = Path(options.out)
    results: dict[str, DeployResult] = {}
    for spec in specs:
        results[spec.precision] = deploy_models(targets, replace(options, out=out / spec.precision, spec=spec), log,
                                                on_model)
    side: dict[str, dict[str, list[float]]] = {}
    for target in targets:  # every precision of the model deployed and verified: time them side by side
        models = {p: next(m for m in r.models if m.arch_id == target.arch_id) for p, r in results.items()}
        folders = {p: m.folder for p, m in models.items() if m.status == "ok" and m.folder is not None}
        if len(folders) == len(models):
            side[target.arch_id] = side_by_side(folders, rounds)
    rows = comparison_rows(results, side)
    report = {"backend": specs[0].backend, "precisions": [s.precision for s in specs], "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / COMPARE_JSON, report)
    atomic_write_text(out / COMPARE_MD, comparison_markdown(rows))
    return report


def side_by_side(folders: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    """Network ms per round of each deployed folder (precision -> folder), timed in alternate blocks."""
    from smnas_trt.deploy.runtime import Detector

    detectors: dict[str, Detector] = {}
    try:
        for precision, folder in folders.items():
            detectors[precision] = Detector.load(folder, check_hashes=False)  # just deployed and checked
            detectors[precision].set_timing_inputs()
        times: dict[str, list[float]] = {p: [] for p in detectors}
        for _ in range(rounds + 1):  # the first round warms every session up and is dropped
            for precision, detector in detectors.items():
                times[precision].append(sum(r.time(SIDE_BY_SIDE_BLOCK).median_ms for r in detector.runners))
    finally:
        for detector in detectors.values():
            detector.close()
    return {p: t[1:] for p, t in times.items()}


def comparison_rows(results: dict[str, DeployResult], side: dict[str, dict[str, list[float]]] | None = None
                    ) -> list[dict[str, Any]]:
    """One row per (model, precision); ΔAP and speed-up against the first precision of that model, and with
    `side` (arch id -> precision -> network ms per round, from `side_by_side`) the side-by-side speed-up:
    median and p10/p90 of the per-round ratios."""
    rows: list[dict[str, Any]] = []
    first = next(iter(results))
    base: dict[str, dict[str, Any]] = {}
    for precision, result in results.items():
        for model in result.models:
            m = model.manifest
            accuracy = m.accuracy if m else None
            network, end2end = (m.latency.network, m.latency.end2end) if m else (None, None)
            row: dict[str, Any] = {
                "arch_id": model.arch_id, "arch": model.arch, "precision": precision, "status": model.status,
                "size_mb": m.size_bytes() / 1e6 if m else 0.0,
                "ap": accuracy.deployed.ap if accuracy else None, "ap50": accuracy.deployed.ap50 if accuracy else None,
                "ap_pytorch": accuracy.pytorch.ap if accuracy else None,
                "network_ms": network.median_ms if network else None,
                "end2end_ms": end2end.median_ms if end2end else None,
                "error": model.error,
            }
            if precision == first:
                base[model.arch_id] = row
            ref = base.get(model.arch_id) or {}
            row["delta_ap"] = _diff(row["ap"], ref.get("ap"))
            row["speedup"] = _ratio(ref.get("network_ms"), row["network_ms"])
            row["speedup_end2end"] = _ratio(ref.get("end2end_ms"), row["end2end_ms"])
            rounds = (side or {}).get(model.arch_id, {})
            if precision in rounds and first in rounds:
                ratios = [a / b for a, b in zip(rounds[first], rounds[precision], strict=True) if b > 0]
                row["speedup_side_by_side"] = _quantile(ratios, 0.5)
                row["speedup_side_by_side_p10"], row["speedup_side_by_side_p90"] = (_quantile(ratios, 0.1),
                                                                                    _quantile(ratios, 0.9))
            else:
                row["speedup_side_by_side"] = row["speedup_side_by_side_p10"] = row["speedup_side_by_side_p90"] = None
            rows.append(row)
    rows.sort(key=lambda r: (r["arch_id"], list(results).index(r["precision"])))
    return rows


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# Deployed models by precision", "",
             "ΔAP and speed-up: against the first precision's deployed model (AP: pycocotools on the deployed "
             "runtime's own detections). Speed-up side by side: the networks timed in alternate blocks in one "
             "process, median (p10-p90) of the per-round ratios; the deploys' own timings are minutes apart.", "",
             "| id | precision | status | MB | AP (deployed) | ΔAP | AP50 | network ms | speed-up side by side "
             "| speed-up (deploy timings) | end2end ms | speed-up e2e |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        side = ("-" if r["speedup_side_by_side"] is None else f"{_times(r['speedup_side_by_side'])} "
                f"({_times(r['speedup_side_by_side_p10'])}-{_times(r['speedup_side_by_side_p90'])})")
        lines.append(f"| {r['arch_id']} | {r['precision']} | {r['status']} | {r['size_mb']:.2f} | "
                     f"{_fmt(r['ap'], '.3f')} | {_fmt(r['delta_ap'], '+.3f')} | {_fmt(r['ap50'], '.3f')} | "
                     f"{_fmt(r['network_ms'], '.2f')} | {side} | {_times(r['speedup'])} | "
                     f"{_fmt(r['end2end_ms'], '.2f')} | {_times(r['speedup_end2end'])} |")
    return "\n".join(lines) + "\n"
