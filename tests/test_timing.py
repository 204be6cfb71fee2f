"""Timing loop: warm-up by count and time, stop by budget or count, and the statistics it reports."""

from __future__ import annotations

import statistics
import time

import pytest
from pydantic import ValidationError

from smnas_trt.errors import ProfilingError
from smnas_trt.profiling.timing import HostClock, LatencyStats, TimingConfig, summarize, time_runs
from smnas_trt.space.config import pydantic_error_line


def test_summarize_known_values() -> None:
    stats = summarize([float(v) for v in range(10, 0, -1)])  # unsorted input
    assert stats.median_ms == 5.5
    assert stats.p10_ms == pytest.approx(1.9)
    assert stats.p90_ms == pytest.approx(9.1)
    assert stats.mean_ms == pytest.approx(5.5)
    assert stats.std_ms == pytest.approx(statistics.pstdev(range(1, 11)))
    assert (stats.min_ms, stats.max_ms, stats.n) == (1.0, 10.0, 10)
    assert LatencyStats.from_dict(stats.as_dict()) == stats


def test_summarize_single_and_empty() -> None:
    one = summarize([3.0])
    assert (one.median_ms, one.p10_ms, one.p90_ms, one.std_ms, one.n) == (3.0, 3.0, 3.0, 0.0, 1)
    with pytest.raises(ProfilingError):
        summarize([])


def test_warmup_count_and_max_runs() -> None:
    calls = []
    stats = time_runs(
        lambda: calls.append(1), TimingConfig(warmup_runs=7, warmup_s=0.0, min_runs=5, max_runs=12, budget_s=10.0)
    )
    assert stats.n == 12  # the count stops it long before the 10 s budget
    assert len(calls) == 7 + 12


def test_warmup_lasts_at_least_warmup_s() -> None:
    calls = []
    t0 = time.perf_counter()
    stats = time_runs(
        lambda: calls.append(1), TimingConfig(warmup_runs=1, warmup_s=0.05, min_runs=3, max_runs=3, budget_s=0)
    )
    assert time.perf_counter() - t0 >= 0.05
    assert len(calls) > 1 + 3  # a trivial step runs many times in 50 ms of warm-up
    assert stats.n == 3


def test_budget_stops_after_min_runs() -> None:
    config = TimingConfig(warmup_runs=0, warmup_s=0.0, min_runs=3, max_runs=10_000, budget_s=0.03)
    stats = time_runs(lambda: time.sleep(0.005), config)
    assert 3 <= stats.n < 30  # ~6 runs of 5 ms fit a 30 ms budget; never the 10 000 cap
    assert stats.median_ms >= 5.0  # sleeps at least 5 ms
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_min_runs_beats_budget() -> None:
    stats = time_runs(
        lambda: time.sleep(0.002), TimingConfig(warmup_runs=0, warmup_s=0, min_runs=8, max_runs=50, budget_s=0)
    )
    assert stats.n == 8


def test_host_clock_measures_the_call() -> None:
    assert HostClock().measure(lambda: time.sleep(0.01)) >= 10.0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"min_runs": 0}, "min_runs"), ({"min_runs": 5, "max_runs": 4}, "max_runs"), ({"warmup_runs": -1}, "warmup_runs"),
    ({"budget_s": -1.0}, "budget_s"), ({"budget": 1.0}, "budget"),
])
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        TimingConfig(**kwargs)
    assert field in pydantic_error_line(e.value)


@pytest.mark.gpu
def test_cuda_event_clock_times_device_work() -> None:
    import torch

    from smnas_trt.profiling.timing import CudaEventClock

    clock = CudaEventClock()
    assert clock.stream != torch.cuda.default_stream()
    a = torch.rand(2048, 2048, device="cuda")
    small = time_runs(lambda: a[:64, :64] @ a[:64, :64], TimingConfig.quick(), clock)
    big = time_runs(lambda: a @ a, TimingConfig.quick(), clock)
    assert big.median_ms > small.median_ms > 0
