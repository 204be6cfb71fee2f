"""profile-lut's loop on real exports and real ORT sessions, with small stand-in pieces and bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from smnas_trt.errors import ProfilingError
from smnas_trt.profiling.backends import get_backend
from smnas_trt.profiling.lut import open_table
from smnas_trt.profiling.profile import (
    TimingJob,
    dedup_pieces,
    median_pass,
    profile_lut,
    read_arch_file,
    sample_models,
    stratified_sample,
    structure_of,
    time_jobs,
)
from smnas_trt.profiling.timing import LatencyStats, TimingConfig
from smnas_trt.space import load_space

torch.set_num_threads(1)
QUICK = TimingConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, max_runs=3, budget_s=0.0)


@dataclass
class ConvPiece:
    """A real conv module keyed by its channels and input size (as the models' pieces are keyed)."""

    kind: str
    channels: int
    size: int
    key: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    module: Any = None
    inputs: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        self.key = f"{self.kind}:c{self.channels}:{self.size}"
        self.config = {"channels": self.channels, "size": self.size}
        self.module = torch.nn.Conv2d(self.channels, self.channels, 3, padding=1).eval()
        self.inputs = (torch.rand(1, self.channels, self.size, self.size),)


def pieces_of(arch) -> list[ConvPiece]:
    # Two stem keys (one per demo input size) and one neck key: three distinct pieces in the space.
    return [ConvPiece("stem", 4, arch.size.width // 8), ConvPiece("neck", 4, 8)]


def body_of(arch) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return torch.nn.Conv2d(3, 4, 3, stride=4).eval(), (torch.rand(1, 3, arch.size.height // 4, arch.size.width // 4),)


@pytest.fixture(scope="module")
def space():
    return load_space("demo")


def test_sample_models_cover_structures(space) -> None:
    archs = sample_models(space, 30, seed=1)
    assert len({str(a) for a in archs}) == 30
    assert len({structure_of(a) for a in archs}) == 30  # 30 models, 30 different structural combinations
    assert [str(a) for a in sample_models(space, 30, seed=1)] == [str(a) for a in archs]


def test_stratified_sample_keeps_every_kind() -> None:
    pieces = [ConvPiece("stage", c, 8) for c in range(1, 41)] + [ConvPiece("head", 2, s) for s in (8, 16)]
    picked = stratified_sample(pieces, 10, seed=0)
    assert len(picked) <= 10 and {p.kind for p in picked} == {"stage", "head"}
    assert len(dedup_pieces([*pieces, *pieces])) == 42


def test_arch_file_bad_lines_reported_by_number(tmp_path: Path, space) -> None:
    good = [str(a) for a in sample_models(space, 2, seed=0)]
    path = tmp_path / "archs.txt"
    outside = "512x512/r18_16_11-21-21-21/none:C5/none/retina"  # parses, but not in the demo space
    path.write_text(f"# header\n{good[0]}\n\nnot/an/arch\n{good[1]}  # trailing comment\n{outside}\n")
    archs, bad = read_arch_file(path, space)
    assert [str(a) for a in archs] == good
    assert len(bad) == 2 and bad[0].startswith(f"{path}:4:") and bad[1].startswith(f"{path}:6:")


def test_profile_writes_interrupts_and_resumes(tmp_path: Path, space) -> None:
    out = tmp_path / "lut.db"
    archs = sample_models(space, 1, seed=0)
    seen: list[str] = []

    def stop_after_two(label: str) -> None:
        seen.append(label)
        if len(seen) == 2:
            raise KeyboardInterrupt

    kwargs = dict(space=space, module_pieces=pieces_of, network_body=body_of, archs=archs, timing=QUICK,
                  backend_opts={"threads": 1})  # fmt: skip
    report = profile_lut(out=out, on_item=stop_after_two, **kwargs)
    assert report.interrupted and report.modules_timed == 2
    with open_table(out) as table:
        assert table.counts() == {"modules": 2, "models": 0}  # completed rows survived the interrupt
    with pytest.raises(ProfilingError, match="--resume"):
        profile_lut(out=out, **kwargs)
    report = profile_lut(out=out, resume=True, **kwargs)
    assert not report.interrupted and not report.failures
    assert report.modules_skipped == 2 and report.models_timed == 1
    with open_table(out) as table:
        n_modules = table.counts()["modules"]
        assert n_modules == report.modules_total == 3 and table.counts()["models"] == 1
        keys = [m.key for m in table.module_rows()]
        assert len(keys) == len(set(keys))
        assert all(m.stats.n == 3 and m.extra["exporter"] == "dynamo" for m in table.module_rows())
    again = profile_lut(out=out, resume=True, **kwargs)
    assert again.modules_timed == 0 and again.models_timed == 0 and again.models_skipped == 1


def test_profile_reports_failures_and_samples(tmp_path: Path, space) -> None:
    def broken_body(arch):
        raise RuntimeError("body builder exploded")

    report = profile_lut(
        space=space, out=tmp_path / "lut.db", module_pieces=pieces_of, network_body=broken_body,
        archs=sample_models(space, 1, seed=0), timing=QUICK, max_modules=2, backend_opts={"threads": 1},
    )  # fmt: skip
    assert report.modules_total > 2 and report.modules_selected <= 2
    assert "stratified sample" in report.messages[0]
    assert report.models_timed == 0 and "body builder exploded" in report.failures[0]


def test_passes_keep_the_median_pass_and_clean_up(tmp_path: Path) -> None:
    backend = get_backend("ort-cpu", threads=1)
    convs = [ConvPiece("stage", c, 8) for c in (2, 4)]
    jobs = [TimingJob(p.key, lambda p=p: (p.module, p.inputs), "legacy", label=p.key) for p in convs]
    jobs.insert(1, TimingJob("broken", lambda: (_ for _ in ()).throw(RuntimeError("no such module"))))
    results = list(time_jobs(backend, jobs, QUICK, tmp_path, passes=3))
    assert [r.job.name for r in results] == [j.name for j in jobs]  # every job answers, in order
    assert results[1].stats is None and "no such module" in results[1].error
    for r in (results[0], results[2]):
        passes = r.extra["pass_medians_ms"]
        assert r.stats is not None and len(passes) == 3
        assert r.stats.median_ms == pytest.approx(sorted(passes)[1], abs=1e-6)
    assert not list(tmp_path.glob("*.onnx"))  # exported once per chunk, deleted once timed
    assert (
        median_pass([LatencyStats.from_dict({**_ZERO, "median_ms": m}) for m in (3.0, 1.0, 9.0, 2.0)]).median_ms == 2.0
    )
    with pytest.raises(ProfilingError, match="passes"):
        next(time_jobs(backend, jobs, QUICK, tmp_path, passes=0))


_ZERO = dict.fromkeys(("p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "max_ms"), 0.0) | {"n": 1}


def test_profile_in_passes_records_each_pass(tmp_path: Path, space) -> None:
    report = profile_lut(
        space=space, out=tmp_path / "lut.db", module_pieces=pieces_of, network_body=body_of,
        archs=sample_models(space, 1, seed=0), timing=QUICK, passes=2, backend_opts={"threads": 1},
        all_structures=False,
    )  # fmt: skip
    assert not report.failures and report.models_timed == 1 and report.modules_timed == 2
    with open_table(tmp_path / "lut.db") as table:
        rows = [*table.module_rows(), *table.model_rows()]
    assert len(rows) == 3 and all(len(r.extra["pass_medians_ms"]) == 2 for r in rows)
    assert all(r.stats.median_ms == min(r.extra["pass_medians_ms"]) for r in rows)  # even count: the lower one
