"""Search building blocks that need no training: Pareto utilities, config, run store, gate, run-dir rules."""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from smnas_trt.errors import ConfigError, SearchError
from smnas_trt.search.config import load_search_config, parse_search_config
from smnas_trt.search.gate import Child, Decision, rank_front_improvement, rank_spread, screen
from smnas_trt.search.pareto import (
    crowding_distance,
    dominates,
    hypervolume_2d,
    non_dominated_sort,
    pareto_front,
    select_survivors,
)
from smnas_trt.search.store import RunStore, Screened

# ---------------------------------------------------------------------------------------------- pareto


def _brute_front(points: list[tuple[float, float]]) -> set[int]:
    return {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}


def test_non_dominated_sort_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(200):
        pts = [(round(rng.uniform(1, 10), 1), round(rng.uniform(0, 1), 1)) for _ in range(rng.randint(1, 30))]
        fronts = non_dominated_sort(pts)
        assert sorted(itertools.chain(*fronts)) == list(range(len(pts)))
        assert set(fronts[0]) == _brute_front(pts)
        # Every point of front k+1 is dominated by some point of front k, and no front dominates itself.
        for k, front in enumerate(fronts):
            assert not any(dominates(pts[a], pts[b]) for a in front for b in front)
            if k:
                assert all(any(dominates(pts[a], pts[b]) for a in fronts[k - 1]) for b in front)


def test_hypervolume_known_values() -> None:
    ref = (10.0, 0.0)
    assert hypervolume_2d([], ref) == 0.0
    assert hypervolume_2d([(4.0, 0.5)], ref) == pytest.approx(6 * 0.5)
    # Two steps: (2, 0.2) and (6, 0.6): 8*0.2 + 4*0.4
    assert hypervolume_2d([(2.0, 0.2), (6.0, 0.6)], ref) == pytest.approx(1.6 + 1.6)
    # Dominated and out-of-box points change nothing.
    assert hypervolume_2d([(2.0, 0.2), (6.0, 0.6), (7.0, 0.5), (12.0, 0.9)], ref) == pytest.approx(3.2)


def test_hypervolume_matches_grid_estimate() -> None:
    rng = random.Random(1)
    pts = [(rng.uniform(0, 10), rng.uniform(0, 1)) for _ in range(15)]
    ref = (10.0, 0.0)
    n = 400
    covered = sum(any(p[0] <= (i + 0.5) * 10 / n and p[1] >= (j + 0.5) / n for p in pts)
                  for i in range(n) for j in range(n))
    assert hypervolume_2d(pts, ref) == pytest.approx(covered * (10 / n) * (1 / n), rel=0.02)


def test_crowding_and_selection() -> None:
    pts = [(1.0, 0.1), (2.0, 0.5), (2.1, 0.51), (5.0, 0.8), (3.0, 0.3)]
    front = pareto_front(pts)
    assert front == [0, 1, 2, 3]
    dist = crowding_distance(pts, front)
    assert math.isinf(dist[0]) and math.isinf(dist[3])
    assert dist[1] < math.inf and dist[2] < math.inf
    # Selection keeps the front first and, within it, the boundary points before crowded ones.
    assert select_survivors(pts, 2) == [0, 3]
    assert set(select_survivors(pts, 4)) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------- config


def _raw(tmp_path: Path, **over: object) -> dict:
    raw: dict = {"data": str(tmp_path / "data"), "latency": {"budget_ms": 5, "lut": str(tmp_path / "lut.db")}}
    raw.update(over)
    return raw


def test_config_unknown_field_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_search_config(_raw(tmp_path, colour="red"), "cfg.yaml")
    assert str(e.value) == "cfg.yaml: colour: unknown field"
    with pytest.raises(ConfigError, match=r"gate.oversmpling: unknown field"):
        parse_search_config(_raw(tmp_path, gate={"oversmpling": 3}))
    with pytest.raises(ConfigError, match=r"training.lrate: unknown field"):
        parse_search_config(_raw(tmp_path, training={"lrate": 0.1}))
    with pytest.raises(ConfigError, match=r"training.lr: Input should be greater than 0"):
        parse_search_config(_raw(tmp_path, training={"lr": -1}))
    with pytest.raises(ConfigError, match=r"latency.timing.min_runs: Input should be greater than or equal to 1"):
        parse_search_config({**_raw(tmp_path), "latency": {"budget_ms": 5, "lut": "x", "timing": {"min_runs": 0}}})
    with pytest.raises(ConfigError, match=r"latency: device 'gpu' is not one of cpu, cuda, cuda:N"):
        parse_search_config({**_raw(tmp_path), "latency": {"budget_ms": 5, "lut": "x", "device": "gpu"}})
    with pytest.raises(ConfigError, match=r"training: epochs is set by the search"):
        parse_search_config(_raw(tmp_path, training={"epochs": 3}))
    with pytest.raises(ConfigError, match=r"latency.budget_ms: .*greater than 0"):
        parse_search_config({**_raw(tmp_path), "latency": {"budget_ms": 0, "lut": "x"}})
    with pytest.raises(ConfigError, match=r"modular.mutation_rates: unknown operator 'grow'; allowed: insert_block"):
        parse_search_config(_raw(tmp_path, modular={"mutation_rates": {"grow": 1}}))
    for err in (e,):
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(("override", "message"), [
    ({"structural": {"rungs": [3, 1]}}, r"structural.rungs: epochs per rung must be >= 1 and strictly increasing"),
    ({"modular": {"rungs": [2, 2]}}, r"modular.rungs: epochs per rung must be >= 1 and strictly increasing"),
    ({"structural": {"rungs": []}}, r"structural.rungs: list at least one rung"),
    ({"structural": {"eta": 1}}, r"structural.eta: Input should be greater than or equal to 2"),
    ({"structural": {"epochs": 4}}, r"structural: epochs: replaced by rungs; write rungs: \[4\]"),
    ({"threads": 2}, r"config: threads: moved to executor.threads_per_task"),
    ({"executor": {"cpus_per_task": 1}}, r"executor: cpus_per_task: renamed threads_per_task"),
    ({"executor": {"max_parallel": 0}}, r"executor.max_parallel: Input should be greater than or equal to 1"),
])
def test_rung_and_executor_fields_are_checked(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_search_config(_raw(tmp_path, **override), "cfg.yaml")
    assert "\n" not in str(e.value)


def test_successive_halving_sizes() -> None:
    from smnas_trt.search.config import StageConfig

    st = StageConfig(train=2, rungs=(1, 3, 9), eta=3)
    assert st.starts() == 18 and [st.promoted_to(r) for r in range(3)] == [18, 6, 2] and st.epochs == 9
    plain = StageConfig(train=4, rungs=(6,))
    assert plain.starts() == 4 and plain.epochs == 6


def test_max_parallel_above_the_machine_is_one_line() -> None:
    from smnas_trt.search.config import ExecutorConfig
    from smnas_trt.search.executors import LocalExecutor

    with pytest.raises(ConfigError, match=r"executor.max_parallel: 3 is more than this machine runs at once \(2: 2 "
                                          r"usable CPU core\(s\) at 1 thread\(s\) per task\)"):
        LocalExecutor.from_config(ExecutorConfig(max_parallel=3), cpus=2, gpus=0)
    with pytest.raises(ConfigError, match=r"executor.max_parallel: 2 is more than .* \(1: 1 GPU\(s\)\)"):
        LocalExecutor.from_config(ExecutorConfig(max_parallel=2), cpus=16, gpus=1)
    with pytest.raises(ConfigError, match=r"executor.threads_per_task: 4 is more than the 2 usable CPU core\(s\)"):
        LocalExecutor.from_config(ExecutorConfig(threads_per_task=4), cpus=2, gpus=0)
    default = LocalExecutor.from_config(ExecutorConfig(), cpus=2, gpus=0)
    assert (default.max_parallel, default.threads_per_task) == (2, 1)
    gpu = LocalExecutor.from_config(ExecutorConfig(), cpus=16, gpus=2)
    assert (gpu.max_parallel, gpu.threads_per_task, gpu.gpus) == (2, 8, 2)


def test_config_paths_resolve_and_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_search_config({"data": "data/demo", "latency": {"budget_ms": 5, "lut": "lut.db"}})
    assert cfg.data == str(tmp_path / "data" / "demo") and cfg.latency.lut == str(tmp_path / "lut.db")
    same = parse_search_config(cfg.frozen_dict())
    assert same.digest() == cfg.digest()
    ray = same.with_executor(same.executor.model_copy(update={"kind": "ray"}))
    assert ray.digest() == cfg.digest()  # where it runs is not part of a run's identity
    other = parse_search_config({**cfg.frozen_dict(), "seed": 1})
    assert other.digest() != cfg.digest()
    assert cfg.stage_plan() == ["structural", "modular"]


def test_builtin_demo_config_loads() -> None:
    cfg = load_search_config("demo")
    assert cfg.space == "demo" and cfg.latency.backend == "ort-cpu" and cfg.gate.enabled
    with pytest.raises(ConfigError, match="no such file"):
        load_search_config("/nonexistent.yaml")


# ---------------------------------------------------------------------------------------------- store


def test_store_roundtrip_and_uniqueness(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.plan_generation(0, "structural", 7, [
        Screened(0, 0, "a" * 10, "arch-a", None, 3.0, 0.1, "kept", 0),
        Screened(0, 1, "b" * 10, "arch-b", None, 9.0, 0.1, "over_budget", None),
        Screened(0, 2, "b" * 10, "arch-b", None, 9.0, 0.1, "duplicate", None),
    ])
    gen = store.generation(0)
    assert gen is not None and gen.status == "planned" and gen.n_screened == 3 and gen.n_over_budget == 1
    assert [s.decision for s in store.screened(0)] == ["kept", "over_budget", "duplicate"]
    c = store.add_candidate("a" * 10, "arch-a", "structural", 0, None, 3.0, 0.1)
    assert c.status == "planned" and c.seq == 0
    with pytest.raises(SearchError, match="already in the run"):
        store.add_candidate("a" * 10, "arch-a", "structural", 0, None, 3.0, 0.1)
    store.start_training(c.arch_id)
    store.update(c.arch_id, status="done", measured_ms=3.2, ap=0.4, ap50=0.6, checkpoint="candidates/a/last.pt")
    store.set_front([c.arch_id])
    store.finish_generation(0, n_trained=1, front_size=1, hypervolume=0.2)
    store.close()
    again = RunStore(tmp_path / "run.db", readonly=True)
    (front,) = again.front()
    assert (front.attempts, front.status, front.point) == (1, "done", (3.2, 0.4))
    assert again.generation(0).status == "done"  # type: ignore[union-attr]
    with pytest.raises(sqlite3.OperationalError):
        again.db.execute("DELETE FROM candidates")


def test_store_refuses_non_sqlite(tmp_path: Path) -> None:
    bad = tmp_path / "run.db"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(SearchError, match="not a readable SQLite run store"):
        RunStore(bad)


# ---------------------------------------------------------------------------------------------- gate


def _child(i: int, parent_ap: float | None = None) -> Child:
    return Child(f"arch{i}", f"{i:010d}", None, parent_ap)


def test_screen_drops_duplicates_and_over_budget() -> None:
    kids = [_child(1), _child(2), _child(1), _child(3), _child(4)]
    pred = [5.0, 12.0, 5.0, 9.5, 3.0]
    unc = [0.5, 0.5, 0.5, 1.0, 0.1]
    out = screen(kids, pred, unc, budget_ms=10.0, safety=1.0, known_ids={_child(4).arch_id})
    assert [d.decision for d in out] == ["kept", "over_budget", "duplicate", "over_budget", "duplicate"]
    # Without the gate only duplicates go.
    off = screen(kids, pred, unc, 10.0, 1.0, set(), enabled=False)
    assert [d.decision for d in off] == ["kept", "kept", "duplicate", "kept", "kept"]


def test_rank_spread_covers_the_latency_range() -> None:
    kept = [Decision(_child(i), ms, 0.1, "kept") for i, ms in enumerate([1.0, 1.1, 1.2, 4.0, 8.0, 8.1])]
    ranked = rank_spread(kept, existing_ms=[])
    picks = [d.predicted_ms for d in ranked[:3]]
    assert picks == [1.0, 8.1, 4.0] or picks == [1.0, 8.0, 4.0]
    assert [d.rank for d in ranked] == list(range(6))


def test_rank_front_improvement_prefers_gains_and_uncertainty() -> None:
    front = [(2.0, 0.3), (6.0, 0.5)]
    ref = (10.0, 0.0)
    kept = [
        Decision(_child(0, parent_ap=0.5), 7.0, 0.1, "kept"),  # slower than the front at AP 0.5: no gain
        Decision(_child(1, parent_ap=0.5), 4.0, 0.1, "kept"),  # faster than (6, 0.5): a clear gain
        Decision(_child(2, parent_ap=0.3), 2.5, 0.1, "kept"),  # behind (2, 0.3): dominated
        Decision(_child(3, parent_ap=0.3), 2.5, 1.0, "kept"),  # same but uncertain: may beat (2, 0.3)
    ]
    ranked = rank_front_improvement(kept, front, ref, greedy=4)
    order = [d.child.arch for d in ranked]
    assert order[0] == "arch1"
    assert order.index("arch3") < order.index("arch2")
    assert order[-1] == "arch0" or order.index("arch0") > order.index("arch3")


def test_promotion_picks_the_non_dominated_set_within_budget() -> None:
    from smnas_trt.search.pareto import promote

    #              0: front     1: dominated  2: front     3: front     4: over budget  5: dominated by 2
    points = [(2.0, 0.10), (3.0, 0.05), (4.0, 0.30), (8.0, 0.45), (12.0, 0.60), (5.0, 0.25)]
    budget = 10.0
    # Three slots: exactly the non-dominated points within the budget, none of the dominated ones.
    assert sorted(promote(points, 3, budget)) == [0, 2, 3]
    # Two slots: both ends have infinite crowding; the middle one loses, and of the ends...
    two = promote(points, 2, budget)
    assert sorted(two) == [0, 3]
    # ...one slot goes to the end that adds more hypervolume (the accurate one, not the fast one).
    assert promote(points, 1, budget) == [3]
    # More slots than points within the budget: the second front next, the over-budget point last.
    assert promote(points, 6, budget)[:3] == promote(points, 3, budget)
    assert set(promote(points, 5, budget)[3:]) == {1, 5} and promote(points, 6, budget)[-1] == 4
    # Nothing within the budget: the over-budget points still fill the slots, fastest front first.
    assert promote([(11.0, 0.2), (12.0, 0.1)], 1, budget) == [0]


# ---------------------------------------------------------------------------------------------- config (reliability)
def test_misspelt_search_fields_are_named_with_the_closest_field(tmp_path: Path) -> None:
    """The shared one-line helper names unknown fields first, not the required field a typo leaves missing."""
    raw = _raw(tmp_path)
    raw["latency"]["budgetms"] = raw["latency"].pop("budget_ms")
    raw["gate"] = {"oversmpling": 3}
    with pytest.raises(ConfigError) as e:
        parse_search_config(raw, "search.yaml")
    assert str(e.value) == ("search.yaml: latency.budgetms: unknown field (did you mean budget_ms?); "
                            "gate.oversmpling: unknown field (did you mean oversampling?)")
    raw = _raw(tmp_path)
    raw["lat"] = raw.pop("latency")
    with pytest.raises(ConfigError) as e:
        parse_search_config(raw, "search.yaml")
    assert str(e.value) == "search.yaml: lat: unknown field (did you mean latency?)"


# Found by tests/test_fuzz_inputs.py (Hypothesis) and NOT fixed on this branch: both fixes belong in
# smnas_trt/search/config.py, which is being refactored elsewhere (see the branch's report).
def test_search_yaml_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_bytes(b"\x80" + b"name: demo\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_search_config(path)


def test_search_training_values_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        parse_search_config(_raw(tmp_path, training={"batch_size": None}))


def test_search_generations_have_an_upper_bound(tmp_path: Path) -> None:
    """Found by Hypothesis (slow profile): structural.generations 2**63 loaded, then stage_plan() overflowed."""
    with pytest.raises(ConfigError, match=r"structural.generations: Input should be less than or equal to 1000"):
        parse_search_config(_raw(tmp_path, structural={"generations": 2**63}))


def test_search_paths_with_a_nul_byte(tmp_path: Path) -> None:
    """Found while checking the fuzz finds (not by Hypothesis): Path.resolve raises 'embedded null byte'."""
    with pytest.raises(ConfigError, match="data"):
        parse_search_config(_raw(tmp_path, data="a\x00b"))
