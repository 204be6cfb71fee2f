"""profile-lut on real exports and real ORT sessions: the loop, the ONNX cache, the repeat check, anchors, drift."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from smnas_trt.errors import ProfilingError
from smnas_trt.models.graphs import GraphSpec
from smnas_trt.profiling.backend import Backend, Runner
from smnas_trt.profiling.backends import OrtCpuBackend
from smnas_trt.profiling.cache import OnnxCache
from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.profile import (
    ExportAhead,
    TimingJob,
    choose_anchors,
    dedup_pieces,
    measure_drift,
    median_pass,
    model_job,
    parse_module_kinds,
    profile_lut,
    read_arch_file,
    sample_models,
    stratified_sample,
    structure_of,
    time_jobs,
)
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import LatencyStats, TimingConfig, time_runs
from smnas_trt.space import load_space

torch.set_num_threads(1)
QUICK = TimingConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, max_runs=3, budget_s=0.0)


@pytest.fixture(scope="module")
def space():
    return load_space("demo")


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


def test_sample_models_cover_structures(space) -> None:
    archs = sample_models(space, 30, seed=1)
    assert len({str(a) for a in archs}) == 30
    assert len({structure_of(a) for a in archs}) == 30  # 30 models, 30 different structural combinations
    assert [str(a) for a in sample_models(space, 30, seed=1)] == [str(a) for a in archs]


def test_stratified_sample_keeps_every_kind() -> None:
    from types import SimpleNamespace

    pieces = [SimpleNamespace(kind="stage", key=f"s{c}") for c in range(40)] + \
        [SimpleNamespace(kind="head", key=f"h{c}") for c in range(2)]
    picked = stratified_sample(pieces, 10, seed=0)
    assert len(picked) <= 10 and {p.kind for p in picked} == {"stage", "head"}
    assert len(dedup_pieces([*pieces, *pieces])) == 42


def test_module_kinds_option() -> None:
    assert parse_module_kinds("none") == () and len(parse_module_kinds("all")) == 6
    assert parse_module_kinds("stem, head") == ("stem", "head")
    with pytest.raises(ProfilingError, match="--modules: unknown kind 'stages'"):
        parse_module_kinds("stem,stages")


def test_arch_file_bad_lines_reported_by_number(tmp_path: Path, space) -> None:
    good = [str(a) for a in sample_models(space, 2, seed=0)]
    path = tmp_path / "archs.txt"
    outside = "512x512/r18_16_11-21-21-21/none:C5/none/retina"  # parses, but not in the demo space
    path.write_text(f"# header\n{good[0]}\n\nnot/an/arch\n{good[1]}  # trailing comment\n{outside}\n")
    archs, bad = read_arch_file(path, space)
    assert [str(a) for a in archs] == good
    assert len(bad) == 2 and bad[0].startswith(f"{path}:4:") and bad[1].startswith(f"{path}:6:")


def test_anchors_span_the_space_and_its_kinds(space) -> None:
    anchors = choose_anchors(space, 8)
    assert len(anchors) == len(set(anchors)) == 8 and anchors == choose_anchors(space, 8)
    kinds = {"cascade" if "cascade" in a else "2fc" if "/2fc" in a else "one-stage" for a in anchors}
    assert kinds == {"one-stage", "2fc", "cascade"}
    assert all(space.parse(a) for a in anchors)


# ------------------------------------------------------------------------------------------ the loop
def _profile(tiny, out: Path, cache: OnnxCache, **kw: Any):  # type: ignore[no-untyped-def]
    archs = kw.pop("archs", None) or sample_models(tiny, 3, seed=0)
    return profile_lut(space=tiny, out=out, spec=BackendSpec(threads=1), archs=archs, timing=QUICK, cache=cache,
                       num_classes=5, **kw)


def test_profile_writes_interrupts_and_resumes(tmp_path: Path, tiny) -> None:
    out = tmp_path / "lut.db"
    seen: list[str] = []

    def stop_after_two(label: str) -> None:
        seen.append(label)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with OnnxCache(tmp_path / "cache") as cache:
        report = _profile(tiny, out, cache, module_kinds=("stem", "head"), all_structures=False,
                          on_item=stop_after_two)
        assert report.interrupted
        with LatencyTable.open(out) as table:
            assert sum(table.counts().values()) == 2  # completed rows survived the interrupt
        with pytest.raises(ProfilingError, match="--resume"):
            _profile(tiny, out, cache)
        report = _profile(tiny, out, cache, module_kinds=("stem", "head"), all_structures=False, resume=True)
        assert not report.interrupted and not report.failures
        assert report.modules_skipped + report.models_skipped == 2  # what the first run finished is kept
        with LatencyTable.open(out) as table:
            assert table.counts()["models"] == 3
            kinds = {m.kind for m in table.module_rows()}
            assert kinds == {"stem", "head"}
            assert all(m.stats.n == 3 and m.extra["exporter"] == "legacy" for m in table.model_rows())
            assert table.num_classes == 5 and len(table.anchors()) == 8
        again = _profile(tiny, out, cache, module_kinds=("stem", "head"), all_structures=False, resume=True)
        assert again.modules_timed == 0 and again.models_timed == 0 and again.models_skipped == 3
        with pytest.raises(ProfilingError, match=r"--num-classes 81: .* was timed with 5 classes"):
            profile_lut(space=tiny, out=out, spec=BackendSpec(threads=1), models=1, timing=QUICK, cache=cache,
                        resume=True)


def test_two_stage_models_are_timed_as_their_two_graphs(tmp_path: Path, space) -> None:
    arch = space.parse("128x128/r18_16_11-21-21-21/fpn:P3-P6:32/rpn/cascade2:64")
    with OnnxCache(tmp_path / "cache") as cache:
        report = profile_lut(space=space, out=tmp_path / "lut.db", spec=BackendSpec(threads=1), archs=[arch],
                             timing=QUICK, cache=cache, num_classes=11, anchors=0, repeat_check=False)
    assert not report.failures, report.failures
    with LatencyTable.open(tmp_path / "lut.db") as table:
        [row] = table.model_rows()
    assert set(row.extra["graphs_ms"]) == {"rpn", "roi"} and set(row.extra["onnx_sha256"]) == {"rpn", "roi"}
    assert row.median_ms == pytest.approx(sum(row.extra["graphs_ms"].values()), rel=1e-6)


def test_a_second_profile_of_the_same_entries_hits_the_cache(tmp_path: Path, tiny) -> None:
    distinct = len({*choose_anchors(tiny, 2), *map(str, sample_models(tiny, 3, seed=0))})
    with OnnxCache(tmp_path / "cache") as cache:
        first = _profile(tiny, tmp_path / "a.db", cache, anchors=2, repeat_check=False)
        assert first.cache_misses == distinct and first.split.export_s > 0
    # Another run, another table (say a second backend), the same cache folder: nothing is exported again.
    with OnnxCache(tmp_path / "cache") as cache:
        second = _profile(tiny, tmp_path / "b.db", cache, anchors=2, repeat_check=False)
        # The models, and the anchors at the start and the end (each time after one warm-up timing).
        assert (second.cache_misses, second.cache_hits) == (0, 3 + 2 * (2 + 1))
        assert second.split.export_s < first.split.export_s / 5
    # An altered cached file is exported again, and said once.
    victim = next((tmp_path / "cache").glob("*.onnx"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with OnnxCache(tmp_path / "cache") as cache:
        third = _profile(tiny, tmp_path / "c.db", cache, anchors=2, repeat_check=False)
    assert (third.cache_misses, third.cache_altered) == (1, 1) and not third.failures
    assert sum("no longer matched their recorded SHA-256" in w for w in third.warnings) == 1


def test_export_ahead_exports_in_a_worker_and_gives_the_same_graphs(tmp_path: Path, tiny) -> None:
    archs = sample_models(tiny, 4, seed=3)
    with OnnxCache(tmp_path / "cache") as cache:
        ahead = _profile(tiny, tmp_path / "ahead.db", cache, archs=archs, anchors=0, repeat_check=False,
                         export_ahead=True)
        assert not ahead.failures and ahead.models_timed == 4
        assert ahead.exported_ahead == 4 and ahead.cache_misses == 4  # the worker's exports, counted here
    with OnnxCache(tmp_path / "cache") as cache:  # in this process, from the same cache: the same files
        here = _profile(tiny, tmp_path / "here.db", cache, archs=archs, anchors=0, repeat_check=False)
        assert (here.exported_ahead, here.cache_misses, here.cache_hits) == (0, 0, 4)
    with LatencyTable.open(tmp_path / "ahead.db") as a, LatencyTable.open(tmp_path / "here.db") as b:
        assert {r.arch: r.extra["onnx_sha256"] for r in a.model_rows()} == \
            {r.arch: r.extra["onnx_sha256"] for r in b.model_rows()}


def _graphs_unless_in_a_worker(arch: str) -> list[Any]:
    """A model's graphs here; in a spawned export worker the process kills itself (an OOM kill, say)."""
    import multiprocessing
    import os
    import signal

    if multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    job = model_job(load_space("tiny").parse(arch), 5, 1, "fp32", "legacy")
    return job.build()


def test_a_dead_export_worker_leaves_the_exports_to_this_process(tmp_path: Path, tiny) -> None:
    import functools

    backend = BackendSpec(threads=1).build()
    archs = [str(a) for a in sample_models(tiny, 3, seed=4)]
    jobs = [TimingJob(f"network:{a}", functools.partial(_graphs_unless_in_a_worker, a), f"dies|{a}", a)
            for a in archs]
    with OnnxCache(tmp_path / "cache") as cache:
        ahead = ExportAhead(cache, "legacy", backend)
        try:
            results = list(time_jobs(backend, jobs, QUICK, cache, ahead=ahead))
        finally:
            ahead.close()
        assert [r.job.name for r in results] == [j.name for j in jobs] and all(r.stats for r in results)
        assert ahead.exported == 0 and "export worker stopped" in ahead.broken and "\n" not in ahead.broken
        assert cache.misses == 3  # every job exported here instead


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, tiny) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ProfilingError, match=r"ONNX cache .*a-file/onnx: not a writable folder") as e:
        OnnxCache(blocker / "onnx")  # a folder cannot be made under a file (root or not)
    assert "\n" not in str(e.value) and "--no-onnx-cache" in str(e.value)
    with OnnxCache(tmp_path / "cache") as cache, pytest.raises(ProfilingError, match="--passes must be >= 1"):
        _profile(tiny, tmp_path / "x.db", cache, passes=0)
    assert not (tmp_path / "x.db").exists()


def test_passes_keep_the_median_pass(tmp_path: Path) -> None:
    backend = BackendSpec(threads=1).build()
    convs = [torch.nn.Conv2d(c, c, 3, padding=1).eval() for c in (2, 4)]

    def job(i: int, conv: torch.nn.Module) -> TimingJob:
        x = torch.rand(1, conv.in_channels, 8, 8)
        return TimingJob(f"conv{i}", lambda: [GraphSpec("conv", conv, ["x"], (x,), ["y"])], f"conv{i}", f"conv {i}")

    jobs = [job(0, convs[0]), TimingJob("broken", lambda: (_ for _ in ()).throw(RuntimeError("no such module")),
                                        "broken"), job(1, convs[1])]
    with OnnxCache(tmp_path / "cache") as cache:
        results = list(time_jobs(backend, jobs, QUICK, cache, passes=3))
        assert [r.job.name for r in results] == [j.name for j in jobs]  # every job answers, in order
        assert results[1].stats is None and "no such module" in results[1].error
        for r in (results[0], results[2]):
            passes = r.extra["pass_medians_ms"]
            assert r.stats is not None and len(passes) == 3
            assert r.stats.median_ms == pytest.approx(sorted(passes)[1], abs=1e-6)
            assert r.split.export_s > 0 and r.split.timed_s >= 0 and r.split.build_s > 0
        assert cache.misses == 2  # exported once, timed three times
        with pytest.raises(ProfilingError, match="passes"):
            next(time_jobs(backend, jobs, QUICK, cache, passes=0))
    assert median_pass([LatencyStats.from_dict({**_ZERO, "median_ms": m}) for m in (3.0, 1.0, 9.0, 2.0)]).median_ms \
        == 2.0


_ZERO = dict.fromkeys(("p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "max_ms"), 0.0) | {"n": 1}


# ------------------------------------------------------------------------------------------ noise and drift
def test_repeat_check_and_anchors_are_written_and_resume_retimes_anchors(tmp_path: Path, tiny) -> None:
    out = tmp_path / "lut.db"
    with OnnxCache(tmp_path / "cache") as cache:
        report = _profile(tiny, out, cache, archs=sample_models(tiny, 12, seed=2), anchors=3)
        assert report.repeat_n == 10 and report.repeat_median is not None  # at least 10, about 10%
        assert any(m.startswith("repeat check: 10 entries timed again") for m in report.messages)
        shares = report.split.shares(report.elapsed_s)
        assert set(shares) == {"export", "build", "warm-up", "timed runs", "other"} and sum(shares.values()) == \
            pytest.approx(1.0)
        with LatencyTable.open(out) as table:
            anchors = table.anchors()
            [run] = table.runs()
            assert run.kind == "profile" and run.repeat_n == 10 and run.repeat_median == report.repeat_median
            assert run.models_timed == 12
            assert set(table.anchor_reference()) == set(anchors) and len(anchors) == 3
        n_before = _count(out, "anchor_timings")
        assert n_before == 2 * 3  # start and end of the run
        resumed = _profile(tiny, out, cache, archs=sample_models(tiny, 13, seed=2), anchors=3, resume=True)
        assert resumed.drift is not None and resumed.drift.n == 3
        assert any(m.startswith("drift: 3 anchor models time") for m in resumed.messages)
    assert _count(out, "anchor_timings") == n_before + 2 * 3  # the resume timed them at its start and end too
    with LatencyTable.open(out) as table:
        assert [r.kind for r in table.runs()] == ["profile", "resume"]
        assert [r.models_timed for r in table.runs()] == [12, 1]  # the resume added the 13th


def _count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


class PacedRunner(Runner):
    """Runs the real session, then spins until the run has taken `target_s` (spinning, not sleeping: a sleeping
    CPU comes back to cold caches). A device of known speed: two of them time the same anchors in exactly
    the ratio of their targets, whatever else the machine is doing, while the target exceeds the real run."""

    def __init__(self, inner: Runner, target_s: float) -> None:
        self.inner, self.target_s = inner, target_s
        self.inputs = inner.inputs

    def run(self, feeds: Any = None) -> list[Any]:
        return self.inner.run(feeds)

    def time(self, config: TimingConfig | None = None) -> LatencyStats:
        step: Callable[[], object] = self.inner._step  # type: ignore[attr-defined]

        def paced() -> None:
            deadline = time.perf_counter() + self.target_s
            step()
            while time.perf_counter() < deadline:
                pass

        return time_runs(paced, config)

    def close(self) -> None:
        self.inner.close()


class PacedBackend(OrtCpuBackend):
    """ort-cpu whose runs of a model take 50-70 ms (the model's file name picks where in that range, so
    models differ), times `factor`: same fingerprint, so its timings are compared with the table's."""

    def __init__(self, factor: float) -> None:
        super().__init__(threads=1)
        self.factor = factor

    def load(self, onnx_path: str | Path) -> Runner:
        base_s = 0.050 + 0.020 * (int(Path(onnx_path).stem[:6], 16) % 1000) / 1000
        return PacedRunner(super().load(onnx_path), base_s * self.factor)


def test_uniformly_slower_anchors_give_a_drift_of_1_2_and_corrected_predictions(tmp_path: Path, space) -> None:
    """A table timed by a paced backend, then its demo-space anchors by one 1.2x slower: the run's drift is
    1.2, recorded in the table, above the warning threshold, and a predictor's predictions for that run are
    1.2x its raw ones. Paced, because two timings of a real backend minutes apart differ by 10-40% on a shared
    CI machine (seen: 0.885x), which no bound on 1.2 survives."""
    from smnas_trt.predictors import FitConfig, LatencyPredictor, load_training_data

    out = tmp_path / "lut.db"
    timing = TimingConfig(warmup_runs=3, warmup_s=0.0, min_runs=10, max_runs=400, budget_s=0.2)
    with OnnxCache(tmp_path / "cache") as cache:
        profile_lut(space=space, out=out, spec=BackendSpec(threads=1), backend=PacedBackend(1.0), models=10, seed=1,
                    timing=timing, cache=cache, num_classes=11, anchors=4, repeat_check=False)
        drift, line = measure_drift(PacedBackend(1.2), out, timing, cache, "test")
    assert drift is not None and 1.17 < drift.ratio < 1.23, line
    assert drift.warn and f"drift {(drift.ratio - 1) * 100:.1f}%" in drift.warning() and "above 5%" in drift.warning()
    assert line == drift.line() and line.startswith("drift: 4 anchor models time 1.")
    with LatencyTable.open(out) as table:
        assert table.runs()[-1].kind == "test" and table.runs()[-1].drift == pytest.approx(drift.ratio)
    predictor, _ = LatencyPredictor.fit(load_training_data(out), FitConfig(folds=2, rounds=20, scale_rounds=10,
                                                                           threads=1, use_lut=False, num_classes=11))
    archs = [str(a) for a in sample_models(space, 5, seed=9)]
    raw, raw_unc = predictor.predict(archs)
    corrected, unc = predictor.predict(archs, drift)
    assert corrected == pytest.approx(raw * drift.ratio, rel=1e-9)
    assert (unc >= raw_unc * drift.ratio * (1 - 1e-9)).all()  # wider by the anchors' spread, never narrower
    with pytest.raises(ProfilingError, match="is not the one the spec describes"):  # before anything is written
        profile_lut(space=space, out=tmp_path / "x.db", spec=BackendSpec(threads=1, batch=2), backend=PacedBackend(1.0))
    assert not (tmp_path / "x.db").exists()


def test_a_table_without_anchors_is_usable_and_says_how_to_add_them(tmp_path: Path, tiny) -> None:
    out = tmp_path / "old.db"
    with OnnxCache(tmp_path / "cache") as cache:
        _profile(tiny, out, cache, anchors=0, repeat_check=False)
        # As a table made before anchors existed: no anchor list in its meta.
        backend = BackendSpec(threads=1).build()
        drift, line = measure_drift(backend, out, QUICK, cache, "search")
        assert drift is None and line == (f"drift cannot be measured: {out} has no anchor models; add them with "
                                          f"smnas profile-lut --resume --anchors --out {out}")
        resumed = _profile(tiny, out, cache, resume=True, repeat_check=False)
        assert any("no anchor models" in w and "--resume --anchors" in w for w in resumed.warnings)
        added = _profile(tiny, out, cache, resume=True, repeat_check=False, add_anchors=True)
        assert not added.warnings
        with LatencyTable.open(out) as table:
            assert len(table.anchors()) == 8 and table.anchor_reference()


def test_lut_show_prints_the_noise_floor_and_warns_above_3_percent(tmp_path: Path, tiny) -> None:
    from typer.testing import CliRunner

    from smnas_trt.cli import app

    out = tmp_path / "lut.db"
    with OnnxCache(tmp_path / "cache") as cache:
        _profile(tiny, out, cache, archs=sample_models(tiny, 10, seed=0), anchors=2)
    result = CliRunner().invoke(app, ["lut", "show", str(out)])
    assert result.exit_code == 0, result.output
    assert "repeat check: 10 entries timed again in fresh sessions differ by a median" in result.output
    assert "anchors: 2 models" in result.output
    noisy = tmp_path / "noisy.db"
    shutil.copy(out, noisy)
    conn = sqlite3.connect(noisy)
    with conn:
        conn.execute("UPDATE timing_runs SET repeat_median = 0.10, repeat_p90 = 0.2")
    conn.close()
    result = CliRunner().invoke(app, ["lut", "show", str(noisy)])
    assert "differ by a median 10.0% (p90 20.0%)" in result.output
    assert "above 3%" in result.output and "--threads 1 and --passes 3" in result.output


def test_drift_of_a_backend_that_is_not_slower_is_near_one(tmp_path: Path, tiny) -> None:
    out = tmp_path / "lut.db"
    with OnnxCache(tmp_path / "cache") as cache:
        _profile(tiny, out, cache, anchors=3, repeat_check=False)
        backend: Backend = BackendSpec(threads=1).build()
        drift, _ = measure_drift(backend, out, QUICK, cache, "check")
    assert drift is not None and drift.n == 3 and 0.5 < drift.ratio < 2.0  # same machine, minutes apart


def test_an_old_table_gains_the_run_tables_when_written(tmp_path: Path, tiny) -> None:
    out = tmp_path / "lut.db"
    with OnnxCache(tmp_path / "cache") as cache:
        _profile(tiny, out, cache, anchors=0, repeat_check=False)
    conn = sqlite3.connect(out)
    with conn:  # what a schema-1 table looks like
        conn.execute("DROP TABLE timing_runs")
        conn.execute("DROP TABLE anchor_timings")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    with LatencyTable.open(out) as table:
        assert table.runs() == [] and table.anchor_reference() == {} and table.repeat_check() is None
    with LatencyTable.create(out, BackendSpec(threads=1).build().fingerprint()) as table:
        assert table.runs() == [] and table.meta("schema_version") == "2"


def test_export_ahead_on_the_torch_backend_says_it_is_ignored(tmp_path: Path, tiny) -> None:
    with OnnxCache(tmp_path / "cache") as cache:
        report = profile_lut(space=tiny, out=tmp_path / "lut.db", spec=BackendSpec(backend="torch", threads=1),
                             archs=sample_models(tiny, 1, seed=0), timing=QUICK, cache=cache, num_classes=5,
                             anchors=0, repeat_check=False, export_ahead=True)
    assert report.models_timed == 1 and report.exported_ahead == 0 and cache.misses == 0  # nothing exported
    assert "--export-ahead: the torch backend times modules, it exports nothing; ignored" in report.messages
