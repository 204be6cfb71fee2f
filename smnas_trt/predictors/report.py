"""Accuracy report of a latency predictor: saved predictions -> metrics, text table, scatter plot.

Every figure in `report.json` is computed from `predictions.csv` read back from disk, so anyone can
recompute the report from the saved predictions (`report_from_csv`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smnas_trt.errors import PredictorError
from smnas_trt.fileio import atomic_path, atomic_write_json, atomic_write_text
from smnas_trt.predictors.metrics import accuracy, coverage
from smnas_trt.profiling.profile import NOISE_WARN, noise_warning

PREDICTION_COLUMNS = ("arch", "measured_ms", "predicted_ms", "lower_ms", "upper_ms", "lut_sum_ms", "flops_linear_ms",
                      "fold")
METHODS = (("predictor", "predicted_ms", "XGBoost predictor"), ("lut_sum", "lut_sum_ms", "sum of LUT entries"),
           ("flops_linear", "flops_linear_ms", "linear fit on FLOPs"))
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.json"
SCATTER_FILE = "scatter.png"

Predictions = dict[str, np.ndarray]


def predictions_table(archs: Sequence[str], measured: np.ndarray, predicted: np.ndarray, lower: np.ndarray,
                      upper: np.ndarray, lut_sum: np.ndarray, flops_linear: np.ndarray,
                      fold: np.ndarray | None = None) -> Predictions:
    n = len(archs)
    columns = {"arch": np.asarray(archs, dtype=object), "measured_ms": measured, "predicted_ms": predicted,
               "lower_ms": lower, "upper_ms": upper, "lut_sum_ms": lut_sum, "flops_linear_ms": flops_linear,
               "fold": fold if fold is not None else np.full(n, -1)}
    for name, values in columns.items():
        if len(values) != n:
            raise PredictorError(f"predictions: column {name} has {len(values)} rows, expected {n}")
    return {k: np.asarray(v) for k, v in columns.items()}


def write_predictions_csv(path: str | Path, preds: Mapping[str, np.ndarray]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(PREDICTION_COLUMNS)
    for i in range(len(preds["arch"])):
        row: list[Any] = [preds["arch"][i]]
        for name in PREDICTION_COLUMNS[1:-1]:
            v = float(preds[name][i])
            row.append("" if math.isnan(v) else repr(v))  # repr: round-trips the float exactly
        row.append(int(preds["fold"][i]))
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_predictions_csv(path: str | Path) -> Predictions:
    path = Path(path)
    if not path.is_file():
        raise PredictorError(f"predictions file not found: {path}")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != PREDICTION_COLUMNS:
            raise PredictorError(f"{path}: expected columns {', '.join(PREDICTION_COLUMNS)}, got {header}")
        rows = list(reader)
    out: Predictions = {"arch": np.array([r[0] for r in rows], dtype=object)}
    for j, name in enumerate(PREDICTION_COLUMNS[1:-1], start=1):
        out[name] = np.array([float(r[j]) if r[j] else math.nan for r in rows], dtype=np.float64)
    out["fold"] = np.array([int(r[-1]) for r in rows], dtype=np.int64)
    return out


def compute_report(preds: Mapping[str, np.ndarray], interval: float, extra: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Metrics of the predictor and both baselines on the same rows, plus interval coverage."""
    measured = preds["measured_ms"]
    report: dict[str, Any] = {"n": len(measured), "interval": interval}
    for key, column, _ in METHODS:
        report[key] = accuracy(measured, preds[column])
    # The LUT sum exists only where the table holds every piece: score the predictor on those rows too.
    lut_rows = np.isfinite(preds["lut_sum_ms"])
    if 0 < lut_rows.sum() < len(measured):
        report["predictor_on_lut_rows"] = accuracy(measured[lut_rows], preds["predicted_ms"][lut_rows])
    report["coverage"] = coverage(measured, preds["lower_ms"], preds["upper_ms"])
    report["median_interval_width_pct"] = float(np.median((preds["upper_ms"] - preds["lower_ms"])
                                                          / preds["predicted_ms"] * 100)) if len(measured) else math.nan
    report.update(extra or {})
    return report


def report_from_csv(path: str | Path, interval: float) -> dict[str, Any]:
    return compute_report(read_predictions_csv(path), interval)


def format_report(report: Mapping[str, Any], title: str) -> str:
    """Plain-text table: one row per method, the figures side by side."""
    lines = [title, f"{'method':<22}{'n':>6}{'±5%':>8}{'±10%':>8}{'MAPE %':>9}{'RMSE ms':>10}{'tau':>7}"]
    rows = [(report[key], label) for key, _, label in METHODS]
    if "predictor_on_lut_rows" in report:
        rows.insert(1, (report["predictor_on_lut_rows"], "  predictor, LUT rows"))
    if report.get("errors", {}).get("drift") is not None and "predictor_raw" in report:
        rows[0] = (rows[0][0], "predictor (drift-corr.)")
        rows.insert(1, (report["predictor_raw"], "predictor, raw"))
    for m, label in rows:
        n = f"{m['n']}" + (f"(-{m['missing']})" if m["missing"] else "")
        lines.append(f"{label:<22}{n:>6}{_pct(m['within_5']):>8}{_pct(m['within_10']):>8}{_num(m['mape'], 2):>9}"
                     f"{_num(m['rmse_ms'], 3):>10}{_num(m['kendall_tau'], 3):>7}")
    lines.append(f"{int(report['interval'] * 100)}% interval coverage: {_pct(report['coverage'])} "
                 f"(median width {_num(report['median_interval_width_pct'], 1)}% of the prediction)")
    if "predictor_raw" in report and report.get("errors", {}).get("drift") is not None:
        lines.append(f"  raw (uncorrected) interval coverage: {_pct(report['predictor_raw']['coverage'])}")
    if any(report[key]["missing"] for key, _, _ in METHODS):
        lines.append("(-k): rows without that prediction (LUT sum: the table lacks a piece of the arch), left out")
    lines += error_lines(report)
    return "\n".join(lines)


def error_lines(report: Mapping[str, Any]) -> list[str]:
    """The three errors apart: each table's own repeat error, the drift between the runs, the predictor's."""
    errors = report.get("errors") or {}
    out = []
    for key, what in (("repeat_train_table", "predictor's table"), ("repeat_eval_table", "evaluated table")):
        r = errors.get(key)
        if r is not None:
            text = "not recorded (a table made before repeat checks)" if r.get("median") is None else \
                f"median {_pct(r['median'])}, p90 {_pct(r['p90'])}"
            out.append(f"measurement repeat error of the {what} (its own re-timings): {text}")
            if r.get("median") is not None and r["median"] > NOISE_WARN:
                out.append(f"warning: {noise_warning(r['median'])}")
    if "drift_note" in errors:
        out.append(errors["drift_note"])
    if out:
        out.append(f"predictor error: MAPE {_num(report['predictor']['mape'], 2)}%; it can only be judged against the "
                   "errors above (a predictor cannot beat its table's repeat error)")
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float, digits: int) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def scatter_plot(preds: Mapping[str, np.ndarray], path: str | Path, title: str) -> None:
    """Predicted vs measured, log axes, y = x and the +-10% band; baselines drawn faintly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = preds["measured_ms"]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    styles = {"flops_linear": ("tab:gray", "x", 0.5), "lut_sum": ("tab:orange", "^", 0.5),
              "predictor": ("tab:blue", "o", 0.9)}
    values = [measured]
    for key, column, label in reversed(METHODS):
        p = preds[column]
        ok = np.isfinite(p) & (p > 0)
        if not ok.any():
            continue
        color, marker, alpha = styles[key]
        ax.scatter(measured[ok], p[ok], s=14, c=color, marker=marker, alpha=alpha, label=label, linewidths=0.8)
        values.append(p[ok])
    lo = float(min(v.min() for v in values if len(v))) * 0.8
    hi = float(max(v.max() for v in values if len(v))) * 1.25
    line = np.geomspace(lo, hi, 50)
    ax.plot(line, line, "k-", lw=1)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10%")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)",
           ylabel="predicted latency (ms)", title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(out_dir: str | Path, preds: Mapping[str, np.ndarray], interval: float, title: str,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """predictions.csv, then report.json computed from the CSV as written, then scatter.png."""
    out_dir = Path(out_dir)
    write_predictions_csv(out_dir / PREDICTIONS_FILE, preds)
    saved = read_predictions_csv(out_dir / PREDICTIONS_FILE)
    report = compute_report(saved, interval, {"title": title, **(extra or {})})
    atomic_write_json(out_dir / REPORT_FILE, _json_safe(report))
    scatter_plot(saved, out_dir / SCATTER_FILE, title)
    return report


def _json_safe(obj: Any) -> Any:
    """NaN -> None so the JSON is strict."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj
