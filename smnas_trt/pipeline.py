"""`smnas demo` (what `make demo` runs): the whole pipeline on the embedded demo data, sized for 2 CPU cores.

It sits beside the CLI, above every layer it drives. Steps, each reusing what an earlier
(interrupted) demo left in OUT:

1. data      generate the demo dataset (reused when its marker matches the plan)
2. lut       profile a latency table on ort-cpu (continued with resume; done marker at the end)
3. predictor fit the latency predictor on the table (reused when its folder is complete)
4. search    the built-in demo search (`configs/search_demo.yaml`): structural then modular
             generations, each by successive halving, in worker processes side by side
5. deploy    deploy the Pareto front on ort-cpu, verified against PyTorch (models already deployed are kept)
6. predict   run the front's most accurate deployed model on validation images (one box per object) and
             score its boxes, beside the same with per-class NMS only
7. report    Pareto plot, AP per rung and tables of the run

A step that cannot run because an earlier one produced nothing to work on (no model within the
budget, none passed verification) is skipped and said so; any error stops the demo with its message.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from smnas_trt.errors import SmnasError
from smnas_trt.fileio import atomic_write_json

DEMO_NUM_CLASSES = 11  # ten digits + background: the heads are timed at the size they are trained at
DONE_DIR = ".done"  # OUT/.done/<step>.json: completion markers with what the step made


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of every step (the search itself is `configs/search_demo.yaml`, `search` overrides it)."""

    train_images: int = 2000
    val_images: int = 300
    image_size: int = 160  # the models see 128 px; digits rendered at 160 or 256 px train to the same AP
    seed: int = 0
    threads: int = 2  # torch threads of this process (deploy, predict); each training worker has its own
    lut_models: int = 30
    lut_budget_s: float = 0.15
    lut_min_runs: int = 5
    search: dict[str, Any] = field(default_factory=dict)  # dotted overrides of the built-in demo search config
    deploy_verify_images: int = 4
    predict_images: int = 30
    predict_min_score: float = 0.3
    # One box per digit (`smnas predict --agnostic-nms`): no two objects of the demo data overlap at IoU > 0.3,
    # so a second box on a digit is the classifier's runner-up guess. The per-class figure is printed beside it.
    predict_agnostic_nms: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class DemoResult:
    out: Path
    seconds: float
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # step -> why
    report_md: Path | None = None
    pareto_png: Path | None = None
    deployed: Path | None = None
    deployed_models: list[str] = field(default_factory=list)
    front: list[dict[str, Any]] = field(default_factory=list)  # front.json entries, fastest first
    predictions: Path | None = None
    prediction_check: Any = None  # deploy.predict.PredictionCheck of the predict step (what it drew)
    prediction_check_per_class: Any = None  # the same images with per-class NMS only (when it drew agnostic)
    step_seconds: dict[str, float] = field(default_factory=dict)


class _Skip(Exception):
    """A step has nothing to work on (an earlier step produced no model for it)."""


class Demo:
    def __init__(self, out: str | Path, plan: DemoPlan | None = None, console: Console | None = None) -> None:
        self.out = Path(out)
        self.plan = plan or DemoPlan()
        self.console = console or Console()
        self.result = DemoResult(self.out, 0.0)
        self.data = self.out / "data"
        self.lut = self.out / "lut.db"
        self.predictor = self.out / "predictor"
        self.run_dir = self.out / "run"
        self.deployed = self.out / "deployed"
        self.predictions = self.out / "predictions"

    # ------------------------------------------------------------------ driver
    def run(self) -> DemoResult:
        import torch

        torch.set_num_threads(self.plan.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        steps: list[tuple[str, str, Callable[[], bool]]] = [
            ("data", "generate the demo dataset", self.step_data),
            ("lut", "profile a latency table on ort-cpu", self.step_lut),
            ("predictor", "fit the latency predictor", self.step_predictor),
            ("search", "SM-NAS search (structural, then modular; successive halving)", self.step_search),
            ("deploy", "deploy the Pareto front on ort-cpu", self.step_deploy),
            ("predict", "run a deployed model on validation images", self.step_predict),
            ("report", "write the report", self.step_report),
        ]
        for i, (name, title, fn) in enumerate(steps):
            self.console.rule(f"[bold]{i + 1}/{len(steps)} {title}", align="left")
            t0 = time.perf_counter()
            try:
                reused = fn()
            except _Skip as e:
                self.result.skipped[name] = str(e)
                self.console.print(Text.assemble(("skipped", "yellow"), f" {name}: {e}"), highlight=False,
                                   soft_wrap=True)
                continue
            seconds = time.perf_counter() - t0
            self.result.step_seconds[name] = seconds
            (self.result.reused if reused else self.result.done).append(name)
            verb = "reused from an earlier demo" if reused else "done"
            self.console.print(f"[green]{name}[/] {verb} in {seconds:.0f} s", highlight=False)
        self.result.seconds = time.perf_counter() - start
        return self.result

    def _marker(self, step: str) -> Path:
        return self.out / DONE_DIR / f"{step}.json"

    def _mark(self, step: str, **info: Any) -> None:
        atomic_write_json(self._marker(step), {"step": step, "plan": self.plan.to_dict(), **info})

    def _marked(self, step: str) -> bool:
        path = self._marker(step)
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("plan") == self.plan.to_dict()
        except ValueError:
            return False

    # ------------------------------------------------------------------ steps
    def step_data(self) -> bool:
        from smnas_trt.data import generate_demo

        p = self.plan
        reused = (self.data / "demo.json").is_file()
        with self.console.status(f"writing {p.train_images} + {p.val_images} images to {self.data}"):
            generate_demo(self.data, n_train=p.train_images, n_val=p.val_images, size=p.image_size, seed=p.seed)
        self.console.print(f"{self.data}: {p.train_images} train / {p.val_images} val images, 10 digit classes",
                           highlight=False)
        return reused

    def step_lut(self) -> bool:
        from smnas_trt.profiling.cache import OnnxCache, default_onnx_cache
        from smnas_trt.profiling.profile import profile_lut
        from smnas_trt.profiling.timing import TimingConfig
        from smnas_trt.space import load_space

        if self._marked("lut") and self.lut.is_file():
            return True
        p = self.plan
        timing = TimingConfig(warmup_runs=3, warmup_s=0.05, min_runs=p.lut_min_runs, max_runs=200,
                              budget_s=p.lut_budget_s)
        config = self.search_config()
        space = load_space(config.space)
        with self.console.status("profiling") as status:
            count = [0, 0]

            def plan_total(total: int) -> None:
                count[1] = total

            def item(label: str) -> None:
                count[0] += 1
                status.update(f"profiling {count[0]}/{count[1]}: {label[:70]}")

            with OnnxCache(default_onnx_cache()) as cache:
                report = profile_lut(space=space, out=self.lut, spec=config.latency.spec(), models=p.lut_models,
                                     seed=p.seed, resume=self.lut.exists(), num_classes=DEMO_NUM_CLASSES,
                                     timing=timing, cache=cache, on_plan=plan_total, on_item=item)
        if report.interrupted:
            raise KeyboardInterrupt
        for line in [*report.failures[:5], *report.warnings]:
            self.console.print(Text(line, style="yellow"), highlight=False, soft_wrap=True)
        for message in report.messages:
            self.console.print(Text(message), highlight=False, soft_wrap=True)
        self.console.print(f"{self.lut}: {report.models_timed} models of space {space.name!r} timed "
                           f"({report.models_skipped} already there); {report.split.line(report.elapsed_s)}",
                           highlight=False)
        self._mark("lut", models=report.models_timed)
        return False

    def search_config(self) -> Any:
        from smnas_trt.search import load_search_config

        overrides = {"data": str(self.data.resolve()), "latency.lut": str(self.lut.resolve()),
                     "latency.num_classes": DEMO_NUM_CLASSES, "seed": self.plan.seed, **self.plan.search}
        if self._marked("predictor") and self.predictor.exists():
            overrides["latency.predictor"] = str(self.predictor.resolve())
        return load_search_config("demo", overrides)

    def step_predictor(self) -> bool:
        from smnas_trt.search import latency

        if self._marked("predictor") and self.predictor.exists():
            return True
        cfg = self.search_config().latency
        with self.console.status("fitting the latency predictor"):
            predictor = latency.fit_predictor(self.lut, cfg)
            predictor.save(self.predictor)
        self._mark("predictor")
        self.console.print(f"{self.predictor}: predictor fitted on {self.lut}", highlight=False)
        return False

    def step_search(self) -> bool:
        from smnas_trt.search import is_run_dir, run_search

        if self._marked("search") and is_run_dir(self.run_dir):
            reused = True
        else:
            resume = is_run_dir(self.run_dir)
            config = None if resume else self.search_config()
            result = run_search(config, self.run_dir, resume=resume, console=self.console)
            self.console.print(f"front: {len(result.front)} models, hypervolume {result.hypervolume:.4f}",
                               highlight=False)
            self._mark("search", front=[c.arch_id for c in result.front])
            reused = False
        self.result.front = self._front()
        return reused

    def _front(self) -> list[dict[str, Any]]:
        """The run's front.json entries, fastest first (none before the search has closed a generation)."""
        from smnas_trt.search import FRONT_FILE

        path = self.run_dir / FRONT_FILE
        return list(json.loads(path.read_text())["front"]) if path.is_file() else []

    def step_deploy(self) -> bool:
        from smnas_trt.deploy.console import StagePrinter, print_summary
        from smnas_trt.deploy.deployer import DeployOptions, deploy_models, targets_from_run
        from smnas_trt.deploy.manifest import read_manifest, write_index
        from smnas_trt.profiling.timing import TimingConfig

        self.result.front = self._front()
        if not self.result.front:
            raise _Skip("the search has no model on its front (none trained within the latency budget)")
        targets = targets_from_run(self.run_dir)
        todo = []
        for t in targets:
            try:
                manifest = read_manifest(self.deployed / t.arch_id)
                if manifest.status == "ok" and manifest.source.checkpoint == str(Path(t.checkpoint).resolve()):
                    continue  # deployed and verified by an earlier demo from the same checkpoint
            except SmnasError:
                pass
            todo.append(t)
        self.result.deployed = self.deployed
        self.result.deployed_models = [t.arch_id for t in targets]
        if not todo:
            write_index(self.deployed)
            return True
        printer = StagePrinter(self.console, len(todo))
        timing = TimingConfig(warmup_runs=3, warmup_s=0.05, min_runs=10, max_runs=200, budget_s=0.3)
        options = DeployOptions(out=self.deployed, spec=self.search_config().latency.spec(), overwrite=True,
                                verify_images=self.plan.deploy_verify_images, timing=timing)
        result = deploy_models(todo, options, printer, printer.model)
        if len(todo) < len(targets):
            self.console.print(f"{len(targets) - len(todo)} model(s) kept from an earlier demo", highlight=False)
        print_summary(self.console, result)
        return False

    def step_predict(self) -> bool:
        from smnas_trt.deploy.manifest import read_manifest
        from smnas_trt.deploy.predict import check_predictions, predict_images

        ok = []
        for entry in self.result.front:  # fastest first: the last one is the most accurate
            try:
                if read_manifest(self.deployed / entry["arch_id"]).status == "ok":
                    ok.append(entry["arch_id"])
            except SmnasError:
                continue
        if not ok:
            raise _Skip("no deployed model passed verification (step deploy)")
        images = sorted((self.data / "val").glob("*.png"))[: self.plan.predict_images]
        plan = self.plan
        result = predict_images(self.deployed / ok[-1], images, self.predictions, min_score=plan.predict_min_score,
                                threads=plan.threads, agnostic_nms=plan.predict_agnostic_nms)
        check = check_predictions(result, self.data, "val")
        self.result.predictions = self.predictions
        self.result.prediction_check = check
        how = "one box per object (--agnostic-nms)" if plan.predict_agnostic_nms else "per-class NMS"
        self.console.print(f"{ok[-1]} at min-score {plan.predict_min_score}, {how}: {check.summary()} "
                           f"({result.mean_ms:.0f} ms per image); drawn in {self.predictions}", highlight=False)
        if plan.predict_agnostic_nms:
            with tempfile.TemporaryDirectory() as tmp:
                per_class = check_predictions(predict_images(self.deployed / ok[-1], images, tmp,
                                                             min_score=plan.predict_min_score, threads=plan.threads),
                                              self.data, "val")
            self.result.prediction_check_per_class = per_class
            self.console.print(f"  the same with per-class NMS only: {per_class.summary()}", highlight=False)
        return False

    def step_report(self) -> bool:
        from smnas_trt.report import write_report
        from smnas_trt.search import is_run_dir

        if not is_run_dir(self.run_dir):
            raise _Skip("needs a search run (step search)")
        files = write_report(self.run_dir)
        self.result.report_md, self.result.pareto_png = files.report_md, files.pareto_png
        return False


def run_demo(out: str | Path = "demo_out", plan: DemoPlan | None = None, console: Console | None = None) -> DemoResult:
    """Run (or continue) the demo in `out`; see the module docstring for the steps."""
    return Demo(out, plan, console).run()


def front_table(front: list[dict[str, Any]]) -> Table:
    """The search's Pareto front as the demo prints it: fastest first."""
    table = Table(title="Pareto front (measured latency, AP on the validation split)")
    for column in ("id", "arch", "AP", "AP50", "ms", "rung", "epochs"):
        table.add_column(column, justify="left" if column in ("id", "arch") else "right",
                         overflow="fold" if column == "arch" else "ellipsis")
    for e in front:
        table.add_row(e["arch_id"], e["arch"], f"{e['ap']:.3f}", f"{e['ap50']:.3f}", f"{e['measured_ms']:.2f}",
                      "-" if e.get("rung") is None else str(e["rung"]), str(e.get("epochs") or "-"))
    return table


def print_demo_summary(console: Console, result: DemoResult) -> None:
    console.rule("[bold]demo finished", align="left")
    console.print(f"{result.out}: {result.seconds / 60:.1f} min "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in result.step_seconds.items())})", highlight=False)
    if result.front:
        console.print(front_table(result.front))
    if result.prediction_check is not None:
        console.print(f"  predictions: {result.prediction_check.summary()}", highlight=False)
    if result.prediction_check_per_class is not None:
        console.print(f"  (per-class NMS only: {result.prediction_check_per_class.summary()})", highlight=False)
    if result.report_md:
        console.print(f"  report:    {result.report_md}", highlight=False)
    if result.pareto_png:
        console.print(f"  plot:      {result.pareto_png}", highlight=False)
    if result.deployed and result.deployed_models:
        console.print(f"  deployed:  {result.deployed}/ ({len(result.deployed_models)} models; table "
                      f"{result.deployed / 'models.md'})", highlight=False)
        console.print(f"  run one:   smnas predict --model {result.deployed / result.deployed_models[-1]} "
                      f"{result.out / 'data' / 'val' / '000001.png'} --out {result.out / 'my_predictions'}",
                      highlight=False)
    if result.predictions:
        console.print(f"  predicted: {result.predictions}/ (detections.json and drawn images)", highlight=False)
    for step, why in result.skipped.items():
        console.print(Text.assemble("  ", ("skipped", "yellow"), f" {step}: {why}"), highlight=False, soft_wrap=True)
