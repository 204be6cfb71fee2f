"""`smnas profile-lut`: time module pieces and whole architectures of a space into a latency table.

Flow: enumerate every module configuration the space produces at its input sizes (deduplicated by
shape key; a stratified sample by kind above `max_modules`), sample `models` whole architectures
spread over all structural combinations (or read them from an arch file), then for each item not
yet in the table: export to ONNX (static shapes), load it on the backend, time it, commit the row.

Each row commits on its own, so Ctrl-C (KeyboardInterrupt) stops between items and keeps every
row timed so far; `resume=True` continues an existing table, skipping what it already holds.

Where the pieces come from: `smnas_trt.models` provides `module_pieces(arch)` (module, example
inputs, kind, shape key) and `network_body(model)` (the raw-tensor body). Both are passed in as
functions here so the loop does not depend on how the builder splits a detector.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smnas_trt.errors import ArchError, ProfilingError, SmnasError
from smnas_trt.profiling.backends import Backend, Runner, get_backend
from smnas_trt.profiling.export import Exporter, export_onnx
from smnas_trt.profiling.lut import LatencyTable
from smnas_trt.profiling.timing import LatencyStats, TimingConfig

DEFAULT_MAX_MODULES = 2000


class Piece(Protocol):
    """A module configuration to time: what `smnas_trt.models.module_pieces` returns (ModulePiece)."""

    kind: str  # stem, stage, neck, head, rpn, roi
    key: str  # shape key: identical key <=> identical computation at identical input shapes
    module: Any  # torch.nn.Module
    inputs: tuple[Any, ...]  # example input tensors (batch 1)


def piece_config(piece: Piece) -> dict[str, Any]:
    """The JSON stored with a module row: the piece's own `config` if it has one, plus its shapes."""
    config = dict(getattr(piece, "config", None) or {})
    config.setdefault("name", getattr(piece, "name", piece.kind))
    config.setdefault("input_shapes", [list(t.shape) for t in piece.inputs])
    outputs = getattr(piece, "output_shapes", None)
    if outputs:
        config.setdefault("output_shapes", [list(s) for s in outputs])
    return config


@dataclass(frozen=True, slots=True)
class ModelItem:
    arch: Any  # smnas_trt.space.Arch
    scope: str = "network"


@dataclass
class ProfileReport:
    out: str
    modules_total: int = 0  # distinct module configurations of the space (after dedup)
    modules_selected: int = 0  # after the stratified sample
    modules_timed: int = 0
    modules_skipped: int = 0  # already in the table (resume)
    models_timed: int = 0
    models_skipped: int = 0
    failures: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------------------- selection
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


def stratified_sample(pieces: Sequence[Piece], k: int, seed: int = 0) -> list[Piece]:
    """At most `k` pieces, each kind kept in proportion to its share (at least one per kind)."""
    if len(pieces) <= k:
        return list(pieces)
    rng = random.Random(seed)
    by_kind: dict[str, list[Piece]] = {}
    for p in pieces:
        by_kind.setdefault(p.kind, []).append(p)
    quotas = {kind: max(1, round(k * len(items) / len(pieces))) for kind, items in by_kind.items()}
    # Trim rounding overshoot from the largest strata first.
    while sum(quotas.values()) > k and any(q > 1 for q in quotas.values()):
        biggest = max(quotas, key=lambda kind: quotas[kind])
        quotas[biggest] -= 1
    picked: list[Piece] = []
    for kind, items in by_kind.items():
        picked.extend(rng.sample(items, min(quotas[kind], len(items))))
    return picked


def dedup_pieces(pieces: Iterable[Piece]) -> list[Piece]:
    out: dict[str, Piece] = {}
    for p in pieces:
        out.setdefault(p.key, p)
    return list(out.values())


# ------------------------------------------------------------------------------------------ timing
def _onnx_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:16] + ".onnx"


def batched(inputs: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """Example inputs (batch 1) repeated to `batch` along dim 0."""
    if batch == 1:
        return inputs
    return tuple(t.repeat(batch, *([1] * (t.dim() - 1))) for t in inputs)


def prepare_module(
    backend: Backend, module: Any, inputs: tuple[Any, ...], work_dir: Path, name: str, exporter: Exporter = "dynamo"
) -> tuple[Callable[[], Runner], dict[str, Any]]:
    """(a loader of a fresh runner, extra row fields) for one module: torch runs it as is, other
    backends through a checked ONNX export written once to `work_dir`."""
    inputs = batched(inputs, backend.batch)
    if backend.name == "torch":
        return (lambda: backend.load_module(module, inputs)), {"exporter": "none"}
    path = work_dir / _onnx_name(f"{exporter}:{name}")
    info = export_onnx(module, inputs, path, exporter=exporter, precision=backend.precision)
    return (lambda: backend.load(path)), {"exporter": info.exporter, "opset": info.opset, "onnx_sha256": info.sha256}


def median_pass(passes: Sequence[LatencyStats]) -> LatencyStats:
    """The pass whose median is the median of the pass medians (the lower one for an even count).

    A disturbance (another process, a frequency dip) that spans less than one pass slows the runs
    of that pass only; this choice discards it, where pooling every run would shift the median.
    """
    return sorted(passes, key=lambda s: s.median_ms)[(len(passes) - 1) // 2]


def time_module(
    backend: Backend,
    module: Any,
    inputs: tuple[Any, ...],
    work_dir: Path,
    name: str,
    timing: TimingConfig,
    exporter: Exporter = "dynamo",
) -> tuple[LatencyStats, dict[str, Any]]:
    """Time one module on `backend`: directly for torch, through a checked ONNX export otherwise."""
    load, extra = prepare_module(backend, module, inputs, work_dir, name, exporter)
    with load() as runner:
        return runner.time(timing), extra


@dataclass(frozen=True, slots=True)
class TimingJob:
    """One entry to time: `name` is unique within a run (it names the ONNX file); `build` returns
    (module, example inputs) and is called only when the job's turn comes."""

    name: str
    build: Callable[[], tuple[Any, tuple[Any, ...]]]
    exporter: Exporter = "dynamo"
    label: str = ""  # for progress and failure lines


@dataclass(frozen=True, slots=True)
class JobResult:
    job: TimingJob
    stats: LatencyStats | None  # None when the job failed
    extra: dict[str, Any]  # row fields: exporter, opset, ONNX hash, pass medians
    error: str = ""  # one line, when it failed


PASS_CHUNK = 20  # jobs exported together and then timed pass after pass (bounds the ONNX files kept)


def time_jobs(
    backend: Backend,
    jobs: Iterable[TimingJob],
    timing: TimingConfig,
    work_dir: Path,
    passes: int = 1,
    keep_onnx: bool = False,
) -> Iterator[JobResult]:
    """Time each job and yield its result as soon as it is done; a failing job is reported, not raised.

    With `passes` > 1 the jobs go in chunks of PASS_CHUNK: each chunk is exported once, then timed
    `passes` times over (a fresh runner each time, so the passes of one job are seconds apart), and each
    job keeps its `median_pass`; `extra["pass_medians_ms"]` records every pass. ONNX files are deleted
    once their chunk is timed, unless `keep_onnx`.
    """
    if passes < 1:
        raise ProfilingError(f"passes must be >= 1, got {passes}")
    pending = iter(jobs)
    while chunk := list(itertools.islice(pending, 1 if passes == 1 else PASS_CHUNK)):
        loaders: dict[str, Callable[[], Runner]] = {}
        extras: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for job in chunk:
            try:
                module, inputs = job.build()
                loaders[job.name], extras[job.name] = prepare_module(
                    backend, module, inputs, work_dir, job.name, job.exporter
                )
            except Exception as e:  # one bad entry must not end a long run; it is reported
                errors[job.name] = _one_line(e)
        runs: dict[str, list[LatencyStats]] = {name: [] for name in loaders}
        for _ in range(passes):
            for name, load in loaders.items():
                if name in errors:
                    continue
                try:
                    with load() as runner:
                        runs[name].append(runner.time(timing))
                except Exception as e:
                    errors[name] = _one_line(e)
        for job in chunk:
            if job.name in errors:
                yield JobResult(job, None, {}, errors[job.name])
                continue
            extra = extras[job.name]
            if passes > 1:
                extra["pass_medians_ms"] = [round(s.median_ms, 6) for s in runs[job.name]]
            yield JobResult(job, median_pass(runs[job.name]), extra)
        if not keep_onnx:
            for job in chunk:
                (work_dir / _onnx_name(f"{job.exporter}:{job.name}")).unlink(missing_ok=True)


ProgressFn = Callable[[str], None]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, SmnasError) else f"{type(e).__name__}: {text}"[:300]


def _fixed(module: Any, inputs: tuple[Any, ...]) -> Callable[[], tuple[Any, tuple[Any, ...]]]:
    return lambda: (module, inputs)


def _put_module(table: LatencyTable, piece: Piece, stats: LatencyStats, extra: dict[str, Any]) -> None:
    table.put_module(piece.key, piece.kind, piece_config(piece), stats, extra)


def profile_lut(
    *,
    space: Any,
    out: str | Path,
    module_pieces: Callable[[Any], Iterable[Piece]] | None,
    network_body: Callable[[Any], tuple[Any, tuple[Any, ...]]] | None,
    end2end: Callable[[Any], tuple[Any, tuple[Any, ...]]] | None = None,
    backend_name: str = "ort-cpu",
    backend_opts: dict[str, Any] | None = None,
    models: int = 300,
    archs: Sequence[Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    max_modules: int = DEFAULT_MAX_MODULES,
    all_structures: bool = True,
    timing: TimingConfig | None = None,
    passes: int = 1,
    work_dir: str | Path | None = None,
    on_plan: Callable[[int], None] | None = None,
    on_item: ProgressFn | None = None,
) -> ProfileReport:
    """Profile a space into the table at `out`. See the module docstring for the flow.

    `module_pieces(arch)` yields the pieces of one arch; `network_body(arch)` returns (body module,
    example inputs); `end2end(arch)` likewise for the full detector (exported with the legacy
    exporter, `end2end` scope). Any may be None to skip that part. `on_plan(total)` is called once with the
    number of items to time, `on_item(label)` after each. `all_structures=False` limits module
    pieces to those of the whole models being timed (benchmarks, quick checks). `passes` > 1 times
    every entry that many times, chunk by chunk, and keeps the median pass (see `time_jobs`).
    """
    out = Path(out)
    if passes < 1:  # checked before the table file is created
        raise ProfilingError(f"passes must be >= 1, got {passes}")
    if out.exists() and not resume:
        raise ProfilingError(f"{out} exists; pass --resume to continue it, or choose another --out")
    timing = timing or TimingConfig()
    backend = get_backend(backend_name, **(backend_opts or {}))
    report = ProfileReport(out=str(out))
    t0 = time.perf_counter()

    model_archs = list(archs) if archs is not None else sample_models(space, models, seed)
    pieces: list[Piece] = []
    if module_pieces is not None:
        structures = list(space.iter_structures()) if all_structures else []
        # Every module configuration the space produces: standard genes of each structure plus the
        # sampled whole models (which carry the module genes the search will visit).
        pieces = dedup_pieces(p for arch in [*structures, *model_archs] for p in module_pieces(arch))
        report.modules_total = len(pieces)
        if len(pieces) > max_modules:
            pieces = stratified_sample(pieces, max_modules, seed)
            report.messages.append(
                f"{report.modules_total} module configurations exceed --max-modules {max_modules}: "
                f"profiling a stratified sample of {len(pieces)} (by kind, at least one of each)"
            )
        report.modules_selected = len(pieces)

    with LatencyTable.create(out, backend.fingerprint()) as table, tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(work_dir) if work_dir is not None else Path(tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        todo_pieces = [p for p in pieces if not table.has(p.key)]
        report.modules_skipped = len(pieces) - len(todo_pieces)
        hooks = [(scope, fn) for scope, fn in (("network", network_body), ("end2end", end2end)) if fn is not None]
        todo_models = [(a, scope, fn) for scope, fn in hooks for a in model_archs if not table.has_model(a, scope)]
        report.models_skipped = len(model_archs) * len(hooks) - len(todo_models)
        if on_plan is not None:
            on_plan(len(todo_pieces) + len(todo_models))
        # Each job's name is its table key; `put` stores its row once timed.
        put: dict[str, Callable[[LatencyStats, dict[str, Any]], object]] = {}
        jobs: list[TimingJob] = []
        piece_keys = {p.key for p in todo_pieces}
        for p in todo_pieces:
            jobs.append(TimingJob(p.key, _fixed(p.module, p.inputs), label=f"module {p.kind} {p.key}"))
            put[p.key] = functools.partial(_put_module, table, p)
        for a, scope, build in todo_models:
            name = f"{scope}:{a}"
            exporter: Exporter = "dynamo" if scope == "network" else "legacy"
            jobs.append(TimingJob(name, functools.partial(build, a), exporter, label=f"model {a} ({scope})"))
            put[name] = functools.partial(table.put_model, a, scope)
        try:
            for result in time_jobs(backend, jobs, timing, onnx_dir, passes, keep_onnx=work_dir is not None):
                if result.stats is None:
                    report.failures.append(f"{result.job.label}: {result.error}")
                else:
                    put[result.job.name](result.stats, result.extra)
                    if result.job.name in piece_keys:
                        report.modules_timed += 1
                    else:
                        report.models_timed += 1
                if on_item is not None:
                    on_item(result.job.label)
        except KeyboardInterrupt:
            report.interrupted = True
    report.elapsed_s = time.perf_counter() - t0
    return report


def default_hooks(
    num_classes: int = 81,
) -> tuple[Callable[[Any], Iterable[Piece]], Callable[[Any], Any], Callable[[Any], Any]]:
    """(module_pieces, network_body, end2end) for real detectors built by `smnas_trt.models`."""
    import torch

    from smnas_trt.models import build_detector
    from smnas_trt.models.body import body_input_shape, module_pieces, network_body

    def pieces_of(arch: Any) -> list[Any]:
        return module_pieces(arch, num_classes=num_classes)

    def body_of(arch: Any) -> tuple[Any, tuple[Any, ...]]:
        body = network_body(build_detector(arch, num_classes), arch)
        return body, (torch.rand(body_input_shape(arch)),)

    def end2end_of(arch: Any) -> tuple[Any, tuple[Any, ...]]:
        from smnas_trt.profiling.export import End2End

        detector = build_detector(arch, num_classes)
        return End2End(detector), (torch.rand(3, arch.size.height, arch.size.width),)

    return pieces_of, body_of, end2end_of
