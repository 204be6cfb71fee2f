"""The search loop: structural then modular generations, each gated by the latency predictor.

One generation:
1. propose children (structures, random archs, or SM-NAS mutations of the current parents),
   seeded by `(seed, generation)` only, so the same seed and the same recorded results give the
   same candidates;
2. predict their latency, drop duplicates and over-budget ones, rank the rest (`gate.py`) and record
   every decision in the run store in one transaction;
3. time the best-ranked on the real backend before training (`gate.confirm`), skipping and
   replacing any that measure over the budget, until the generation's rung-0 slots are filled;
4. train the chosen candidates rung by rung (Pareto-aware successive halving, `StageConfig`): all to
   rung 0, then the best 1/eta by non-dominated rank on (measured latency, rung AP) on to the next
   rung from their checkpoints, the others stopped; each training marked `training` in the store
   before it starts and its rung recorded when it ends. Timing runs only between rounds of training;
5. add every new timing to the run's latency table, refit the predictor, update the Pareto front
   (measured latency vs top-rung AP) and close the generation.

A killed run resumes from the store: closed generations are skipped, a planned generation is not
re-planned, finished rungs are never trained again, and a training left `training` continues from
its last epoch checkpoint (at most the rung in flight is repeated, usually less).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from smnas_trt.data import check_dataset
from smnas_trt.errors import ArchError, ConfigError, DataError, SearchError, first_line
from smnas_trt.fileio import atomic_dir, atomic_write_json, atomic_write_text, writer_lock
from smnas_trt.profiling.cache import default_onnx_cache
from smnas_trt.profiling.drift import Drift
from smnas_trt.search import latency
from smnas_trt.search.config import SearchConfig, StageConfig, config_differences, parse_search_config
from smnas_trt.search.executors import Executor, make_executor
from smnas_trt.search.gate import Child, rank_front_improvement, rank_in_order, rank_spread, screen
from smnas_trt.search.pareto import hypervolume_2d, pareto_front, promote, rank_and_crowding, select_survivors
from smnas_trt.search.progress import SearchProgress
from smnas_trt.search.store import Candidate, Generation, RunStore, Screened
from smnas_trt.search.tasks import (
    CANDIDATE_DIR,
    DriftJob,
    TimeJob,
    TimeOutcome,
    TrainJob,
    TrainOutcome,
    candidate_seed,
    measure_drift,
    time_candidate,
    train_candidate,
)
from smnas_trt.space import Arch, SearchSpace, load_space, parse

CONFIG_FILE = "config.yaml"
STORE_FILE = "run.db"
TABLE_FILE = "lut.db"
FRONT_FILE = "front.json"
PREDICTOR_DIR = "predictors"
INITIAL_PREDICTOR = "initial"


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    front: list[Candidate]
    generations: list[Generation]
    hypervolume: float


# ---------------------------------------------------------------------------------------------- run dirs
def load_frozen_config(run_dir: str | Path) -> SearchConfig:
    """The config a run directory was created with."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SearchError(f"run: {str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
    # Frozen configs hold absolute paths already; resolving them again changes nothing.
    return parse_search_config(yaml.safe_load(path.read_text()), str(path))


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / STORE_FILE).is_file()


def open_run(config: SearchConfig | None, out: str | Path, resume: bool,
             console: Console | None = None) -> tuple[SearchConfig, bool]:
    """Decide what `out` is: a new run (created here) or the run to resume. Returns (config, created).

    An existing run is never overwritten: without `resume` it is refused, and with `resume` a config
    that differs from the frozen one is refused too.
    """
    out = Path(out)
    if is_run_dir(out):
        frozen = load_frozen_config(out)
        diff = config_differences(frozen.identity_dict(), config.identity_dict()) if config else []
        if not resume:
            if diff:
                raise SearchError(f"run directory {str(out)!r} holds a run with a different config (differs in: "
                                  f"{', '.join(diff[:6])}); choose another --out, it is never overwritten")
            raise SearchError(f"run directory {str(out)!r} already holds this run; pass --resume to continue it")
        if diff:
            raise SearchError(f"--resume: {str(out)!r} was created with a different config (differs in: "
                              f"{', '.join(diff[:6])}); resume without --config or with the same file")
        # Where it runs may change between sessions (e.g. resume on a Ray cluster).
        return (config or frozen), False
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SearchError(f"--out {str(out)!r} exists and is not a run directory; choose a new or empty folder")
    if config is None:
        raise SearchError(f"--resume: nothing to resume at {str(out)!r}; give --config to start a run")
    if resume and console is not None:
        console.print(f"nothing to resume at {out}; starting a new run")
    create_run(config, out, console)
    return config, True


def create_run(config: SearchConfig, out: Path, console: Console | None = None) -> None:
    """Check every input (data, backend, table, predictor, budget), then create the run directory
    atomically: a failed start creates nothing."""
    check_dataset(config.data, ("train", config.evaluation.split))
    config.latency.spec().check_here()  # e.g. latency.device cuda:0 on a machine without CUDA: one line
    if config.executor.kind != "ray":  # Ray workers may time on other machines: checked per timing there
        latency.check_device(config.latency)
    fastest = latency.fastest_in_table(config.latency)
    if fastest is not None and config.latency.budget_ms < fastest[0]:
        raise ConfigError(f"latency.budget_ms: {config.latency.budget_ms:g} ms is below the fastest model in the "
                          f"table ({fastest[0]:.3g} ms on {config.latency.backend}, {fastest[1]}); nothing can meet it")
    if console:
        console.print("loading the latency predictor" if config.latency.predictor else
                      f"fitting the latency predictor on {config.latency.lut}")
    predictor = (latency.load_predictor(config.latency.predictor, config.latency) if config.latency.predictor
                 else latency.fit_predictor(config.latency.lut, config.latency))
    space = load_space(config.space)
    _check_budget_reachable(config, space, predictor)
    with atomic_dir(out) as tmp:
        atomic_write_text(tmp / CONFIG_FILE, config.to_yaml())
        latency.copy_table(config.latency.lut, tmp / TABLE_FILE)
        predictor.save(tmp / PREDICTOR_DIR / INITIAL_PREDICTOR)
        store = RunStore(tmp / STORE_FILE)
        from smnas_trt import __version__

        store.set_meta(config_digest=config.digest(), smnas_version=__version__)
        store.close()


def _check_budget_reachable(config: SearchConfig, space: SearchSpace, predictor: latency.Predictor) -> None:
    """Fail before any work when no architecture of the space is predicted under the budget."""
    rng = random.Random(f"preflight:{config.seed}")
    archs = [str(a) for a in space.iter_structures()] + [str(space.sample_arch(rng)) for _ in range(500)]
    predicted, _ = predictor.predict(archs)
    best = min(range(len(archs)), key=lambda i: predicted[i])
    if predicted[best] > config.latency.budget_ms:
        raise ConfigError(f"latency.budget_ms: {config.latency.budget_ms:g} ms is below every architecture the "
                          f"predictor sees in space {space.name!r} (fastest predicted {predicted[best]:.3g} ms: "
                          f"{archs[best]}); raise the budget")


# ---------------------------------------------------------------------------------------------- search
class Search:
    """One run directory's search. `run()` continues wherever the store says the run stands."""

    def __init__(self, config: SearchConfig, run_dir: str | Path, executor: Executor | None = None,
                 console: Console | None = None, show_progress: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.space = load_space(config.space)
        self.store = RunStore(self.run_dir / STORE_FILE)
        self.table = self.run_dir / TABLE_FILE
        self.budget = config.latency.budget_ms
        self.ref = (self.budget, 0.0)
        self.executor = executor
        self.console = console or Console()
        self.progress = SearchProgress(self.console, enabled=show_progress)
        self._predictors: dict[str, latency.Predictor] = {}
        self._confirming = config.gate.enabled and config.gate.confirm
        self.num_classes = latency.table_num_classes(config.latency, self.table)
        self.drift: Drift | None = None  # this run's machine state against its table (latest measurement)

    # ------------------------------------------------------------------ driver
    def run(self, stop_after: int | None = None) -> SearchResult:
        """Run (or resume) every generation; `stop_after` ends after that many generations of this plan."""
        own_executor = self.executor is None
        if self.executor is None:
            self.executor = make_executor(self.config.executor)
        try:
            with self.progress:
                for g, stage in enumerate(self.config.stage_plan()):
                    if stop_after is not None and g >= stop_after:
                        break
                    gen = self.store.generation(g)
                    if gen is not None and gen.status == "done":
                        continue
                    if gen is None and self._cpu_budget_spent():
                        break
                    predictor = self.predictor_for(g)
                    st = self.config.stage(stage)
                    if self.config.latency.drift and self._recorded_drift(g) is None:
                        self._measure_drift(g, "generation")
                    self.progress.start_generation(g, stage, sum(st.promoted_to(r) for r in range(len(st.rungs))))
                    if gen is None:
                        self.plan(g, stage, predictor)
                    self.confirm(g, stage)
                    self.train(g, stage)
                    self.close_generation(g)
        finally:
            if own_executor and self.executor is not None:
                self.executor.close()
                self.executor = None
        return self.result()

    def _cpu_budget_spent(self) -> bool:
        budget = self.config.max_train_cpu_s
        if budget is None:
            return False
        spent = self.store.train_cpu_seconds()
        if spent < budget:
            return False
        self.progress.note(f"training has used {spent:.0f} CPU-s of max_train_cpu_s {budget:g}: no new generation")
        return True

    def result(self) -> SearchResult:
        front = self.store.front()
        hv = hypervolume_2d([c.point for c in front], self.ref) / self.budget
        return SearchResult(self.run_dir, front, self.store.generations(), hv)

    # ------------------------------------------------------------------ predictors
    def predictor_for(self, g: int) -> latency.Predictor:
        """The predictor refitted after the latest closed generation before g (or the initial one)."""
        path = self.run_dir / PREDICTOR_DIR / INITIAL_PREDICTOR
        for gen in self.store.generations():
            if gen.generation < g and gen.status == "done" and gen.predictor_path:
                path = self.run_dir / gen.predictor_path
        key = str(path)
        if key not in self._predictors:
            self._predictors[key] = latency.load_predictor(path, self.config.latency, table=self.table)
        return self._predictors[key]

    # ------------------------------------------------------------------ 1-2: propose and screen
    def plan(self, g: int, stage: str, predictor: latency.Predictor) -> None:
        c = self.config
        seed = _generation_seed(c.seed, g)
        rng = random.Random(seed)
        slots = c.stage(stage).starts()
        children = self.propose(stage, rng, slots * c.gate.oversampling)
        predicted: list[float] = []
        uncertainty: list[float] = []
        if children:
            # The drift recorded for this generation, so a replay with the same records plans the same children.
            ms, unc = predictor.predict([ch.arch for ch in children], self._recorded_drift(g))
            predicted, uncertainty = [float(x) for x in ms], [float(x) for x in unc]
        decisions = screen(children, predicted, uncertainty, self.budget, c.gate.safety,
                           self.store.known_arch_ids(), enabled=c.gate.enabled)
        kept = [d for d in decisions if d.decision == "kept"]
        greedy = math.ceil(slots * c.gate.max_confirm_factor)
        if not c.gate.enabled:
            ranked = rank_in_order(kept)
        elif stage == "modular":
            ranked = rank_front_improvement(kept, [x.point for x in self._front_pool()], self.ref, greedy)
        else:
            trained = [x.measured_ms for x in self.store.candidates(status="done") if x.measured_ms is not None]
            ranked = rank_spread(kept, trained)
        rank_of = {d.child.arch_id: d.rank for d in ranked}
        rows = [Screened(g, i, d.child.arch_id, d.child.arch, d.child.parent_id, d.predicted_ms, d.uncertainty_ms,
                         d.decision, rank_of.get(d.child.arch_id) if d.decision == "kept" else None)
                for i, d in enumerate(decisions)]
        self.store.plan_generation(g, stage, seed, rows)
        n_over = sum(d.decision == "over_budget" for d in decisions)
        self.progress.note(f"screened {len(decisions)} children: {n_over} over budget, "
                           f"{sum(d.decision == 'duplicate' for d in decisions)} duplicates, {len(kept)} kept")

    def propose(self, stage: str, rng: random.Random, n: int) -> list[Child]:
        if stage == "structural":
            structures = list(self.space.iter_structures())
            rng.shuffle(structures)
            return [_child(a) for a in structures[:n]]
        if stage == "random":
            return [_child(self.space.sample_arch(rng)) for _ in range(n)]
        return self._mutate_parents(rng, n)

    def _front_pool(self) -> list[Candidate]:
        """Done candidates (trained to their stage's top rung) with a measured latency within the budget and an AP."""
        return [x for x in self.store.candidates(status="done")
                if x.measured_ms is not None and x.ap is not None and x.measured_ms <= self.budget]

    def parents(self) -> list[Candidate]:
        """Non-dominated sorting + crowding distance over everything trained within budget (elitist)."""
        pool = self._front_pool()
        if not pool:  # nothing within budget yet (gate off): evolve from the fastest trained models
            pool = sorted((x for x in self.store.candidates(status="done") if x.measured_ms is not None
                           and x.ap is not None), key=lambda x: (x.measured_ms, x.seq))
        if not pool:
            raise SearchError("modular stage: no trained candidate to evolve from (the structural stage kept none "
                              "under latency.budget_ms, or every training failed; see the run's report and "
                              "candidates/ folder)")
        keep = select_survivors([x.point for x in pool], self.config.modular.population)
        return [pool[i] for i in keep]

    def _mutate_parents(self, rng: random.Random, n: int) -> list[Child]:
        parents = self.parents()
        keys = rank_and_crowding([p.point for p in parents])
        weights = self.config.modular.mutation_rates or None
        children: list[Child] = []
        for _ in range(n):
            # Binary tournament: lower front rank wins, then larger crowding distance.
            i, j = rng.randrange(len(parents)), rng.randrange(len(parents))
            pick = min((i, j), key=lambda k: (keys[k][0], -keys[k][1], k))
            parent = parents[pick]
            try:
                arch = self.space.mutate(parse(parent.arch), rng, weights)
            except ArchError:
                continue
            children.append(_child(arch, parent.arch_id, parent.ap))
        return children

    # ------------------------------------------------------------------ 3: confirm on the backend
    def confirm(self, g: int, stage: str) -> None:
        c = self.config
        slots = c.stage(stage).starts()
        if self._confirming:
            for cand in self.store.candidates(generation=g, status="planned"):  # timed when the run stopped
                self._confirm_one(cand)
        cap = math.ceil(slots * c.gate.max_confirm_factor)
        for row in self.store.screened(g, "kept"):
            cands = self.store.candidates(generation=g)
            if _filled(cands) >= slots:
                break
            if self._confirming and sum(x.measured_ms is not None or x.status == "failed" for x in cands) >= cap:
                break
            if self.store.candidate(row.arch_id) is not None:
                continue
            cand = self.store.add_candidate(row.arch_id, row.arch, stage, g, row.parent_id, row.predicted_ms,
                                            row.uncertainty_ms)
            if self._confirming:
                self._confirm_one(cand)

    def _confirm_one(self, cand: Candidate) -> None:
        self.progress.note(f"timing {cand.arch} on {self.config.latency.backend}")
        outcome = self._time([cand])[0]
        if isinstance(outcome, TimeOutcome):
            over = outcome.ms > self.budget
            self.store.update(cand.arch_id, status="over_budget" if over else "timed", measured_ms=outcome.ms,
                              latency_json=json.dumps(outcome.stats))
            if over:
                self.progress.note(f"[yellow]measured {outcome.ms:.2f} ms > budget: not trained[/]")
        else:
            self.store.update(cand.arch_id, status="failed", error=f"timing: {_describe(outcome)}")

    def _time(self, cands: list[Candidate]) -> list[TimeOutcome | BaseException]:
        lat = self.config.latency
        jobs = [TimeJob(x.arch_id, x.arch, lat.spec().model_dump(), lat.scope, self.num_classes,
                        lat.timing.model_dump(), lat.passes, str(default_onnx_cache())) for x in cands]
        assert self.executor is not None
        results: list[TimeOutcome | BaseException] = []
        # One timing at a time, and only between rounds of training (train() returns once every job of a
        # rung is back), so no training of ours runs beside a timing.
        for _job, res in self.executor.run(time_candidate, jobs, parallel=False, use_gpu=self._times_on_gpu):
            if isinstance(res, TimeOutcome):
                latency.add_timing(self.table, res, lat, self.drift)
            elif isinstance(res, ConfigError | DataError):
                raise res
            results.append(res)
        return results

    @property
    def _times_on_gpu(self) -> bool:
        return self.config.latency.spec().device_kind == "cuda"

    def _recorded_drift(self, g: int) -> Drift | None:
        """The drift measured at the start of generation g (None before it is measured, or if it could not be)."""
        rows = [r for r in self.store.drifts() if r["generation"] == g and r["phase"] == "generation"]
        if not rows:
            return None
        r = rows[-1]
        return Drift(r["ratio"], r["spread"], r["anchors"], {})

    def _measure_drift(self, g: int, phase: str) -> None:
        """Time the table's anchors now: this run's machine state against the table's, recorded in the run
        store and the run's table; predictions from here on are corrected by it (see profiling/drift.py)."""
        lat = self.config.latency
        job = DriftJob(str(self.table), lat.spec().model_dump(), lat.timing.model_dump(), lat.passes,
                               str(default_onnx_cache()))
        assert self.executor is not None
        [(_, res)] = list(self.executor.run(measure_drift, [job], parallel=False, use_gpu=self._times_on_gpu))
        if isinstance(res, BaseException):
            self.progress.note(f"[yellow]drift not measured: {_describe(res)}[/]")
            return
        drift, line = res
        self.progress.note(line)
        if drift is None:
            return
        self.drift = drift
        self.store.add_drift(g, phase, drift.ratio, drift.spread, drift.n)
        if drift.warn:
            self.progress.note(f"[yellow]{drift.warning('this generation’s budget and timings')}[/]")

    # ------------------------------------------------------------------ 4: train, rung by rung
    def train(self, g: int, stage: str) -> None:
        """Successive halving: train every candidate of the generation to rung 0, time any not yet timed,
        promote the best 1/eta, train those to the next rung, and so on to the top rung."""
        st = self.config.stage(stage)
        for rung in range(len(st.rungs)):
            self._train_rung(g, st, rung)
            self._time_untimed(g)
            if rung + 1 < len(st.rungs):
                self._promote(g, st, rung)

    def _train_rung(self, g: int, st: StageConfig, rung: int) -> None:
        c = self.config
        first = ("timed", "training") if self._confirming else ("planned", "training")
        cands = [x for x in self.store.candidates(generation=g, status=first if rung == 0 else ("promoted", "training"))
                 if _next_rung(x) == rung]
        assert self.executor is not None
        jobs = [TrainJob(x.arch_id, x.arch, c.data, str(self.run_dir / CANDIDATE_DIR / x.arch_id), st.epochs,
                         st.rungs[rung], candidate_seed(c.seed, x.arch_id), dict(c.training), c.evaluation.split,
                         c.evaluation.max_images, c.evaluation.batch_size, c.device, self.executor.threads_per_task,
                         resume=rung > 0 or x.status == "training") for x in cands]
        before = {x.arch_id: x for x in cands}
        top = rung + 1 == len(st.rungs)
        where = f" to rung {rung} ({st.rungs[rung]} epochs)" if len(st.rungs) > 1 else ""

        def started(job: TrainJob) -> None:
            self.store.start_training(job.arch_id)
            self.progress.candidate_started(job.arch + where)

        for job, res in self.executor.run(train_candidate, jobs, on_start=started):
            if isinstance(res, TrainOutcome):
                prev = before[job.arch_id]
                timed = self.store.candidate(job.arch_id)
                assert timed is not None
                status = ("done" if timed.measured_ms is not None else "trained") if top else "waiting"
                self.store.finish_rung(
                    job.arch_id, rung, status, epochs=res.epochs, ap=res.ap, ap50=res.ap50,
                    metrics_json=json.dumps(res.metrics), train_seconds=res.train_seconds, cpu_seconds=res.cpu_seconds,
                    rung_train_seconds=res.train_seconds - (prev.train_seconds or 0.0),
                    rung_cpu_seconds=res.cpu_seconds - (prev.cpu_seconds or 0.0),
                    checkpoint=_relative(res.checkpoint, self.run_dir), worker=res.worker)
                self.progress.candidate_finished(job.arch, f"AP {res.ap:.3f} AP50 {res.ap50:.3f} after {res.epochs} "
                                                 f"epochs ({res.train_seconds:.0f} s)")
            elif isinstance(res, ConfigError | DataError):
                raise res  # the dataset or recipe is wrong: every other candidate would fail the same way
            else:
                self.store.update(job.arch_id, status="failed", error=_describe(res), finished_at=_now())
                self.progress.candidate_finished(job.arch, f"[red]failed: {_describe(res)}[/]")

    def _time_untimed(self, g: int) -> None:
        """Time trained candidates that were not timed before training (gate.confirm off)."""
        cands = [x for x in self.store.candidates(generation=g, status=("waiting", "trained")) if x.measured_ms is None]
        if not cands:
            return
        if self.config.latency.drift:
            self._measure_drift(g, "trained")
        for cand, outcome in zip(cands, self._time(cands), strict=True):
            if isinstance(outcome, TimeOutcome):
                self.store.update(cand.arch_id, measured_ms=outcome.ms, latency_json=json.dumps(outcome.stats),
                                  **({"status": "done"} if cand.status == "trained" else {}))
            else:
                self.store.update(cand.arch_id, status="failed", error=f"timing: {_describe(outcome)}")

    def _promote(self, g: int, st: StageConfig, rung: int) -> None:
        """The best 1/eta of the rung by non-dominated rank on (measured latency, rung AP) go on (`promote`)."""
        waiting = [x for x in self.store.candidates(generation=g, status="waiting") if x.rung == rung]
        if not waiting:
            return
        points = [(x.measured_ms if x.measured_ms is not None else math.inf, x.ap or 0.0) for x in waiting]
        chosen = [waiting[i] for i in promote(points, st.promoted_to(rung + 1), self.budget)]
        ids = {x.arch_id for x in chosen}
        self.store.decide_rung(rung, {x.arch_id: "promoted" if x.arch_id in ids else "stopped" for x in waiting})
        self.progress.note(f"rung {rung}: {len(ids)} of {len(waiting)} promoted to rung {rung + 1} "
                           f"({st.rungs[rung + 1]} epochs): " + ", ".join(sorted(x.arch for x in chosen)))

    # ------------------------------------------------------------------ 5: refit, front
    def close_generation(self, g: int) -> None:
        cands = self.store.candidates(generation=g)
        gen = self.store.generation(g)
        assert gen is not None
        previous = next((x.predictor_path for x in reversed(self.store.generations())
                         if x.generation < g and x.predictor_path), None)
        predictor_path = previous or f"{PREDICTOR_DIR}/{INITIAL_PREDICTOR}"
        if self.config.latency.refit and any(x.measured_ms is not None for x in cands):
            self.progress.note("refitting the latency predictor on the new timings")
            predictor = latency.fit_predictor(self.table, self.config.latency, base=self.predictor_for(g))
            predictor_path = f"{PREDICTOR_DIR}/gen_{g:03d}"
            predictor.save(self.run_dir / predictor_path)
        top = len(self.config.stage(gen.stage).rungs) - 1
        self.store.decide_rung(top, {x.arch_id: "top" for x in cands if x.status == "done" and x.rung == top})
        hv = self.update_front()
        errors = [abs(x.predicted_ms - x.measured_ms) / x.measured_ms for x in cands
                  if x.predicted_ms is not None and x.measured_ms]
        mape = statistics.fmean(errors) if errors else None
        trained = sum(x.status in ("done", "trained") for x in cands)
        self.store.finish_generation(g, n_trained=trained, front_size=len(self.store.front()), hypervolume=hv,
                                     predictor_mape=mape, predictor_path=predictor_path)
        closed = self.store.generation(g)
        assert closed is not None
        self.progress.generation_done(closed, cands)

    def update_front(self) -> float:
        """Recompute the front from measured latency and AP; write front.json; return normalised hypervolume."""
        pool = self._front_pool()
        points = [x.point for x in pool]
        front = [pool[i] for i in pareto_front(points)]
        self.store.set_front(x.arch_id for x in front)
        hv = hypervolume_2d(points, self.ref) / self.budget
        lat = self.config.latency
        atomic_write_json(self.run_dir / FRONT_FILE, {
            "budget_ms": self.budget, "backend": lat.backend, "scope": lat.scope, "precision": lat.precision,
            "batch": lat.batch, "hypervolume": hv,
            "hypervolume_reference": {"latency_ms": self.ref[0], "ap": self.ref[1],
                                      "normalised_by": "budget_ms x 1.0 AP"},
            "front": [front_entry(x) for x in front],
        })
        return hv


@dataclass
class RunDir:
    """A run directory opened for reading (report, deploy) or writing (the search): its frozen config and store.

        with RunDir.open("runs/demo") as run:
            front = run.store.front()
    """

    path: Path
    config: SearchConfig
    store: RunStore

    @classmethod
    @contextmanager
    def open(cls, path: str | Path, readonly: bool = True, what: str = "run") -> Iterator[RunDir]:
        """`what` names the option in the message when `path` is no run directory (e.g. --run)."""
        run = Path(path)
        if not is_run_dir(run):
            raise SearchError(f"{what} {str(run)!r} is not a search run directory (no {CONFIG_FILE} and "
                              f"{STORE_FILE}); give the --out folder of smnas search")
        config = load_frozen_config(run)
        store = RunStore(run / STORE_FILE, readonly=readonly)
        try:
            yield cls(run, config, store)
        finally:
            store.close()


def load_front(run_dir: str | Path) -> list[Candidate]:
    """The recorded Pareto front of a run (fastest first); `checkpoint` is relative to `run_dir`."""
    with RunDir.open(run_dir) as run:
        return run.store.front()


def front_entry(c: Candidate) -> dict[str, Any]:
    return {"arch_id": c.arch_id, "arch": c.arch, "stage": c.stage, "generation": c.generation,
            "ap": c.ap, "ap50": c.ap50, "measured_ms": c.measured_ms, "predicted_ms": c.predicted_ms,
            "uncertainty_ms": c.uncertainty_ms, "train_seconds": c.train_seconds, "cpu_seconds": c.cpu_seconds,
            "epochs": c.epochs, "rung": c.rung, "checkpoint": c.checkpoint}


def run_search(config: SearchConfig | None, out: str | Path, resume: bool = False,
               executor: Executor | None = None, console: Console | None = None, show_progress: bool = True,
               stop_after: int | None = None) -> SearchResult:
    """Start a search in `out`, or continue the one there with `resume=True`. See `open_run`."""
    console = console or Console()
    def busy(holder: str) -> SearchError:  # one search per run directory
        return SearchError(f"run directory {str(out)!r} is in use by another search ({holder}); wait for it or "
                           "stop it (`smnas report` reads it meanwhile)")

    with writer_lock(out, busy):
        config, _created = open_run(config, out, resume, console)
        search = Search(config, out, executor, console, show_progress)
        try:
            return search.run(stop_after)
        finally:
            search.store.close()


# ---------------------------------------------------------------------------------------------- helpers
def _generation_seed(seed: int, g: int) -> int:
    # Independent of how earlier generations went, so a resumed run draws the same numbers.
    return random.Random(f"smnas-search:{seed}:{g}").getrandbits(63)


def _child(arch: Arch, parent_id: str | None = None, parent_ap: float | None = None) -> Child:
    return Child(arch.canonical, arch.id, parent_id, parent_ap)


def _next_rung(cand: Candidate) -> int:
    return 0 if cand.rung is None else cand.rung + 1


def _filled(cands: list[Candidate]) -> int:
    """Training slots used: everything chosen except what measured over budget or failed to time."""
    return sum(x.status not in ("over_budget", "failed") or (x.status == "failed" and x.attempts > 0)
               for x in cands)


def _describe(err: Any) -> str:
    return first_line(err) if isinstance(err, BaseException) else str(err).strip().split("\n")[0][:300]


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _now() -> float:
    import time

    return time.time()
