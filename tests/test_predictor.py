"""Latency predictor: analytic counts, features, fit/save/load, fingerprints, baselines, report, CLI.

The training data is real: a module-scoped fixture exports tiny detectors' network bodies to ONNX
(legacy exporter: the fastest here), times them on ONNX Runtime CPU and stores them in SQLite
latency tables through the profiling layer's API, together with the module pieces of three archs.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from smnas_trt.cli import app
from smnas_trt.errors import ForeignDeviceError, PredictorError
from smnas_trt.models.counts import count_flops
from smnas_trt.models.piece_keys import arch_piece_keys
from smnas_trt.models.pieces import module_pieces
from smnas_trt.predictors import FitConfig, LatencyPredictor, evaluate_on_table, fit_predictor, load_training_data
from smnas_trt.predictors.analytic import arch_counts
from smnas_trt.predictors.features import FeatureConfig, Featurizer
from smnas_trt.predictors.metrics import FlopsLinear, accuracy
from smnas_trt.predictors.predictor import PRIOR_FEATURES, _conformal_quantile, _fit_prior, _log_prior
from smnas_trt.predictors.report import (
    PREDICTIONS_FILE,
    REPORT_FILE,
    SCATTER_FILE,
    read_predictions_csv,
    report_from_csv,
)
from smnas_trt.profiling.cache import OnnxCache
from smnas_trt.profiling.fingerprint import Fingerprint
from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.profile import model_job, piece_config, piece_job, time_jobs
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import TimingConfig
from smnas_trt.space import parse

TRAIN_ARCHS = [
    "128x128/r18_16_1-21-2-12/fpn:P3-P6:32/none/retina:1x32",
    "128x128/r18_16_11-2-21-12/none:C4/none/fcos:1x32",
    "128x128/r18_24_1-21-21-2/fpn:P3-P6:48/none/fcos:2x32",
    "128x128/r34_16_11-21-211-2/none:C5/none/retina:2x32",
    "128x128/r18_16_1-2-2-2/none:C4/rpn/2fc:64",
    "128x128/r18_16_21-1-2-21/fpn:P3-P6:32/rpn/2fc:64",
    "128x128/r50_16_1-2-2-2/none:C4/none/fcos:1x32",
    "128x128/mbv2_0.25/fpn:P3-P6:32/none/retina:1x32",
    "128x128/mbv2_0.35/none:C5/none/fcos:2x48",
    "128x128/r18_32_1-2-21-2/fpn:P2-P5:32/none/fcos:1x48",
    "128x128/r34_24_111-2-21-21/none:C4/rpn/cascade2:64",
    "128x128/r18_24_2-11-2-2/fpn:P3-P6:48/none/retina:3x48",
]
TEST_ARCHS = [
    "128x128/r18_16_2-1-2-21/fpn:P3-P6:32/none/fcos:1x32",
    "128x128/r18_24_1-2-2-21/none:C5/none/retina:1x32",
    "128x128/mbv2_0.5/none:C4/none/fcos:1x32",
    "128x128/r34_16_1-21-21-1/none:C4/rpn/2fc:64",
]
PIECE_ARCHS = TRAIN_ARCHS[:2] + TEST_ARCHS[:1]
QUICK = TimingConfig(warmup_runs=2, warmup_s=0.0, min_runs=5, max_runs=15, budget_s=0.03)
FAST_FIT = FitConfig(folds=3, rounds=60, scale_rounds=20, threads=1)


def _profile(path: Path, archs: list[str], pieces_of: list[str]) -> None:
    """Time the models and the pieces of `pieces_of` into a table with the profiler's own jobs."""
    backend = BackendSpec(threads=1).build()
    pieces = {p.key: p for text in pieces_of for p in module_pieces(parse(text), num_classes=81)}
    jobs = [model_job(parse(text), 81, 1, "fp32", "legacy") for text in archs]
    jobs += [piece_job(p, 1, "fp32", "legacy") for p in pieces.values()]
    with LatencyTable.create(path, backend.fingerprint()) as table, OnnxCache(None) as cache:
        for result in time_jobs(backend, jobs, QUICK, cache):
            assert result.stats is not None, result.error
            kind, key = result.job.name.split(":", 1)
            if kind == "network":
                table.put_model(key, "network", result.stats, result.extra)
            else:
                piece = pieces[key]
                table.put_module(piece.key, piece.kind, piece_config(piece), result.stats, result.extra)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predictor_luts")
    train, test = root / "train.db", root / "test.db"
    _profile(train, TRAIN_ARCHS, PIECE_ARCHS[:2])
    _profile(test, TEST_ARCHS, PIECE_ARCHS[2:])
    return train, test


@pytest.fixture(scope="module")
def fitted(tables: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LatencyPredictor,
                                                                                         dict]:
    out = tmp_path_factory.mktemp("predictor") / "model"
    predictor, _, report = fit_predictor(tables[0], out, FAST_FIT)
    return out, predictor, report


# ------------------------------------------------------------------------------------ analytic / keys
@pytest.mark.parametrize("text", [
    TRAIN_ARCHS[0], TRAIN_ARCHS[10], TEST_ARCHS[2],
    "800x600/r50_64_111-2111-211111-211/fpn:P3-P7:256/none/retina",
    "800x600/x50(32x4d)_56_111-2111-211111-211/fpn:P2-P6:256/rpn/cascade3",
    "1333x800/mbv2_1.4/fpn:P2-P5:128/rpn/2fc:512",
])
def test_analytic_counts_and_keys_match_the_builder(text: str) -> None:
    """FLOPs and params equal FlopCounterMode on the real modules; LUT keys equal module_pieces' keys."""
    arch = parse(text)
    truth = count_flops(arch, 1, 81)
    mine = arch_counts(arch, 81)["total"]
    assert mine["flops"] == truth.flops
    assert mine["params"] == truth.params
    assert arch_piece_keys(arch, 81) == [(p.kind, p.key) for p in module_pieces(arch, device="meta",
                                                                                 from_scratch=False)]


def test_features_are_batch_independent_and_consistent() -> None:
    """Cached piece rows give the same features as a fresh featuriser, from strings or Arch objects."""
    archs = TRAIN_ARCHS + TEST_ARCHS
    shared = Featurizer(FeatureConfig(use_lut=False))
    batch = shared.transform([parse(a) for a in archs])
    again = shared.transform(archs[::-1])[::-1]
    single = np.concatenate([Featurizer(FeatureConfig(use_lut=False)).transform([a]) for a in archs])
    assert np.array_equal(batch, single) and np.array_equal(batch, again)
    flops = batch[:, shared.column("total_flops")]
    stage_sum = sum(batch[:, shared.column(f"stage{s}_flops")] for s in range(1, 5)) + \
        batch[:, shared.column("stem_flops")] + batch[:, shared.column("neck_flops")] + \
        batch[:, shared.column("dense_head_flops")] + batch[:, shared.column("rpn_flops")] + \
        batch[:, shared.column("roi_flops")]
    assert np.allclose(flops, stage_sum)
    assert np.allclose(flops, [arch_counts(parse(a), 81)["total"]["flops"] for a in archs])
    # none:C4 builds three stages: stage 4 contributes nothing.
    c4 = archs.index("128x128/r18_16_11-2-21-12/none:C4/none/fcos:1x32")
    assert batch[c4, shared.column("stage4_flops")] == 0


def test_lut_features_sum_table_entries_and_count_missing(tables: tuple[Path, Path]) -> None:
    with LatencyTable.open(tables[0]) as table:
        module_ms = table.module_latencies()
    featurizer = Featurizer(FeatureConfig(), module_ms)
    X = featurizer.transform(TRAIN_ARCHS)
    total = X[:, featurizer.column("lut_total_ms")]
    missing = X[:, featurizer.column("lut_missing")]
    for i, text in enumerate(TRAIN_ARCHS):
        keys = [k for _, k in arch_piece_keys(parse(text), 81)]
        absent = sum(k not in module_ms for k in keys)
        assert missing[i] == absent
        if absent:
            assert math.isnan(total[i])
        else:
            assert total[i] == pytest.approx(sum(module_ms[k] for k in keys))
    assert not any(math.isnan(t) for t in total[:2])  # their pieces were profiled
    assert featurizer.lut_missing == int(missing.sum()) > 0


# ------------------------------------------------------------------------------------ model
def test_fit_save_load_predicts_identically(fitted: tuple[Path, LatencyPredictor, dict], tmp_path: Path) -> None:
    out, predictor, _ = fitted
    archs = TEST_ARCHS + TRAIN_ARCHS[:3]
    ms, unc = predictor.predict(archs)
    loaded = LatencyPredictor.load(out)
    ms2, unc2 = loaded.predict([parse(a) for a in archs])
    assert np.array_equal(ms, ms2) and np.array_equal(unc, unc2)
    assert np.all(ms > 0) and np.all(unc > 0)
    mean, lower, upper = loaded.predict_interval(archs)
    assert np.all(lower < mean) and np.all(mean < upper)
    assert np.allclose((upper - lower) / 2, unc2)
    files = sorted(p.name for p in out.iterdir())
    assert {"predictor.json", "mean.ubj", "scale.ubj", "modules.json", "cv"} <= set(files)
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)
    meta = json.loads((out / "predictor.json").read_text())
    assert meta["n_train"] == len(TRAIN_ARCHS) and meta["backend"] == "ort-cpu" and meta["precision"] == "fp32"
    assert meta["fingerprint_key"] == LatencyTable.open(fitted_table(out)).fingerprint.key
    # Re-saving keeps the report files and still loads to the same predictions.
    loaded.save(out)
    assert (out / "cv" / REPORT_FILE).is_file()
    assert np.array_equal(LatencyPredictor.load(out).predict(archs)[0], ms)


def fitted_table(out: Path) -> str:
    return json.loads((out / "predictor.json").read_text())["source"]


def test_refuses_foreign_fingerprint_and_bad_files(fitted: tuple[Path, LatencyPredictor, dict], tables: tuple[Path,
                                                   Path], tmp_path: Path) -> None:
    out, predictor, _ = fitted
    fp = predictor.fingerprint
    assert fp is not None
    other = replace(fp, device_name="Some Other CPU", threads=(fp.threads or 1) + 7)
    with pytest.raises(ForeignDeviceError, match="Some Other CPU"):
        LatencyPredictor.load(out, fingerprint=other)
    LatencyPredictor.load(out, fingerprint=other, allow_foreign=True)
    assert LatencyPredictor.load(out, fingerprint=fp).fingerprint == fp
    # A table measured elsewhere: real rows copied under another fingerprint.
    foreign = tmp_path / "foreign.db"
    with LatencyTable.open(tables[1]) as src, LatencyTable.create(foreign, other) as dst:
        for row in src.model_rows():
            dst.put_model(row.arch, row.scope, row.stats)
    with pytest.raises(ForeignDeviceError, match="Some Other CPU"):
        evaluate_on_table(predictor, foreign)
    with pytest.raises(ForeignDeviceError):
        predictor.refit(load_training_data(foreign))
    # Schema and checksum checks.
    bad = tmp_path / "bad"
    predictor.save(bad)
    meta = json.loads((bad / "predictor.json").read_text())
    (bad / "predictor.json").write_text(json.dumps({**meta, "feature_schema": 999}))
    with pytest.raises(PredictorError, match="feature schema"):
        LatencyPredictor.load(bad)
    (bad / "predictor.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PredictorError, match="not valid JSON"):
        LatencyPredictor.load(bad)
    (bad / "predictor.json").write_text(json.dumps(meta))
    (bad / "scale.ubj").write_bytes(b"garbage")
    with pytest.raises(PredictorError, match="checksum"):
        LatencyPredictor.load(bad)
    with pytest.raises(PredictorError, match="not a predictor folder"):
        LatencyPredictor.load(tmp_path)


def test_baselines_are_computed_and_report_recomputes(fitted: tuple[Path, LatencyPredictor, dict],
                                                      tables: tuple[Path, Path]) -> None:
    out, predictor, report = fitted
    data = load_training_data(tables[0])
    flops = np.array([arch_counts(parse(a), 81)["total"]["flops"] for a in data.archs])
    slope, intercept = np.polyfit(flops, data.ms, 1)
    assert predictor.flops_baseline.slope == pytest.approx(slope, rel=1e-6)
    assert predictor.flops_baseline.intercept == pytest.approx(intercept, rel=1e-6, abs=1e-9)
    preds = read_predictions_csv(out / "cv" / PREDICTIONS_FILE)
    by_arch = dict(zip(data.archs, flops, strict=True))
    row_flops = np.array([by_arch[a] for a in preds["arch"]])
    for k in np.unique(preds["fold"]):  # the FLOPs baseline is fitted on the other folds, like the predictor
        test = preds["fold"] == k
        expected = FlopsLinear.fit(row_flops[~test], preds["measured_ms"][~test]).predict(row_flops[test])
        assert np.allclose(preds["flops_linear_ms"][test], expected)
    with LatencyTable.open(tables[0]) as table:
        module_ms = table.module_latencies()
    for a, lut in zip(preds["arch"], preds["lut_sum_ms"], strict=True):
        keys = [k for _, k in arch_piece_keys(parse(a), 81)]
        if all(k in module_ms for k in keys):
            assert lut == pytest.approx(sum(module_ms[k] for k in keys))
        else:
            assert math.isnan(lut)
    saved = json.loads((out / "cv" / REPORT_FILE).read_text())
    recomputed = report_from_csv(out / "cv" / PREDICTIONS_FILE, saved["interval"])
    for method in ("predictor", "lut_sum", "flops_linear"):
        for key, value in recomputed[method].items():
            assert saved[method][key] == (None if isinstance(value, float) and math.isnan(value) else
                                          pytest.approx(value))
    assert saved["coverage"] == pytest.approx(recomputed["coverage"])
    # The predictor is also scored on exactly the rows the LUT-sum baseline covers (like for like).
    lut_rows = np.isfinite(preds["lut_sum_ms"])
    assert 0 < lut_rows.sum() < len(lut_rows)
    same_rows = accuracy(preds["measured_ms"][lut_rows], preds["predicted_ms"][lut_rows])
    assert saved["predictor_on_lut_rows"]["n"] == saved["lut_sum"]["n"] == int(lut_rows.sum())
    assert saved["predictor_on_lut_rows"]["mape"] == pytest.approx(same_rows["mape"])
    rel = np.abs(preds["predicted_ms"] - preds["measured_ms"]) / preds["measured_ms"]
    assert saved["predictor"]["within_10"] == pytest.approx(np.mean(rel <= 0.10))
    assert (out / "cv" / SCATTER_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["predictor"]["n"] == len(TRAIN_ARCHS)


def test_additive_prior_recovers_a_sum_of_layer_costs() -> None:
    """Latency that is a fixed cost plus per-FLOP and per-byte costs is what the prior fits exactly."""
    archs = [parse(a) for a in TRAIN_ARCHS + TEST_ARCHS]
    X = Featurizer(FeatureConfig(use_lut=False)).transform(archs)
    names = Featurizer(FeatureConfig(use_lut=False)).names
    columns = [names.index(c) for c in PRIOR_FEATURES]
    ms = 0.3 + 2e-8 * X[:, names.index("total_flops")] + 5e-9 * X[:, names.index("total_act_bytes")]
    coefficients = _fit_prior(X, np.log(ms), columns)
    assert (coefficients >= 0).all()
    np.testing.assert_allclose(np.exp(_log_prior(X, columns, coefficients)), ms, rtol=0.01)


def test_metrics_and_conformal_quantile() -> None:
    measured = np.array([10.0, 10.0, 10.0, 20.0])
    m = accuracy(measured, np.array([10.4, 10.9, 12.0, np.nan]))
    assert m["n"] == 3 and m["missing"] == 1
    assert m["within_5"] == pytest.approx(1 / 3) and m["within_10"] == pytest.approx(2 / 3)
    assert m["mape"] == pytest.approx(100 * (0.04 + 0.09 + 0.2) / 3)
    assert m["rmse_ms"] == pytest.approx(math.sqrt((0.16 + 0.81 + 4) / 3))
    assert accuracy(np.array([1.0, 2, 3, 4]), np.array([1.5, 2.5, 3.5, 4.5]))["kendall_tau"] == pytest.approx(1.0)
    scores = np.arange(1, 20, dtype=float)  # n = 19: the 90% quantile is the 18th smallest
    assert _conformal_quantile(scores, 0.9) == 18.0


def test_cli_fit_eval_predict(tables: tuple[Path, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predictor", "fit", "--lut", str(tables[0]), "--out", str(out), "--folds", "3",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "XGBoost predictor" in result.output and "linear fit on FLOPs" in result.output
    result = runner.invoke(app, ["predictor", "eval", "--predictor", str(out), "--lut", str(tables[1]), "--out",
                                 str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / REPORT_FILE).read_text())
    assert report["predictor"]["n"] == len(TEST_ARCHS)
    recomputed = json.loads(json.dumps(report_from_csv(tmp_path / "eval" / PREDICTIONS_FILE, 0.9),
                                       default=str).replace("NaN", "null"))
    assert {k: report[k] for k in recomputed} == recomputed
    # Tables made without anchors: the report says that drift cannot be measured, and how to add them.
    assert report["errors"]["drift"] is None and "--resume --anchors" in result.output
    result = runner.invoke(app, ["predictor", "predict", "--predictor", str(out), *TEST_ARCHS[:2]])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(" ms  [" in line for line in lines)
    ms = LatencyPredictor.load(out).predict(TEST_ARCHS[:2])[0]
    assert lines[0].split()[0] == f"{ms[0]:.3f}"


def test_eval_on_another_runs_table_corrects_for_drift_and_states_the_three_errors(tmp_path: Path) -> None:
    """Two profile runs (each with its anchors and repeat check): the predictor fitted on the first is scored on
    the second raw and drift-corrected, with each table's repeat error and the drift between them."""
    from smnas_trt.predictors.report import format_report
    from smnas_trt.profiling.profile import profile_lut, sample_models
    from smnas_trt.space import load_space

    tiny = load_space("tiny")
    with OnnxCache(tmp_path / "cache") as cache:
        for name, seed in (("a", 1), ("b", 2)):
            profile_lut(space=tiny, out=tmp_path / f"{name}.db", spec=BackendSpec(threads=1), timing=QUICK,
                        archs=sample_models(tiny, 12, seed=seed), cache=cache, anchors=3)
    predictor, _, _ = fit_predictor(tmp_path / "a.db", tmp_path / "pred", FAST_FIT)
    assert len(predictor.meta.anchors_ms) == 3 and predictor.meta.table_repeat["median"] is not None
    report = evaluate_on_table(predictor, tmp_path / "b.db", exclude=set(load_training_data(tmp_path / "a.db").archs))
    errors = report["errors"]
    assert errors["drift"]["n"] == 3 and errors["drift"]["ratio"] > 0
    assert errors["repeat_train_table"]["median"] is not None and errors["repeat_eval_table"]["median"] is not None
    assert set(report["predictor_raw"]) >= {"within_10", "mape", "coverage"}
    text = format_report(report, report["title"])
    for line in ("predictor (drift-corr.)", "predictor, raw", "measurement repeat error of the predictor's table",
                 "measurement repeat error of the evaluated table", "drift: 3 anchor models time", "predictor error"):
        assert line in text


# ------------------------------------------------------------------------------------ foreign devices
def _foreign_copy(src: Path, dst: Path, device: str) -> Fingerprint:
    """The rows of a real table under another device's fingerprint (as if measured on another machine)."""
    with LatencyTable.open(src) as table:
        other = replace(table.fingerprint, device_name=device, threads=(table.fingerprint.threads or 1) + 7)
        with LatencyTable.create(dst, other) as out:
            for row in table.model_rows():
                out.put_model(row.arch, row.scope, row.stats, row.extra)
            for module in table.module_rows():
                out.put_module(module.key, module.kind, module.config, module.stats, module.extra)
    return other


def test_fit_accepts_a_foreign_table_and_says_which_device_it_serves(tables: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """Fitting offline is allowed; eval and the search refuse another device's table unless allowed."""
    from smnas_trt.search.config import LatencyConfig
    from smnas_trt.search.latency import load_predictor

    foreign = tmp_path / "gpu_box.db"
    other = _foreign_copy(tables[0], foreign, "Some GPU Box CPU")
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predictor", "fit", "--lut", str(foreign), "--out", str(out), "--folds", "3",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    note = [line for line in result.output.splitlines() if line.startswith(f"{foreign} was measured on")]
    assert note == [f"{foreign} was measured on {other.describe()}; the predictor serves that device only "
                    "(predictor eval refuses tables measured elsewhere unless --allow-foreign-device, the search "
                    "unless latency.allow_foreign_device)"]
    assert LatencyPredictor.load(out).fingerprint == other
    # --allow-foreign-device is gone from fit: it never did anything there.
    assert "--allow-foreign-device" not in CliRunner().invoke(app, ["predictor", "fit", "--help"]).output
    # eval on this machine's table: refused in one line naming both devices, exit 2; allowed with the flag.
    smnas = Path(sys.executable).parent / "smnas"
    proc = subprocess.run([str(smnas), "predictor", "eval", "--predictor", str(out), "--lut", str(tables[1])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "Some GPU Box CPU" in line and "--allow-foreign-device" in line
    allowed = CliRunner().invoke(app, ["predictor", "eval", "--predictor", str(out), "--lut", str(tables[1]),
                                       "--allow-foreign-device"])
    assert allowed.exit_code == 0, allowed.output
    # The search loads a predictor against its table the same way.
    cfg = LatencyConfig(budget_ms=5, lut=str(tables[1]))
    with pytest.raises(ForeignDeviceError, match="Some GPU Box CPU"):
        load_predictor(out, cfg)
    assert load_predictor(out, cfg.model_copy(update={"allow_foreign_device": True})).fingerprint == other


# ------------------------------------------------------------------------------------ damaged folders
def test_predictor_json_written_before_the_schema_reads_and_writes_back_unchanged() -> None:
    """A predictor.json the dict-based writer wrote validates, and dumping the model gives the very same file."""
    from smnas_trt.predictors.predictor import PredictorMeta

    text = (Path(__file__).parent / "data" / "predictor_v2.json").read_text()
    meta = PredictorMeta.model_validate(json.loads(text))
    assert meta.n_train == 12 and meta.fit_config.folds == 3 and meta.feature_config.use_lut
    assert len(meta.prior.coefficients) == len(meta.prior.features) + 1 and meta.scope == "network"
    assert json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True) + "\n" == text


# Found by tests/test_fuzz_inputs.py (Hypothesis): each edit of predictor.json raised KeyError, TypeError,
# ValueError, OverflowError or AttributeError (in load or in describe/predict), or made NaN predictions.
def _del(*path: str):  # type: ignore[no-untyped-def]
    def edit(meta: dict) -> None:  # type: ignore[type-arg]
        node = meta
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_del("prior"), "prior: Field required"),
    (_del("prior", "coefficients"), "prior.coefficients: Field required"),
    (_del("n_train"), "n_train: Field required"),
    (_del("feature_config"), "feature_config: Field required"),
    (_del("conformal_quantile"), "conformal_quantile: Field required"),
    (_del("files"), "files: Field required"),
    (lambda m: m["prior"].update(coefficients=m["prior"]["coefficients"][:-1]), "one non-negative coefficient more"),
    (lambda m: m["prior"].update(coefficients=[{}] * len(m["prior"]["coefficients"])),
     "prior.coefficients.0: Input should be a valid number"),
    (lambda m: m["prior"].update(coefficients=[float("nan")] * len(m["prior"]["coefficients"])),
     "prior.coefficients.0: Input should be a finite number"),
    (lambda m: m["prior"].update(coefficients=[-1.0] * len(m["prior"]["coefficients"])),
     "prior.coefficients.0: Input should be greater than or equal to 0"),
    (lambda m: m["prior"].update(features=5), "prior.features: Input should be a valid list"),
    (lambda m: m["prior"].update(features=["x", *m["prior"]["features"][1:]]), "prior: features ['x'] are not in"),
    (lambda m: m.update(feature_names=m["feature_names"][:-1]), "feature_names: not the feature names of schema"),
    (lambda m: m["feature_config"].update(num_classes=float("inf")),
     "feature_config.num_classes: Input should be a finite number"),
    (lambda m: m["feature_config"].update(schema_version=3), "feature_config.schema_version: feature schema 3 is not"),
    (lambda m: m["cv_metrics"].update(predictor=None), "cv_metrics.predictor: Input should be a valid dictionary"),
    (lambda m: m["fit_config"].update(folds="three"), "fit_config.folds: Input should be a valid integer"),
    (lambda m: m["fit_config"].update(threads=10**400), "fit_config.threads: Input should be less than or equal"),
    (lambda m: m.update(files=5), "files: Input should be a valid dictionary"),
    (lambda m: m.update(files={"a": "b"}), "files: must list mean.ubj, scale.ubj and modules.json"),
    (lambda m: m.update(scope="x"), "scope: Input should be 'network' or 'end2end', got 'x'"),
    (lambda m: m.update(n_train=True), "n_train: Input should be a valid integer"),
    (lambda m: m.update(conformal_quantile="1"), "conformal_quantile: Input should be a valid number"),
    (lambda m: m.update(fingerprint={"backend": 1}), "fingerprint: missing fields"),
    (lambda m: m["baselines"]["flops_linear"].update(intercept_ms=None), "baselines.flops_linear.intercept_ms: Input"),
])
def test_damaged_predictor_json_is_one_line_error(fitted: tuple[Path, LatencyPredictor, dict], tmp_path: Path,
                                                  edit, message: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "p"
    fitted[1].save(out)
    meta = json.loads((out / "predictor.json").read_text())
    edit(meta)
    (out / "predictor.json").write_text(json.dumps(meta))
    with pytest.raises(PredictorError, match=re.escape(message)) as info:
        LatencyPredictor.load(out)
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith(str(out / "predictor.json")) and str(info.value).endswith("; refit the predictor")


def test_a_damaged_model_file_with_a_matching_checksum_never_reaches_xgboost(
        fitted: tuple[Path, LatencyPredictor, dict], tmp_path: Path) -> None:
    """Found by Hypothesis: XGBoost's loader segfaulted or aborted the process on such a file."""
    import hashlib

    out = tmp_path / "p"
    fitted[1].save(out)
    good = (out / "mean.ubj").read_bytes()
    meta = json.loads((out / "predictor.json").read_text())
    for damaged in (good[:747], good[:674], good[:100] + bytes([good[100] ^ 0x10]) + good[101:]):
        (out / "mean.ubj").write_bytes(damaged)
        meta["files"]["mean.ubj"] = hashlib.sha256(damaged).hexdigest()
        (out / "predictor.json").write_text(json.dumps(meta))
        with pytest.raises(PredictorError, match=r"mean.ubj: not a readable XGBoost model \(") as info:
            LatencyPredictor.load(out)
        assert len(str(info.value).splitlines()) == 1
