"""The `smnas` command line: one Typer app; each command is a thin wrapper over a library function."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from smnas_trt.errors import DISK_FULL_ERRNOS, SmnasError, disk_full_line
from smnas_trt.profiling.export import DEFAULT_EXPORTER, EXPORTERS
from smnas_trt.profiling.profile import DEFAULT_MODULE_KINDS
from smnas_trt.profiling.spec import DEFAULT_THREADS

app = typer.Typer(
    name="smnas",
    help="Hardware-aware SM-NAS for object detectors: profile latency, search, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def print_error(console: Console, message: str) -> None:
    """`error: MESSAGE` on one line. The message quotes user input, so it is a Text, never parsed as rich
    markup or emoji codes (`[/x]` in an arch string raised MarkupError; `:smile:` became an emoji)."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: user errors print one line and exit 2, with no traceback."""
    try:
        app(standalone_mode=False)
    except SmnasError as e:
        print_error(err_console, str(e))
        sys.exit(2)
    except ValidationError as e:  # a typed config built from options: name the field, like any other input error
        from smnas_trt.space.config import pydantic_error_line

        print_error(err_console, pydantic_error_line(e))
        sys.exit(2)
    except OSError as e:  # no room to write (disk full, file size limit): one line too, never a traceback
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        print_error(err_console, disk_full_line(e))
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        code = getattr(e, "exit_code", None)
        if code is not None and hasattr(e, "show"):
            e.show()  # type: ignore[attr-defined]
            sys.exit(code)
        raise


# ---------------------------------------------------------------------------------------------- space
space_app = typer.Typer(help="Inspect search spaces and architectures.", no_args_is_help=True)
app.add_typer(space_app, name="space")


@space_app.command("sample")
def space_sample(
    space: str = typer.Option("demo", help="Space YAML path or built-in name (demo, paper, tiny)."),
    n: int = typer.Option(5, "-n", help="How many architectures."),
    seed: int = typer.Option(0, help="Random seed."),
    structures: bool = typer.Option(False, help="Sample structures only (standard module genes)."),
) -> None:
    """Print canonical strings of randomly sampled architectures.

    Example: smnas space sample --space configs/space_demo.yaml -n 5 --seed 0
    """
    import random

    from smnas_trt.space import load_space

    search_space = load_space(space)
    rng = random.Random(seed)
    for _ in range(n):
        arch = search_space.sample_structure(rng) if structures else search_space.sample_arch(rng)
        typer.echo(str(arch))


@space_app.command("describe")
def space_describe(
    arch: str = typer.Argument(..., help="Canonical architecture string."),
    num_classes: int = typer.Option(81, help="Classes the heads predict, background included (COCO: 81)."),
    batch: int = typer.Option(1, help="Batch size the counts are for."),
) -> None:
    """Modules of an architecture with output shapes, parameters, FLOPs and activation size at its input size.

    Example: smnas space describe 800x600/r50_64_111-2111-211111-211/fpn:P2-P5:256/rpn/cascade3
    """
    from rich.table import Table

    from smnas_trt.models.counts import count_flops
    from smnas_trt.models.graphs import body_input_shape
    from smnas_trt.space import parse

    parsed = parse(arch)
    counts = count_flops(parsed, batch, num_classes)
    shape_in = "x".join(map(str, body_input_shape(parsed, batch)))
    grid = Table(title=f"{parsed}  (id {parsed.id}, input {shape_in}, {num_classes} classes)")
    for column in ("module", "output shapes", "params (M)", "GFLOPs", "act. MB"):
        grid.add_column(column, justify="left" if column in ("module", "output shapes") else "right")
    for m in counts.modules:
        shapes = ", ".join("x".join(map(str, s)) for s in m.output_shapes)
        grid.add_row(m.name, shapes, f"{m.params / 1e6:.3f}", f"{m.flops / 1e9:.3f}", f"{m.activation_bytes / 1e6:.1f}")
    grid.add_section()
    grid.add_row("total", "", f"{counts.params / 1e6:.3f}", f"{counts.flops / 1e9:.3f}",
                 f"{counts.activation_bytes / 1e6:.1f}", style="bold")
    console.print(grid)
    roi_note = ""
    if parsed.two_stage:
        roi_note = f"; RoI stage on {counts.modules[-1].output_shapes[0][0] // batch} fixed proposals per image"
    console.print(f"FLOPs: 2 per multiply-add (torch FlopCounterMode){roi_note}; act. MB: fp32 outputs of every "
                  "layer.", highlight=False)


# ------------------------------------------------------------------------------------------------ lut
lut_app = typer.Typer(
    help="Inspect and export latency tables (LUT files written by profile-lut).", no_args_is_help=True
)
app.add_typer(lut_app, name="lut")


@lut_app.command("show")
def lut_show(file: str = typer.Argument(..., help="LUT SQLite file.")) -> None:
    """Summary of a latency table: device fingerprint, entry counts by kind/scope, latency ranges.

    Example: smnas lut show lut.db
    """
    from rich.table import Table

    from smnas_trt.profiling.lut import LatencyTable
    from smnas_trt.profiling.profile import NOISE_WARN, noise_warning, repeat_line

    with LatencyTable.open(file) as table:
        summary = table.summary()
        check = table.repeat_check()
        anchors = table.anchors()
        runs = table.runs()
    counts = summary["counts"]
    # Plain echo: long device lines must not be re-wrapped mid-word by rich.
    typer.echo(f"{summary['path']}\nmeasured on {summary['device']}")
    typer.echo(f"{counts['modules']} module entries, {counts['models']} model entries")
    if check is not None and check.repeat_n and check.repeat_median is not None and check.repeat_p90 is not None:
        typer.echo(repeat_line(check.repeat_n, check.repeat_median, check.repeat_p90))
        if check.repeat_median > NOISE_WARN:
            typer.echo(f"warning: {noise_warning(check.repeat_median)}")
    else:
        typer.echo("repeat check: none recorded (made before smnas recorded them); the table's noise is unknown")
    if anchors:
        drifts = [r for r in runs if r.drift is not None]
        last = f"; last drift measured {drifts[-1].drift:.3f}x ({drifts[-1].kind})" if drifts else ""
        typer.echo(f"anchors: {len(anchors)} models, timed by {len(runs)} run(s){last}")
    else:
        typer.echo(f"anchors: none, so drift between runs cannot be measured; add them with smnas profile-lut "
                   f"--resume --anchors --out {file}")
    grid = Table("entries", "kind / scope", "count", "min ms", "mean ms", "max ms")
    for entry, groups in (("module", summary["modules_by_kind"]), ("model", summary["models_by_scope"])):
        for name, g in groups.items():
            grid.add_row(
                entry, name, str(g["count"]), f"{g['min_ms']:.3f}", f"{g['mean_ms']:.3f}", f"{g['max_ms']:.3f}"
            )
    console.print(grid)


@lut_app.command("export")
def lut_export(
    file: str = typer.Argument(..., help="LUT SQLite file."),
    csv_out: str = typer.Option(..., "--csv", help="CSV file to write (one row per entry)."),
) -> None:
    """Write every module and model entry of a latency table to CSV.

    Example: smnas lut export lut.db --csv lut.csv
    """
    from smnas_trt.profiling.lut import LatencyTable

    with LatencyTable.open(file) as table:
        n = table.export_csv(csv_out)
    console.print(f"wrote {n} rows to {csv_out}")


@app.command("profile-lut")
def profile_lut_cmd(
    space: str = typer.Option("demo", help="Space YAML path or built-in name (demo, paper, tiny)."),
    backend: str = typer.Option("ort-cpu", help="ort-cpu, ort-cuda, torch or tensorrt."),
    out: str = typer.Option(..., "--out", "-o", help="LUT SQLite file to write."),
    models: int = typer.Option(300, help="Whole architectures to time, spread over all structural choices."),
    seed: int = typer.Option(0, help="Random seed for model and module sampling."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (GPU backends) or int8."),
    batch: int = typer.Option(1, help="Batch size."),
    threads: int = typer.Option(DEFAULT_THREADS, help="Intra-op threads of CPU backends (1: timings repeat on a "
                                                      "shared machine; what the search config uses)."),
    device: str = typer.Option(None, help="cpu, cuda or cuda:N (default: the backend's)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs/--no-cuda-graphs",
                                     help="torch backend on CUDA only: time CUDA graph replays."),
    archs: str = typer.Option(None, help="File of arch strings, one per line, instead of sampling --models."),
    resume: bool = typer.Option(False, help="Continue an existing table; entries already there are skipped."),
    modules: str = typer.Option(",".join(DEFAULT_MODULE_KINDS) or "none",
                                help="Module pieces to time as well: none, all, or a comma list of stem, stage, "
                                     "neck, head, rpn, roi (they add the LUT-sum baseline and features; the "
                                     "predictor's held-out accuracy does not need them)."),
    max_modules: int = typer.Option(2000, help="Above this many module configurations, time a stratified sample."),
    end2end: bool = typer.Option(False, help="Also time whole models end2end (decoding + NMS; ORT backends)."),
    num_classes: int = typer.Option(81, help="Classes the heads predict, background included (COCO: 81)."),
    budget_s: float = typer.Option(1.0, help="Timed-run budget per entry, seconds (after warm-up)."),
    min_runs: int = typer.Option(10, help="At least this many timed runs per entry."),
    passes: int = typer.Option(1, help="Time each entry this many times, seconds apart, and keep the median pass "
                                       "(3 rejects a burst of other work on a shared machine)."),
    anchors: bool = typer.Option(False, "--anchors", help="With --resume: give a table made before anchors existed "
                                                          "its anchor models (drift between runs)."),
    exporter: str = typer.Option(DEFAULT_EXPORTER, help="ONNX exporter: legacy (TorchScript, fast) or dynamo."),
    onnx_cache: str = typer.Option(None, help="Folder of exported graphs reused across runs (default: "
                                              "$SMNAS_CACHE/onnx or ~/.cache/smnas_trt/onnx)."),
    no_onnx_cache: bool = typer.Option(False, "--no-onnx-cache", help="Export into a temporary folder instead."),
    export_ahead: bool | None = typer.Option(None, "--export-ahead/--no-export-ahead",
                                             help="Export the next entries in a worker process while this one "
                                                  "times (default: on for GPU devices, off on the CPU, where a "
                                                  "second busy core would disturb the timing)."),
) -> None:
    """Export whole architectures (and module pieces) to ONNX, time them on a backend, store a latency table.

    Each run times the table's anchor models at its start and end (drift between runs), then re-times a
    sample of its entries (the table's noise floor, shown by `smnas lut show`).

    Example: smnas profile-lut --space configs/space_demo.yaml --backend ort-cpu --out lut.db --models 300
    (interrupted? run the same command with --resume)
    On a GPU: smnas profile-lut --space paper --backend torch --device cuda --cuda-graphs --out lut_cuda.db
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from smnas_trt.errors import ProfilingError
    from smnas_trt.profiling.cache import OnnxCache, default_onnx_cache
    from smnas_trt.profiling.profile import parse_module_kinds, profile_lut, read_arch_file
    from smnas_trt.profiling.spec import parse_backend_spec
    from smnas_trt.profiling.timing import TimingConfig
    from smnas_trt.space import load_space

    if exporter not in EXPORTERS:
        raise ProfilingError(f"--exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if anchors and not resume:
        raise ProfilingError("--anchors adds anchors to an existing table: use it with --resume (a new table gets "
                             "them anyway)")
    spec = parse_backend_spec({"backend": backend, "precision": precision, "batch": batch, "threads": threads,
                               "device": device, "cuda_graphs": cuda_graphs}, "profile-lut")
    kinds = parse_module_kinds(modules)
    search_space = load_space(space)
    arch_list = None
    if archs:
        arch_list, bad = read_arch_file(archs, search_space)
        for line in bad:
            err_console.print(Text.assemble(("skipped", "yellow"), " ", line), highlight=False, soft_wrap=True)
    timing = TimingConfig(min_runs=min_runs, max_runs=max(min_runs, 1000), budget_s=budget_s)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    with OnnxCache(None if no_onnx_cache else (onnx_cache or default_onnx_cache())) as cache, \
            Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("profiling", total=None)
        report = profile_lut(
            space=search_space, out=out, spec=spec, models=models, archs=arch_list, seed=seed, resume=resume,
            module_kinds=kinds, max_modules=max_modules, end2end=end2end, num_classes=num_classes, timing=timing,
            passes=passes, cache=cache, exporter=exporter, add_anchors=anchors,  # type: ignore[arg-type]
            export_ahead=export_ahead,
            on_plan=lambda total: progress.update(task, total=total),
            on_item=lambda label: progress.update(task, advance=1, description=label[:60]),
        )  # fmt: skip
    for message in report.messages:
        console.print(message, highlight=False)
    for failure in report.failures:
        err_console.print(Text.assemble(("failed", "red"), " ", str(failure)), highlight=False, soft_wrap=True)
    for warning in report.warnings:
        err_console.print(Text.assemble(("warning:", "yellow"), " ", warning), highlight=False, soft_wrap=True)
    console.print(
        f"{out}: {report.modules_timed} modules and {report.models_timed} models timed, "
        f"{report.modules_skipped + report.models_skipped} already there, {len(report.failures)} failed; "
        f"{report.split.line(report.elapsed_s)}; ONNX cache {report.cache_hits} hits, {report.cache_misses} exports"
        + (f" ({report.exported_ahead} entries exported ahead by a worker)" if report.exported_ahead else ""),
        highlight=False,
    )
    if report.interrupted:
        err_console.print("interrupted: every row timed so far is kept; rerun with --resume to finish")
        raise typer.Exit(130)


# ------------------------------------------------------------------------------------------ predictor
predictor_app = typer.Typer(help="Fit, evaluate and query the XGBoost latency predictor.", no_args_is_help=True)
app.add_typer(predictor_app, name="predictor")


@predictor_app.command("fit")
def predictor_fit_cmd(
    lut: str = typer.Option(..., "--lut", help="Latency table (SQLite) with whole-model timings."),
    out: str = typer.Option(..., "--out", "-o", help="Predictor folder to write (replaced if it exists)."),
    folds: int = typer.Option(5, help="K-fold cross-validation folds (metrics and interval calibration)."),
    scope: str = typer.Option("network", help="Timing scope to learn: network or end2end."),
    search: bool = typer.Option(False, help="Pick tree depth/rate/rounds from a small grid by CV MAPE."),
    seed: int = typer.Option(0, help="Seed for folds and trees."),
    interval: float = typer.Option(0.9, help="Coverage of the prediction interval."),
    no_lut_features: bool = typer.Option(False, "--no-lut-features", help="Leave out the LUT-sum features."),
    num_classes: int = typer.Option(81, help="Classes of the timed detectors (profile-lut's --num-classes)."),
    threads: int = typer.Option(2, help="XGBoost threads."),
) -> None:
    """Fit the predictor on a table's whole-model timings; print the CV report against both baselines.

    The table may have been measured on any device (fit offline what a GPU box measured); the predictor
    then serves that device only, and the command says which one. Writes OUT/predictor.json, OUT/mean.ubj,
    OUT/scale.ubj, OUT/modules.json and OUT/cv/ (predictions.csv, report.json, scatter.png).

    Example: smnas predictor fit --lut lut.db --out predictor/ --folds 5
    """
    from smnas_trt.predictors import FitConfig, device_note, fit_predictor
    from smnas_trt.predictors.report import format_report

    config = FitConfig(folds=folds, seed=seed, search=search, interval=interval, use_lut=not no_lut_features,
                       num_classes=num_classes, threads=threads)
    with console.status("fitting") as status:
        predictor, _, report = fit_predictor(lut, out, config, scope, progress=lambda step: status.update(step))
    typer.echo(device_note(predictor, lut))
    typer.echo(predictor.describe())
    typer.echo(format_report(report, report["title"]))
    typer.echo(f"wrote {out} (report, predictions and scatter plot in {out}/cv/)")


@predictor_app.command("eval")
def predictor_eval_cmd(
    predictor: str = typer.Option(..., "--predictor", "-p", help="Predictor folder (from predictor fit)."),
    lut: str = typer.Option(..., "--lut", help="Latency table with timings the predictor never saw."),
    out: str = typer.Option(None, "--out", "-o", help="Folder for predictions.csv, report.json, scatter.png."),
    scope: str = typer.Option(None, help="Timing scope (default: the predictor's)."),
    allow_foreign_device: bool = typer.Option(
        False, help="Score on a table measured on another device than the predictor's (refused otherwise)."),
) -> None:
    """Score a fitted predictor on another table's timings, side by side with both baselines.

    The table must come from the device the predictor was fitted for, unless --allow-foreign-device.
    Archs the predictor was trained on are skipped. Example: smnas predictor eval --predictor predictor/ --lut other.db
    """
    from pathlib import Path

    from smnas_trt.predictors import LatencyPredictor, evaluate_on_table
    from smnas_trt.predictors.report import format_report, read_predictions_csv

    model = LatencyPredictor.load(predictor)
    train_csv = Path(predictor) / "cv" / "predictions.csv"
    exclude = set(read_predictions_csv(train_csv)["arch"]) if train_csv.is_file() else set()
    report = evaluate_on_table(model, lut, out, scope, allow_foreign_device, exclude=exclude)
    typer.echo(format_report(report, report["title"]))
    if out:
        typer.echo(f"wrote {out}/predictions.csv, report.json, scatter.png")


@predictor_app.command("predict")
def predictor_predict_cmd(
    archs: list[str] = typer.Argument(..., help="Architecture strings."),
    predictor: str = typer.Option(..., "--predictor", "-p", help="Predictor folder (from predictor fit)."),
) -> None:
    """Predicted latency and its interval for each architecture.

    Example: smnas predictor predict --predictor predictor/ 128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/retina
    """
    from smnas_trt.predictors import LatencyPredictor

    model = LatencyPredictor.load(predictor)
    ms, lower, upper = model.predict_interval(archs)
    pct = int(model.interval * 100)
    for arch, m, lo, hi in zip(archs, ms, lower, upper, strict=True):
        typer.echo(f"{m:9.3f} ms  [{lo:.3f}, {hi:.3f}] ({pct}%)  {arch}")


# ---------------------------------------------------------------------------------------------- search
def _parse_sets(items: list[str]) -> dict[str, object]:
    """`--set latency.budget_ms=10` style overrides; values are read as YAML scalars."""
    import yaml

    from smnas_trt.errors import ConfigError

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. latency.budget_ms=10")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command("search")
def search_cmd(
    config: str = typer.Option(None, "--config", "-c", help="Search config YAML (or 'demo'). Optional with --resume."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory (created; never overwritten)."),
    resume: bool = typer.Option(False, help="Continue the run in --out where it stopped."),
    executor: str = typer.Option(None, help="Override executor.kind: inprocess or ray."),
    address: str = typer.Option(None, help="Ray cluster address (with --executor ray); local cluster if omitted."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field, e.g. --set latency.budget_ms=10."),
    quiet: bool = typer.Option(False, help="No live progress; only the final summary."),
) -> None:
    """SM-NAS search: structural then modular evolution, gated by the latency predictor.

    Example: smnas search --config configs/search_demo.yaml --out runs/demo
    (killed? smnas search --out runs/demo --resume)
    """
    from pathlib import Path

    from smnas_trt.search import load_search_config, run_search
    from smnas_trt.search.progress import generations_table

    overrides = _parse_sets(set_)
    if executor:
        overrides["executor.kind"] = executor
    if address:
        overrides["executor.address"] = address
    cfg = load_search_config(config, overrides) if config else None
    if cfg is None and overrides:
        # Overrides on a resumed run apply to its frozen config; anything but the executor is refused later.
        cfg = load_search_config(Path(out) / "config.yaml", overrides)
    result = run_search(cfg, out, resume=resume, console=console, show_progress=not quiet)
    console.print(generations_table(result.generations))
    console.print(f"front: {len(result.front)} models, hypervolume {result.hypervolume:.4f}; "
                  f"see {result.run_dir}/front.json, or run: smnas report --run {result.run_dir}")


@app.command("report")
def report_cmd(
    run: str = typer.Option(..., "--run", "-r", help="Run directory of `smnas search`."),
    out: str = typer.Option(None, help="Output folder (default: RUN/report)."),
) -> None:
    """Pareto plot (PNG), Markdown table of the front, predictor error per generation.

    Example: smnas report --run runs/demo
    """
    from smnas_trt.report import write_report

    files = write_report(run, out)
    console.print(f"wrote {files.report_md}, {files.front_md}, {files.pareto_png}, {files.rungs_png}, "
                  f"{files.predictor_png}")


# ------------------------------------------------------------------------------- data / train / eval
data_app = typer.Typer(help="Datasets: generate the embedded demo data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("demo")
def data_demo_cmd(
    out: str = typer.Option("data/demo", "--out", "-o", help="Folder to write (train/, val/, instances_*.json)."),
    train: int = typer.Option(2000, "--train", help="Training images."),
    val: int = typer.Option(300, "--val", help="Validation images."),
    size: int = typer.Option(256, help="Image side in pixels (square images)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder with other contents."),
) -> None:
    """Generate the demo dataset: digits on photo crops, 10 classes, COCO JSON. Needs no download.

    Example: smnas data demo --out data/demo --train 2000 --val 300 --size 256 --seed 0
    """
    from smnas_trt.data import generate_demo

    with console.status(f"writing {train} + {val} images to {out}"):
        path = generate_demo(out, n_train=train, n_val=val, size=size, seed=seed, overwrite=overwrite)
    console.print(f"{path}: {train} train and {val} val images ({size}x{size}), "
                  f"instances_train.json / instances_val.json", highlight=False)


@app.command("train")
def train_cmd(
    arch: str = typer.Option(..., help="Architecture string (see `smnas space sample`)."),
    data: str = typer.Option(..., help="Dataset folder (demo layout or COCO 2017 layout)."),
    epochs: int = typer.Option(12, help="Training epochs."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder: last.pt (each epoch), metrics.json, eval.json."),
    batch_size: int = typer.Option(16, help="Images per batch."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (after warmup)."),
    optimizer: str = typer.Option("adamw", help="adamw or sgd."),
    schedule: str = typer.Option("cosine", help="cosine or step (decay after linear warmup)."),
    warmup_iters: int = typer.Option(100, help="Linear warmup iterations."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (AMP is used on CUDA)."),
    threads: int = typer.Option(None, help="Torch CPU threads (default: torch's choice)."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    seed: int = typer.Option(0, help="Seed of weights, shuffling and flips."),
    eval_every: int = typer.Option(0, help="Evaluate on val every N epochs (0: only at the end)."),
    hflip: bool = typer.Option(None, "--hflip/--no-hflip",
                               help="Random horizontal flips (default: on, off for the demo digits)."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt."),
) -> None:
    """Train an architecture from scratch on a COCO-format dataset, then evaluate it on val.

    Example: smnas train --arch 128x128/r18_16_11-21-21-21/fpn:P3-P6:64/none/fcos:2x64 --data data/demo
    --epochs 6 --out runs/train1   (interrupted? add --resume)
    """
    from pathlib import Path

    from smnas_trt.training import TrainConfig, evaluate_checkpoint, train_arch

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,  # type: ignore[arg-type]
                      schedule=schedule, warmup_iters=warmup_iters, device=device,  # type: ignore[arg-type]
                      threads=threads, workers=workers, seed=seed, eval_every=eval_every, hflip=hflip)
    result = train_arch(arch, data, out, cfg, resume=resume)
    for h in result.history:
        m = h.get("metrics")
        console.print(f"epoch {h['epoch']}: loss {h['loss']:.4f}, {h['images_per_s']:.1f} img/s"
                      + (f", AP {m['AP']:.3f} AP50 {m['AP50']:.3f}" if m else ""), highlight=False)
    metrics = evaluate_checkpoint(result.checkpoint, data, split="val", out_json=Path(out) / "eval.json",
                                  device=device)
    console.print(_metrics_line(metrics) + f"  ({result.train_seconds / 60:.1f} min training; "
                  f"checkpoint {result.checkpoint})", highlight=False)


@app.command("eval")
def eval_cmd(
    checkpoint: str = typer.Option(..., help="Checkpoint written by `smnas train` (last.pt)."),
    data: str = typer.Option(..., help="Dataset folder (demo layout or COCO 2017 layout)."),
    split: str = typer.Option("val", help="Split to evaluate."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the metrics to this JSON file."),
    batch_size: int = typer.Option(8, help="Images per batch."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    max_images: int = typer.Option(None, help="Evaluate the first N images only."),
) -> None:
    """COCO bbox AP of a trained checkpoint (pycocotools COCOeval): AP, AP50, AP75, APs, APm, APl.

    Example: smnas eval --checkpoint runs/train1/last.pt --data data/demo --split val --out eval.json
    """
    from smnas_trt.training import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, data, split=split, out_json=out, batch_size=batch_size,
                                  device=device, max_images=max_images)
    console.print(_metrics_line(metrics), highlight=False)


def _metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())


# ---------------------------------------------------------------------------------------------- deploy
@app.command("deploy")
def deploy_cmd(
    run: str = typer.Option(None, "--run", "-r", help="Search run directory (the --out of smnas search)."),
    front: bool = typer.Option(False, "--front", help="Deploy the run's Pareto front (the default without --arch)."),
    arch: list[str] = typer.Option([], "--arch", help="Arch id (or unique prefix) from the run; repeatable."),
    checkpoint: str = typer.Option(None, help="Deploy one checkpoint of `smnas train` instead of a run."),
    data: str = typer.Option(None, help="Dataset for verification (default: the run's dataset)."),
    backend: str = typer.Option("ort-cpu", help="tensorrt, ort-cuda, ort-cpu or torch."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (tensorrt, ort-cuda, torch on cuda) or int8 (QDQ graphs "
                                               "calibrated on the dataset's training images: ort-cpu, ort-cuda, "
                                               "tensorrt)."),
    calibration_images: int = typer.Option(64, help="int8: training images the activation ranges come from."),
    calibration_method: str = typer.Option("minmax", help="int8: how activation ranges are set from those images: "
                                                          "minmax or percentile."),
    compare: str = typer.Option(None, help="Deploy once per precision, e.g. fp32,int8, into OUT/<precision>/ and "
                                           "write OUT/compare.md: size, deployed AP, ΔAP, latency side by side."),
    seed: int = typer.Option(0, help="int8: seed of the calibration images' draw."),
    out: str = typer.Option("deployed", "--out", "-o", help="Output folder: OUT/<arch id>/ per model, OUT/models.md."),
    overwrite: bool = typer.Option(False, help="Replace model folders that already exist in OUT."),
    threads: int = typer.Option(DEFAULT_THREADS, help="CPU intra-op threads it runs and is timed with (1: as the "
                                                      "latency table and the search timed it)."),
    device: str = typer.Option(None, help="cpu, cuda or cuda:N (default: the backend's)."),
    verify_images: int = typer.Option(8, help="Validation images compared against PyTorch."),
    quick: bool = typer.Option(False, help="Short timing (smoke runs; figures are noisier)."),
) -> None:
    """Export, build, verify against PyTorch and time the front of a search; write manifests and a table.

    Example: smnas deploy --run runs/demo --front --backend tensorrt --precision fp16 --out deployed/
    (one model: --arch 1a2b3c4d5e; exits 1 when a model fails verification)
    """
    from pathlib import Path

    from smnas_trt.deploy import DeployOptions, deploy_models, deploy_spec, target_from_checkpoint, targets_from_run
    from smnas_trt.deploy.compare import COMPARE_MD, SIDE_BY_SIDE_ROUNDS, compare_precisions, parse_precisions
    from smnas_trt.deploy.console import StagePrinter, print_summary
    from smnas_trt.errors import DeployError
    from smnas_trt.profiling.timing import TimingConfig

    spec = deploy_spec(backend, precision, threads, device)
    specs = parse_precisions(compare, backend, threads, device) if compare else None
    if specs and precision != "fp32":
        raise DeployError("--compare and --precision exclude each other: list the precisions in --compare")
    if (run is None) == (checkpoint is None):
        raise DeployError("give --run RUN (with --front or --arch ID) or --checkpoint CKPT --data DIR")
    if front and arch:
        raise DeployError("--front and --arch exclude each other")
    targets = targets_from_run(run, arch or None, data) if run else [target_from_checkpoint(checkpoint, data)]
    options = DeployOptions(out=Path(out), spec=spec, overwrite=overwrite, verify_images=verify_images,
                            timing=TimingConfig.quick() if quick else TimingConfig(),
                            calibration_images=calibration_images, calibration_method=calibration_method, seed=seed)
    printer = StagePrinter(console, len(targets))
    if specs:
        console.print(f"smnas deploy: {len(targets)} model(s) -> {out}/<precision> on "
                      f"{', '.join(s.describe() for s in specs)}", highlight=False)
        report = compare_precisions(targets, options, specs, printer, printer.model,
                                    rounds=3 if quick else SIDE_BY_SIDE_ROUNDS)
        console.print((Path(out) / COMPARE_MD).read_text(), highlight=False, markup=False)
        if any(r["status"] != "ok" for r in report["rows"]):
            raise SystemExit(1)
        return
    console.print(f"smnas deploy: {len(targets)} model(s) -> {out} on {spec.describe()}", highlight=False)
    result = deploy_models(targets, options, printer, printer.model)
    print_summary(console, result)
    if result.failed:
        raise SystemExit(1)


@app.command("predict")
def predict_cmd(
    images: list[str] = typer.Argument(..., help="Image files or folders of images."),
    model: str = typer.Option(..., "--model", "-m", help="A deployed model folder (OUT/<arch id> of smnas deploy)."),
    out: str = typer.Option("predictions", "--out", "-o", help="Folder for detections.json and the drawn images."),
    min_score: float = typer.Option(0.3, help="Write and draw detections at or above this score."),
    threads: int = typer.Option(None, help="CPU intra-op threads (default: those the model was deployed with)."),
    agnostic_nms: bool = typer.Option(False, "--agnostic-nms", help="One box per object: drop a box that a "
                                      "higher-scored box of another class overlaps (the model's NMS IoU). For "
                                      "objects that do not overlap, like the demo's digits."),
) -> None:
    """Detect objects with a deployed model; write detections (JSON) and images with boxes drawn.

    Example: smnas predict --model deployed/1a2b3c4d5e demo_out/data/val/000001.png --out predictions/
    """
    from smnas_trt.deploy.predict import predict_images

    result = predict_images(model, images, out, min_score=min_score, threads=threads, agnostic_nms=agnostic_nms,
                            on_image=lambda p, n: console.print(f"{p}: {n} detections", highlight=False))
    console.print(f"wrote {result.json_path} and {len(result.images)} image(s) in {result.out} "
                  f"({result.mean_ms:.1f} ms per image)", highlight=False)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("demo_out", "--out", "-o", help="Folder for everything the demo makes."),
) -> None:
    """The whole pipeline on generated demo data, sized for 2 CPU cores: data, latency table, predictor,
    search, deploy on ort-cpu, predictions, report. Rerun after an interruption: finished steps are reused.

    Example: smnas demo --out demo_out
    """
    from smnas_trt.pipeline import print_demo_summary, run_demo

    result = run_demo(out, console=console)
    print_demo_summary(console, result)
