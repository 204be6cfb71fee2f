"""`smnas profile-lut`: time whole architectures (and module pieces) of a space into a latency table.

Flow of one run (a new table, or `resume=True` on an existing one):
1. everything is checked before the table file is touched (passes, backend on this machine, cache);
2. the anchors (a fixed set of models spanning the space's structural kinds and cost, chosen when the
   table is made) are timed: the run's `start` state; a resume first measures its drift against the
   table's reference and says so;
3. the entries not yet in the table are timed: the module pieces of the chosen kinds (deduplicated
   by key; a stratified sample above `max_modules`) and `models` whole architectures spread over all
   structural combinations (or an arch file). A model's latency is the sum of its graphs' latencies
   (`models.graphs.detector_graphs`: one-stage `body`; two-stage `rpn` + `roi`), the very graphs
   `smnas deploy` ships;
4. the anchors again (`end`), then a repeat check: a sample of this run's entries (at least 10,
   about 10%) is timed again with fresh sessions and the median and p90 relative difference stored
   as the table's noise floor;
5. a one-line account of where the wall time went (export, session build, warm-up, timed runs).

Each row commits on its own, so Ctrl-C (KeyboardInterrupt) stops between entries and keeps every
row timed so far; `resume=True` continues, skipping what the table holds. Exported graphs go to an
`OnnxCache` (reused by a resume, another backend or precision, another run), and every entry is
exported once and timed `passes` times (chunk by chunk, the median pass kept). On a GPU device an
`ExportAhead` worker process exports the next entries while this process times the current one.
"""

from __future__ import annotations

import functools
import itertools
import math
import multiprocessing
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smnas_trt.errors import ArchError, ProfilingError, SmnasError, first_line
from smnas_trt.fileio import writer_lock
from smnas_trt.profiling.backend import Backend, Runner
from smnas_trt.profiling.cache import OnnxCache
from smnas_trt.profiling.drift import Drift, drift_against
from smnas_trt.profiling.export import DEFAULT_EXPORTER, Exporter, ExportInfo
from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.quantize import Scheme, scheme_for
from smnas_trt.profiling.spec import BackendSpec
from smnas_trt.profiling.timing import LatencyStats, TimingConfig, sum_stats

DEFAULT_MAX_MODULES = 2000
PIECE_KINDS = ("stem", "stage", "neck", "head", "rpn", "roi")
# Chosen by measurement (bench/predictor_accuracy.py --pieces): whole-model timings carry the predictor;
# module pieces add no held-out accuracy on ort-cpu and cost about 4x the models' time in a default run.
DEFAULT_MODULE_KINDS: tuple[str, ...] = ()
DEFAULT_ANCHORS = 8
REPEAT_SHARE = 0.1  # the repeat check re-times about 10% of a run's entries...
REPEAT_MIN = 10  # ...and at least this many
NOISE_WARN = 0.03  # a repeat difference above 3% (median) makes a table too noisy for the predictor
PASS_CHUNK = 20  # entries exported together and then timed pass after pass (bounds what is in flight)


# ------------------------------------------------------------------------------------------ where the time goes
@dataclass
class TimeSplit:
    """Seconds spent exporting, building sessions/engines, warming up and in timed runs."""

    export_s: float = 0.0
    build_s: float = 0.0
    warmup_s: float = 0.0
    timed_s: float = 0.0

    def add(self, other: TimeSplit) -> None:
        self.export_s += other.export_s
        self.build_s += other.build_s
        self.warmup_s += other.warmup_s
        self.timed_s += other.timed_s

    def shares(self, wall_s: float) -> dict[str, float]:
        wall = max(wall_s, 1e-9)
        parts = {"export": self.export_s, "build": self.build_s, "warm-up": self.warmup_s, "timed runs": self.timed_s}
        shares = {k: v / wall for k, v in parts.items()}
        shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        return shares

    def line(self, wall_s: float) -> str:
        names = {"export": "export", "build": "session build", "warm-up": "warm-up", "timed runs": "timed runs",
                 "other": "other"}
        parts = " · ".join(f"{names[k]} {100 * v:.0f}%" for k, v in self.shares(wall_s).items())
        return f"wall {wall_s:.0f} s: {parts}"


# ------------------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class TimingJob:
    """One entry to time. `build` returns its graphs (called when its turn comes); the entry's latency is
    the sum of theirs. `cache_key` names the graphs in the ONNX cache (everything but weights)."""

    name: str  # unique in the run: the entry's table key
    build: Callable[[], list[Any]]  # -> list[models.graphs.GraphSpec]
    cache_key: str
    label: str = ""  # for progress and failure lines


@dataclass
class JobResult:
    job: TimingJob
    stats: LatencyStats | None  # None when the job failed
    extra: dict[str, Any]  # row fields: exporter, opset, ONNX hashes, per-graph medians, pass medians
    error: str = ""  # one line, when it failed
    split: TimeSplit = field(default_factory=TimeSplit)


def batched(inputs: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """Example inputs (batch 1) repeated to `batch` along dim 0."""
    if batch == 1:
        return inputs
    return tuple(t.repeat(batch, *([1] * (t.dim() - 1))) for t in inputs)


def median_pass(passes: Sequence[LatencyStats]) -> LatencyStats:
    """The pass whose median is the median of the pass medians (the lower one for an even count).

    A disturbance (another process, a frequency dip) that spans less than one pass slows the runs
    of that pass only; this choice discards it, where pooling every run would shift the median.
    """
    return sorted(passes, key=lambda s: s.median_ms)[(len(passes) - 1) // 2]


def export_graphs(job: TimingJob, cache: OnnxCache, exporter: Exporter, precision: str,
                  scheme: Scheme | None) -> tuple[list[tuple[str, ExportInfo]], float]:
    """(graph name, export) of each of the job's graphs, from the cache or exported into it, and the seconds
    the exports took (building the model before them is not counted)."""
    specs = job.build()
    t0 = time.perf_counter()
    exports = [(spec.name, cache.export(f"{job.cache_key}|{spec.name}", spec.module, spec.example_inputs,
                                        exporter=exporter, precision=precision, input_names=spec.input_names,
                                        output_names=spec.output_names, scheme=scheme))
               for spec in specs]
    return exports, time.perf_counter() - t0


class _Prepared:
    """A job's graphs ready to load: exported (or taken from the cache) once, loaded afresh per pass.

    `exported` are the job's exports made ahead by an `ExportAhead` worker; without them it exports here."""

    def __init__(self, job: TimingJob, backend: Backend, cache: OnnxCache, exporter: Exporter,
                 ahead: ExportAhead | None = None) -> None:
        self.loaders: list[tuple[str, Callable[[], Runner]]] = []
        self.extra: dict[str, Any] = {"exporter": "none" if backend.name == "torch" else exporter}
        self.split = TimeSplit()
        scheme = scheme_for(backend.name) if backend.precision == "int8" else None
        if scheme is not None:
            self.extra["int8"] = {"scheme": scheme, "calibration": "random (seeded; latency does not depend on it)"}
        if backend.name == "torch":
            for spec in job.build():
                self.loaders.append((spec.name, functools.partial(backend.load_module, spec.module,
                                                                  spec.example_inputs)))
            return
        t0 = time.perf_counter()
        exports = ahead.take(job) if ahead is not None else None
        if exports is not None:
            self.split.export_s += time.perf_counter() - t0  # the time this process waited for the worker
        else:
            exports, seconds = export_graphs(job, cache, exporter, backend.precision, scheme)
            self.split.export_s += seconds
        for name, info in exports:
            self.extra["opset"] = info.opset
            self.loaders.append((name, functools.partial(backend.load, info.path)))
        if exports:
            self.extra["onnx_sha256"] = {name: info.sha256 for name, info in exports}

    def time_once(self, timing: TimingConfig) -> tuple[LatencyStats, dict[str, float]]:
        """One pass: each graph in a fresh session; the entry's stats are their sum."""
        parts: list[LatencyStats] = []
        graphs: dict[str, float] = {}
        for name, load in self.loaders:
            t0 = time.perf_counter()
            with load() as runner:
                self.split.build_s += time.perf_counter() - t0
                stats = runner.time(timing)
            self.split.warmup_s += stats.warmup_s
            self.split.timed_s += stats.timed_s
            parts.append(stats)
            graphs[name] = round(stats.median_ms, 6)
        return sum_stats(parts), graphs


def _export_in_worker(job: TimingJob, folder: str, exporter: Exporter, precision: str,
                      scheme: Scheme | None) -> tuple[list[tuple[str, ExportInfo]], tuple[int, int, int]]:
    """An `ExportAhead` worker's task: the job's exports into the shared cache folder, and its cache counts."""
    with OnnxCache(folder) as cache:
        exports, _ = export_graphs(job, cache, exporter, precision, scheme)
        return exports, (cache.hits, cache.misses, cache.altered)


class ExportAhead:
    """Exports the next entries' graphs in one worker process while this process times the current one.

    For GPU backends, where the timing leaves the CPU idle: the export (a third of a CPU entry's wall, more
    beside an engine build) overlaps the timing. Not for CPU backends: a second busy core would disturb the
    timing. The worker writes into the run's ONNX cache folder, and its cache counts join the cache's. A job
    the worker could not export (or a worker that died, said once in `broken`) is exported in this process,
    where a real error is reported as that entry's failure.
    """

    def __init__(self, cache: OnnxCache, exporter: Exporter, backend: Backend) -> None:
        self.cache = cache
        self.exporter = exporter
        self.precision = backend.precision
        self.scheme = scheme_for(backend.name) if backend.precision == "int8" else None
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._futures: dict[str, Future[Any]] = {}
        self.exported = 0  # jobs whose graphs came from the worker
        self.broken = ""  # why the worker stopped, once it has

    def submit(self, jobs: Iterable[TimingJob]) -> None:
        for job in jobs:
            if self._pool is None:
                return
            try:
                self._futures[job.name] = self._pool.submit(_export_in_worker, job, str(self.cache.folder),
                                                            self.exporter, self.precision, self.scheme)
            except BrokenProcessPool as e:  # the worker died (OOM, killed)
                self._stop(e)

    def take(self, job: TimingJob) -> list[tuple[str, ExportInfo]] | None:
        """The worker's exports of `job` once it has made them; None: export it here."""
        future = self._futures.pop(job.name, None)
        if future is None:
            return None
        try:
            exports, (hits, misses, altered) = future.result()
        except BrokenProcessPool as e:
            self._stop(e)
            return None
        except Exception:
            return None  # an export error (or one pickling the job): exporting here reports it as the entry's
        self.cache.add_counts(hits, misses, altered)
        self.exported += 1
        return exports

    def _stop(self, error: BaseException) -> None:
        self.broken = self.broken or f"the export worker stopped ({first_line(error)}); exporting in this process"
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures.clear()


def time_jobs(backend: Backend, jobs: Iterable[TimingJob], timing: TimingConfig, cache: OnnxCache,
              passes: int = 1, exporter: Exporter = DEFAULT_EXPORTER,
              ahead: ExportAhead | None = None) -> Iterator[JobResult]:
    """Time each job and yield its result as soon as it is done; a failing job is reported, not raised.

    With `passes` > 1 the jobs go in chunks of PASS_CHUNK: each chunk is exported once, then timed
    `passes` times over (fresh sessions each time, so the passes of one job are seconds apart), and each
    job keeps its `median_pass`; `extra["pass_medians_ms"]` records every pass. With `ahead`, the next
    chunk is exported by its worker while this one is timed.
    """
    if passes < 1:
        raise ProfilingError(f"passes must be >= 1, got {passes}")
    pending = iter(jobs)
    size = 1 if passes == 1 else PASS_CHUNK
    chunk = list(itertools.islice(pending, size))
    if ahead is not None:
        ahead.submit(chunk)
    while chunk:
        following = list(itertools.islice(pending, size))
        if ahead is not None:
            ahead.submit(following)
        prepared: dict[str, _Prepared] = {}
        errors: dict[str, str] = {}
        for job in chunk:
            try:
                prepared[job.name] = _Prepared(job, backend, cache, exporter, ahead)
            except Exception as e:  # one bad entry must not end a long run; it is reported
                errors[job.name] = first_line(e)
        runs: dict[str, list[tuple[LatencyStats, dict[str, float]]]] = {name: [] for name in prepared}
        for _ in range(passes):
            for name, prep in prepared.items():
                if name in errors:
                    continue
                try:
                    runs[name].append(prep.time_once(timing))
                except Exception as e:
                    errors[name] = first_line(e)
        for job in chunk:
            split = prepared[job.name].split if job.name in prepared else TimeSplit()
            if job.name in errors:
                yield JobResult(job, None, {}, errors[job.name], split)
                continue
            chosen = median_pass([stats for stats, _ in runs[job.name]])
            graphs = next(g for stats, g in runs[job.name] if stats is chosen)
            extra = dict(prepared[job.name].extra)
            if len(graphs) > 1:
                extra["graphs_ms"] = graphs
            if passes > 1:
                extra["pass_medians_ms"] = [round(s.median_ms, 6) for s, _ in runs[job.name]]
            yield JobResult(job, chosen, extra, "", split)
        chunk = following


# ------------------------------------------------------------------------------------------ what to time
def model_job(arch: Any, num_classes: int, batch: int, precision: str, exporter: Exporter,
              scope: str = "network") -> TimingJob:
    """The graphs of a freshly built detector of `arch` (weights do not change latency)."""
    cache_key = OnnxCache.key(scope, arch, f"classes{num_classes}", f"batch{batch}", precision, exporter)
    # A partial of a module-level function, so that an ExportAhead worker can be sent the job.
    build = functools.partial(_model_graphs, arch, num_classes, batch, scope)
    return TimingJob(f"{scope}:{arch}", build, cache_key, f"model {arch} ({scope})")


def _model_graphs(arch: Any, num_classes: int, batch: int, scope: str) -> list[Any]:
    import torch

    from smnas_trt.models import build_detector
    from smnas_trt.models.graphs import detector_graphs, end2end_graph

    with torch.no_grad():
        model = build_detector(arch, num_classes)
        if scope == "end2end":
            return [end2end_graph(model, arch)]
        return detector_graphs(model, arch, batch)


def piece_job(piece: Any, batch: int, precision: str, exporter: Exporter) -> TimingJob:
    cache_key = OnnxCache.key("module", piece.key, f"batch{batch}", precision, exporter)
    return TimingJob(f"module:{piece.key}", functools.partial(_piece_graphs, piece, batch), cache_key,
                     f"module {piece.kind} {piece.key}")


def _piece_graphs(piece: Any, batch: int) -> list[Any]:
    from smnas_trt.models.graphs import GraphSpec

    inputs = batched(piece.inputs, batch)
    return [GraphSpec(piece.kind, piece.module, [f"input_{i}" for i in range(len(inputs))], inputs,
                      [f"output_{i}" for i in range(len(piece.output_shapes))])]


def read_arch_file(path: str | Path, space: Any | None = None) -> tuple[list[Any], list[str]]:
    """Architectures listed one per line (blank lines and `#` comments skipped).

    Returns (archs, bad_lines); a bad line is reported as "FILE:LINE: message" and the rest are kept.
    With a space, each arch must also belong to it.
    """
    from smnas_trt.space import parse

    path = Path(path)
    if not path.is_file():
        raise ProfilingError(f"arch file not found: {path}")
    archs: list[Any] = []
    bad: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            arch = space.parse(text) if space is not None else parse(text)
        except (ArchError, SmnasError) as e:
            bad.append(f"{path}:{number}: {e}")
            continue
        if str(arch) not in seen:
            seen.add(str(arch))
            archs.append(arch)
    return archs, bad


def structure_of(arch: Any) -> tuple[str, str, str, str]:
    from smnas_trt.space import family_name, head_name, neck_name

    return (str(arch.size), family_name(arch.backbone), neck_name(arch.neck), head_name(arch.head))


def sample_models(space: Any, n: int, seed: int = 0, max_tries: int = 2000) -> list[Any]:
    """`n` distinct architectures spread over every structural combination in turn (shuffled order),
    each with random module genes; a combination that random sampling misses gets its standard genes."""
    rng = random.Random(seed)
    structures = list(space.structures)
    rng.shuffle(structures)
    chosen: list[Any] = []
    seen: set[str] = set()
    attempts = 0
    while len(chosen) < n and attempts < n * 50:
        target = structures[attempts % len(structures)]
        attempts += 1
        wanted = (str(target[0]), *target[1:])
        arch = None
        for _ in range(max_tries):
            candidate = space.sample_arch(rng)
            if structure_of(candidate) == wanted and str(candidate) not in seen:
                arch = candidate
                break
        if arch is None:
            arch = space.structure_arch(*target)
            if str(arch) in seen:
                continue
        seen.add(str(arch))
        chosen.append(arch)
    return chosen


# Relative cost of the genes, for spreading the anchors over the space's latency range before anything is
# timed (only the order matters; measured latencies of demo-space models follow it roughly).
_FAMILY_COST = {"mobilenetv2": 0.4, "resnet18": 1.0, "resnet34": 1.8, "resnet50": 2.4, "resnext50": 2.8,
                "resnet101": 4.2, "resnext101": 5.0}
_HEAD_COST = {"retina": 1.1, "fcos": 1.0, "2fc": 1.6, "cascade2": 2.4, "cascade3": 3.0}


def choose_anchors(space: Any, n: int = DEFAULT_ANCHORS) -> list[str]:
    """`n` standard-gene structures of the space at evenly spaced ranks of a gene cost proxy, with every
    kind of head (one-stage, 2-FC, cascade) among them when the space has it."""
    structures = sorted(space.iter_structures(), key=lambda a: (_cost(a), str(a)))
    if len(structures) <= n:
        return [str(a) for a in structures]
    picks = [structures[round(i * (len(structures) - 1) / (n - 1))] for i in range(n)]
    for kind in ("one-stage", "2fc", "cascade"):
        if any(_kind(a) == kind for a in picks):
            continue
        of_kind = [a for a in structures if _kind(a) == kind and a not in picks]
        if of_kind:  # replace the pick nearest in cost that is of a kind already held twice
            cheapest = of_kind[len(of_kind) // 2]
            counts = {k: sum(_kind(p) == k for p in picks) for k in {_kind(p) for p in picks}}
            spare = [i for i, p in enumerate(picks) if counts[_kind(p)] > 1 and 0 < i < n - 1]
            if spare:
                j = min(spare, key=lambda i: abs(math.log(_cost(picks[i]) / _cost(cheapest))))
                picks[j] = cheapest
    return [str(a) for a in sorted(picks, key=_cost)]


def _kind(arch: Any) -> str:
    return "one-stage" if not arch.two_stage else ("2fc" if arch.head.kind == "2fc" else "cascade")


def _cost(arch: Any) -> float:
    from smnas_trt.space import family_name, head_name

    neck = 1.0 if arch.neck.kind == "none" else (1.6 if arch.neck.min_level == 2 else 1.2)
    return (arch.size.width * arch.size.height * _FAMILY_COST.get(family_name(arch.backbone), 2.0)
            * _HEAD_COST.get(head_name(arch.head), 1.5) * neck)


def stratified_sample(pieces: Sequence[Any], k: int, seed: int = 0) -> list[Any]:
    """At most `k` pieces, each kind kept in proportion to its share (at least one per kind)."""
    if len(pieces) <= k:
        return list(pieces)
    rng = random.Random(seed)
    by_kind: dict[str, list[Any]] = {}
    for p in pieces:
        by_kind.setdefault(p.kind, []).append(p)
    quotas = {kind: max(1, round(k * len(items) / len(pieces))) for kind, items in by_kind.items()}
    while sum(quotas.values()) > k and any(q > 1 for q in quotas.values()):
        biggest = max(quotas, key=lambda kind: quotas[kind])
        quotas[biggest] -= 1
    picked: list[Any] = []
    for kind, items in by_kind.items():
        picked.extend(rng.sample(items, min(quotas[kind], len(items))))
    return picked


def dedup_pieces(pieces: Iterable[Any]) -> list[Any]:
    out: dict[str, Any] = {}
    for p in pieces:
        out.setdefault(p.key, p)
    return list(out.values())


def piece_config(piece: Any) -> dict[str, Any]:
    """The JSON stored with a module row: the piece's name and shapes."""
    return {"name": piece.name, "input_shapes": [list(t.shape) for t in piece.inputs],
            "output_shapes": [list(s) for s in piece.output_shapes]}


def check_module_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(kinds))
    unknown = [k for k in out if k not in PIECE_KINDS]
    if unknown:
        raise ProfilingError(f"--modules: unknown kind {unknown[0]!r}; choose from {', '.join(PIECE_KINDS)}, "
                             "all or none")
    return out


def parse_module_kinds(text: str) -> tuple[str, ...]:
    """`none`, `all` or a comma list of piece kinds."""
    if text.strip() in ("", "none"):
        return ()
    if text.strip() == "all":
        return PIECE_KINDS
    return check_module_kinds(k.strip() for k in text.split(","))


# ------------------------------------------------------------------------------------------ the run
@dataclass
class ProfileReport:
    out: str
    modules_total: int = 0  # distinct module configurations of the chosen kinds (after dedup)
    modules_selected: int = 0  # after the stratified sample
    modules_timed: int = 0
    modules_skipped: int = 0  # already in the table (resume)
    models_timed: int = 0
    models_skipped: int = 0
    failures: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0
    split: TimeSplit = field(default_factory=TimeSplit)
    repeat_median: float | None = None
    repeat_p90: float | None = None
    repeat_n: int = 0
    drift: Any = None  # profiling.drift.Drift of a resume, against the table's reference
    cache_hits: int = 0
    cache_misses: int = 0
    cache_altered: int = 0
    exported_ahead: int = 0  # entries whose graphs an ExportAhead worker exported while others were timed


def profile_lut(
    *,
    space: Any,
    out: str | Path,
    spec: BackendSpec | None = None,
    models: int = 300,
    archs: Sequence[Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    module_kinds: Sequence[str] = DEFAULT_MODULE_KINDS,
    max_modules: int = DEFAULT_MAX_MODULES,
    all_structures: bool = True,
    end2end: bool = False,
    num_classes: int = 81,
    timing: TimingConfig | None = None,
    passes: int = 1,
    cache: OnnxCache | None = None,
    exporter: Exporter = DEFAULT_EXPORTER,
    anchors: int = DEFAULT_ANCHORS,
    add_anchors: bool = False,
    repeat_check: bool = True,
    on_plan: Callable[[int], None] | None = None,
    on_item: Callable[[str], None] | None = None,
    backend: Backend | None = None,
    export_ahead: bool | None = None,
) -> ProfileReport:
    """Profile a space into the table at `out` (see the module docstring for the flow).

    `module_kinds` chooses which module pieces to time (none by default, see DEFAULT_MODULE_KINDS);
    `all_structures=False` limits them to the pieces of the whole models being timed. `end2end` also
    times the full detectors with decoding and NMS (ORT backends). `anchors` is the number of anchor
    models a new table gets; `add_anchors` gives them to an older table that has none. `on_plan(total)`
    is called once with the number of entries to time, `on_item(label)` after each. `backend` is a built
    backend to time on instead of `spec.build()` (a Backend subclass of your own); it must be the one `spec`
    describes (name, precision, batch), which the table records. `export_ahead` exports the next entries in
    a worker process while this one times (`ExportAhead`); default: on for GPU devices, off on the CPU.
    """
    from smnas_trt.models.pieces import module_pieces

    out = Path(out)
    spec = spec or BackendSpec()
    timing = timing or TimingConfig()
    kinds = check_module_kinds(module_kinds)
    if passes < 1:  # everything is checked before the table file is created
        raise ProfilingError(f"--passes must be >= 1, got {passes}")
    def busy(holder: str) -> ProfilingError:  # one writer per table: a second profile-lut is refused
        return ProfilingError(f"{out} is being written by another process ({holder}); wait for it to finish or "
                              "stop it (reading it with `smnas lut show` works meanwhile)")

    with writer_lock(out, busy):
        if out.exists() and not resume:
            raise ProfilingError(f"{out} exists; pass --resume to continue it, or choose another --out")
        if resume and not out.is_file():
            raise ProfilingError(f"--resume: no table at {out}; leave out --resume to start one")
        if end2end and spec.backend not in ("ort-cpu", "ort-cuda"):
            raise ProfilingError(f"--end2end needs an ONNX Runtime backend (ort-cpu, ort-cuda), not {spec.backend}")
        if backend is None:
            backend = spec.build()  # a missing library or device is refused here, before any work
        elif (backend.name, backend.precision, backend.batch) != (spec.backend, spec.precision, spec.batch):
            raise ProfilingError(f"backend {backend.name} {backend.precision} batch {backend.batch} is not the one "
                                 f"the spec describes ({spec.describe()})")
        own_cache = cache is None
        cache = cache or OnnxCache(None)
        report = ProfileReport(out=str(out))
        if export_ahead and spec.backend == "torch":
            report.messages.append("--export-ahead: the torch backend times modules, it exports nothing; ignored")
        if export_ahead is None:
            export_ahead = spec.device_kind == "cuda" and spec.backend != "torch"
        t0 = time.perf_counter()
        model_archs = list(archs) if archs is not None else sample_models(space, models, seed)
        pieces: list[Any] = []
        if kinds:
            structures = list(space.iter_structures()) if all_structures else []
            # Every module configuration of the chosen kinds: standard genes of each structure (what the
            # structural stage proposes) plus the sampled models (which carry the genes the search visits).
            pieces = dedup_pieces(p for arch in [*structures, *model_archs]
                                  for p in module_pieces(arch, num_classes=num_classes) if p.kind in kinds)
            report.modules_total = len(pieces)
            if len(pieces) > max_modules:
                pieces = stratified_sample(pieces, max_modules, seed)
                report.messages.append(f"{report.modules_total} module configurations exceed --max-modules "
                                       f"{max_modules}: profiling a stratified sample of {len(pieces)} (by kind, "
                                       "at least one of each)")
            report.modules_selected = len(pieces)

        run_id = uuid.uuid4().hex[:12]
        try:
            with LatencyTable.create(out, backend.fingerprint()) as table:
                new = not table.counts()["models"] and not table.counts()["modules"] and not table.runs()
                if new:
                    table.set_meta(num_classes=str(num_classes), backend_spec=spec.model_dump_json())
                elif table.num_classes != num_classes:
                    raise ProfilingError(f"--num-classes {num_classes}: {out} was timed with {table.num_classes} "
                                         "classes; pass that, or profile into another table")
                anchor_archs = table.anchors()
                if not anchor_archs and (new or add_anchors) and anchors > 0:
                    anchor_archs = choose_anchors(space, anchors)
                    table.set_meta(anchors=_json(anchor_archs))
                elif not anchor_archs:
                    report.warnings.append(f"{out} has no anchor models, so drift between runs cannot be measured; "
                                           f"add them with: smnas profile-lut --resume --anchors --out {out}")
                table.start_run(run_id, "resume" if resume else "profile", passes)
                anchor_jobs = [model_job(_parse(a), num_classes, spec.batch, spec.precision, exporter)
                               for a in anchor_archs]
                reference = table.anchor_reference()
                if anchor_jobs:
                    start = time_anchors(backend, anchor_jobs, timing, cache, passes, report.split)
                    for arch, stats in start.items():
                        table.put_anchor_timing(run_id, arch, "start", stats)
                    if resume and reference:
                        report.drift = drift_against(reference, {a: s.median_ms for a, s in start.items()})
                        if report.drift is not None:
                            report.messages.append(report.drift.line("this resume"))
                            if report.drift.warn:
                                report.warnings.append(report.drift.warning("rows this resume adds"))
                timed_jobs = _time_entries(table, backend, pieces, model_archs, kinds, end2end, num_classes, spec,
                                           timing, cache, passes, exporter, report, on_plan, on_item, export_ahead)
                if anchor_jobs and not report.interrupted:
                    end = time_anchors(backend, anchor_jobs, timing, cache, passes, report.split)
                    for arch, stats in end.items():
                        table.put_anchor_timing(run_id, arch, "end", stats)
                if repeat_check and timed_jobs and not report.interrupted:
                    _repeat_check(table, backend, timed_jobs, timing, cache, passes, exporter, seed, report)
                table.finish_run(run_id, repeat_n=report.repeat_n or None, repeat_median=report.repeat_median,
                                 repeat_p90=report.repeat_p90, models_timed=report.models_timed)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            report.cache_hits, report.cache_misses, report.cache_altered = cache.hits, cache.misses, cache.altered
            if own_cache:
                cache.close()
        report.elapsed_s = time.perf_counter() - t0
        if report.cache_altered:
            report.warnings.append(f"{report.cache_altered} cached ONNX file(s) no longer matched their recorded "
                                   f"SHA-256 and were exported again ({cache.folder})")
        return report


def _time_entries(table: LatencyTable, backend: Backend, pieces: list[Any], model_archs: list[Any],
                  kinds: tuple[str, ...], end2end: bool, num_classes: int, spec: BackendSpec,
                  timing: TimingConfig, cache: OnnxCache, passes: int, exporter: Exporter, report: ProfileReport,
                  on_plan: Callable[[int], None] | None, on_item: Callable[[str], None] | None,
                  export_ahead: bool = False) -> list[tuple[TimingJob, float]]:
    """Time what the table lacks; returns (job, median) of each entry timed (for the repeat check)."""
    todo_pieces = [p for p in pieces if not table.has(p.key)]
    report.modules_skipped = len(pieces) - len(todo_pieces)
    scopes = ["network", *(["end2end"] if end2end else [])]
    todo_models = [(a, scope) for scope in scopes for a in model_archs if not table.has_model(a, scope)]
    report.models_skipped = len(model_archs) * len(scopes) - len(todo_models)
    if on_plan is not None:
        on_plan(len(todo_pieces) + len(todo_models))
    put: dict[str, Callable[[LatencyStats, dict[str, Any]], object]] = {}
    jobs: list[TimingJob] = []
    piece_names = set()
    for p in todo_pieces:
        job = piece_job(p, spec.batch, spec.precision, exporter)
        jobs.append(job)
        piece_names.add(job.name)
        put[job.name] = functools.partial(table.put_module, p.key, p.kind, piece_config(p))
    for a, scope in todo_models:
        job = model_job(a, num_classes, spec.batch, spec.precision, exporter, scope)
        jobs.append(job)
        put[job.name] = functools.partial(table.put_model, a, scope)
    timed: list[tuple[TimingJob, float]] = []
    ahead = ExportAhead(cache, exporter, backend) if export_ahead and backend.name != "torch" and jobs else None
    try:
        for result in time_jobs(backend, jobs, timing, cache, passes, exporter, ahead):
            report.split.add(result.split)
            if result.stats is None:
                report.failures.append(f"{result.job.label}: {result.error}")
            else:
                put[result.job.name](result.stats, result.extra)
                timed.append((result.job, result.stats.median_ms))
                if result.job.name in piece_names:
                    report.modules_timed += 1
                else:
                    report.models_timed += 1
            if on_item is not None:
                on_item(result.job.label)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if ahead is not None:
            ahead.close()
            report.exported_ahead = ahead.exported
            if ahead.broken:
                report.warnings.append(ahead.broken)
    return timed


def _repeat_check(table: LatencyTable, backend: Backend, timed: list[tuple[TimingJob, float]], timing: TimingConfig,
                  cache: OnnxCache, passes: int, exporter: Exporter, seed: int, report: ProfileReport) -> None:
    """Re-time a sample of this run's entries with fresh sessions: the table's own noise floor."""
    k = min(len(timed), max(REPEAT_MIN, round(REPEAT_SHARE * len(timed))))
    sample = random.Random(f"repeat:{seed}").sample(timed, k)
    first = {job.name: ms for job, ms in sample}
    diffs = []
    for result in time_jobs(backend, [job for job, _ in sample], timing, cache, passes, exporter):
        report.split.add(result.split)
        if result.stats is not None:
            diffs.append(abs(result.stats.median_ms - first[result.job.name]) / first[result.job.name])
    if not diffs:
        return
    report.repeat_n = len(diffs)
    report.repeat_median = statistics.median(diffs)
    report.repeat_p90 = _quantile(diffs, 0.9)
    report.messages.append(repeat_line(report.repeat_n, report.repeat_median, report.repeat_p90))
    if report.repeat_median > NOISE_WARN:
        report.warnings.append(noise_warning(report.repeat_median))


# ------------------------------------------------------------------------------------------ drift
def time_anchors(backend: Backend, jobs: Sequence[Any], timing: TimingConfig, cache: OnnxCache, passes: int = 1,
                 split: Any = None) -> dict[str, LatencyStats]:
    """Time the anchor models' jobs; returns arch -> stats (failures are left out).

    The first anchor is timed once more beforehand and that timing dropped: a process's first sessions run
    colder (thread pools, allocator arenas, CPU frequency), which would skew the comparison the anchors exist
    for."""
    out: dict[str, LatencyStats] = {}
    if jobs:
        for result in time_jobs(backend, jobs[:1], timing, cache, 1):
            if split is not None:
                split.add(result.split)
    for result in time_jobs(backend, jobs, timing, cache, passes):
        if split is not None:
            split.add(result.split)
        if result.stats is not None:
            out[result.job.name.split(":", 1)[1]] = result.stats
    return out


def measure_drift(backend: Backend, table_path: str | Path, timing: TimingConfig, cache: OnnxCache,
                  kind: str, passes: int = 1) -> tuple[Drift | None, str]:
    """Time the table's anchors now and record this run's drift in the table; returns (drift, one line).

    The line says what was measured, or why nothing could be (a table without anchors)."""
    from smnas_trt.space import parse

    with LatencyTable.open(table_path) as table:
        anchors, reference, num_classes = table.anchors(), table.anchor_reference(), table.num_classes
    if not anchors or not reference:
        return None, (f"drift cannot be measured: {table_path} has no anchor models; add them with "
                      f"smnas profile-lut --resume --anchors --out {table_path}")
    jobs = [model_job(parse(a), num_classes, backend.batch, backend.precision, "legacy") for a in anchors]
    now = time_anchors(backend, jobs, timing, cache, passes)
    drift = drift_against(reference, {a: s.median_ms for a, s in now.items()})
    run_id = uuid.uuid4().hex[:12]
    with LatencyTable.create(table_path, backend.fingerprint(), allow_foreign=True) as table:
        table.start_run(run_id, kind, passes)
        for arch, stats in now.items():
            table.put_anchor_timing(run_id, arch, "check", stats)
        table.finish_run(run_id, drift=None if drift is None else drift.ratio,
                         drift_spread=None if drift is None else drift.spread,
                         drift_anchors=None if drift is None else drift.n)
    if drift is None:
        return None, f"drift cannot be measured: none of the {len(anchors)} anchors of {table_path} timed here"
    return drift, drift.line()


def repeat_line(n: int, median: float, p90: float) -> str:
    return (f"repeat check: {n} entries timed again in fresh sessions differ by a median {100 * median:.1f}% "
            f"(p90 {100 * p90:.1f}%)")


def noise_warning(median: float) -> str:
    return (f"the table's repeat difference ({100 * median:.1f}% median) is above {100 * NOISE_WARN:.0f}%: a "
            "predictor cannot be more accurate than its table; profile with --threads 1 and --passes 3, on a "
            "quieter machine (nothing else running)")


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _parse(arch: str) -> Any:
    from smnas_trt.space import parse

    return parse(arch)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
