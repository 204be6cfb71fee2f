"""`smnas demo` (what `make demo` runs): the whole pipeline on the embedded demo data, sized for 2 CPU cores.

Steps, each reusing what an earlier (interrupted) demo left in OUT:

1. data      generate the demo dataset (reused when its marker matches the plan)
2. lut       profile a small latency table on ort-cpu (continued with resume; done marker at the end)
3. predictor fit the latency predictor on the table (reused when its folder is complete)
4. search    a small SM-NAS search (resumed from its run store)
5. deploy    deploy the Pareto front on ort-cpu, verified against PyTorch (models already deployed are kept)
6. predict   run one deployed model on a few validation images (detections JSON + drawn images)
7. report    Pareto plot and tables of the run

A step whose library piece is not available yet (ImportError / NotImplementedError) is skipped and
said so, and so are the steps that need its output. The report writer is passed in by the CLI (the
report layer sits above deploy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from smnas_trt.errors import SmnasError
from smnas_trt.fileio import atomic_write_json

DEMO_NUM_CLASSES = 11  # ten digits + background: the heads are timed at the size they are trained at
DONE_DIR = ".done"  # OUT/.done/<step>.json: completion markers with what the step made


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of every step. Measured on 2 idle cores (AMD EPYC): 4.3 min end to end (search 2 min).
    Two-stage candidates dominate training: 6 epochs on 600 images took over 5 min for one cascade
    at 160 px, which would put the demo near its 20-minute limit."""

    train_images: int = 600
    val_images: int = 120
    image_size: int = 160
    seed: int = 0
    threads: int = 2
    # Module pieces come from the timed models only (enumerating every structure of the space
    # builds ~200 detectors, minutes on 2 cores); whole-model timings are what the predictor fits.
    lut_models: int = 20
    lut_max_modules: int = 30
    lut_budget_s: float = 0.15
    lut_min_runs: int = 5
    # Overrides of the built-in `demo` search config (configs/search_demo.yaml).
    search: dict[str, Any] = field(default_factory=lambda: {
        "training.max_train_images": 400,
        "evaluation.max_images": 100,
        "structural.train": 4,
        "structural.epochs": 2,
        "modular.generations": 1,
        "modular.train": 3,
        "modular.epochs": 2,
        "latency.timing": {"warmup_runs": 3, "warmup_s": 0.05, "min_runs": 5, "budget_s": 0.2},
    })
    deploy_verify_images: int = 4
    predict_images: int = 3

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
    predictions: Path | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)


class _Skip(Exception):
    """A step cannot run (a piece is missing, or an earlier step was skipped)."""


ReportWriter = Callable[[Path], tuple[Path, Path]]  # run dir -> (report.md, pareto.png)


class Demo:
    def __init__(self, out: str | Path, plan: DemoPlan | None = None, console: Console | None = None,
                 report_writer: ReportWriter | None = None) -> None:
        self.out = Path(out)
        self.plan = plan or DemoPlan()
        self.console = console or Console()
        self.report_writer = report_writer
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
            ("search", "SM-NAS search (structural, then modular)", self.step_search),
            ("deploy", "deploy the Pareto front on ort-cpu", self.step_deploy),
            ("predict", "run a deployed model on validation images", self.step_predict),
            ("report", "write the report", self.step_report),
        ]
        for i, (name, title, fn) in enumerate(steps):
            self.console.rule(f"[bold]{i + 1}/{len(steps)} {title}", align="left")
            t0 = time.perf_counter()
            try:
                reused = fn()
            except (_Skip, ImportError, NotImplementedError) as e:
                reason = str(e) or f"{type(e).__name__} (not implemented yet)"
                self.result.skipped[name] = reason
                self.console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False, soft_wrap=True)
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
        import json

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
        from smnas_trt.profiling.profile import default_hooks, profile_lut
        from smnas_trt.profiling.timing import TimingConfig
        from smnas_trt.space import load_space

        if self._marked("lut") and self.lut.is_file():
            return True
        p = self.plan
        pieces, body, _ = default_hooks(num_classes=DEMO_NUM_CLASSES)
        timing = TimingConfig(warmup_runs=3, warmup_s=0.05, min_runs=p.lut_min_runs, max_runs=200,
                              budget_s=p.lut_budget_s)
        with self.console.status("profiling") as status:
            count = [0, 0]

            def plan_total(total: int) -> None:
                count[1] = total

            def item(label: str) -> None:
                count[0] += 1
                status.update(f"profiling {count[0]}/{count[1]}: {label[:70]}")

            report = profile_lut(space=load_space("demo"), out=self.lut, module_pieces=pieces, network_body=body,
                                 backend_name="ort-cpu", backend_opts={"threads": 1}, models=p.lut_models,
                                 seed=p.seed, resume=self.lut.exists(), max_modules=p.lut_max_modules,
                                 all_structures=False, timing=timing, on_plan=plan_total, on_item=item)
        if report.interrupted:
            raise KeyboardInterrupt
        for failure in report.failures[:5]:
            self.console.print(f"[yellow]failed[/] {failure}", highlight=False, soft_wrap=True)
        self.console.print(f"{self.lut}: {report.modules_timed} modules and {report.models_timed} models timed "
                           f"({report.modules_skipped + report.models_skipped} already there)", highlight=False)
        self._mark("lut", models=report.models_timed, modules=report.modules_timed)
        return False

    def search_config(self) -> Any:
        from smnas_trt.search import load_search_config

        overrides = {"data": str(self.data.resolve()), "latency.lut": str(self.lut.resolve()),
                     "latency.threads": 1, "latency.num_classes": DEMO_NUM_CLASSES, "threads": self.plan.threads,
                     "seed": self.plan.seed, **self.plan.search}
        if self._marked("predictor") and self.predictor.exists():
            overrides["latency.predictor"] = str(self.predictor.resolve())
        return load_search_config("demo", overrides)

    def step_predictor(self) -> bool:
        from smnas_trt.search import latency

        if not self._marked("lut"):
            raise _Skip("needs the latency table (step lut)")
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

        if not self._marked("lut"):
            raise _Skip("needs the latency table (step lut)")
        if self._marked("search") and is_run_dir(self.run_dir):
            return True
        resume = is_run_dir(self.run_dir)
        config = None if resume else self.search_config()
        result = run_search(config, self.run_dir, resume=resume, console=self.console)
        self.console.print(f"front: {len(result.front)} models, hypervolume {result.hypervolume:.4f}",
                           highlight=False)
        self._mark("search", front=[c.arch_id for c in result.front])
        return False

    def step_deploy(self) -> bool:
        from smnas_trt.deploy.console import StagePrinter, print_summary
        from smnas_trt.deploy.deployer import DeployOptions, deploy_models, targets_from_run
        from smnas_trt.deploy.manifest import read_manifest, write_index
        from smnas_trt.profiling.timing import TimingConfig

        if not self._marked("search"):
            raise _Skip("needs a finished search (step search)")
        targets = targets_from_run(self.run_dir)
        todo = []
        for t in targets:
            try:
                manifest = read_manifest(self.deployed / t.arch_id)
                if manifest["status"] == "ok" and manifest["source"]["checkpoint"] == str(Path(t.checkpoint).resolve()):
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
        result = deploy_models(todo, DeployOptions(out=self.deployed, backend="ort-cpu", overwrite=True, threads=1,
                                                   verify_images=self.plan.deploy_verify_images, timing=timing),
                               printer, printer.model)
        if len(todo) < len(targets):
            self.console.print(f"{len(targets) - len(todo)} model(s) kept from an earlier demo", highlight=False)
        print_summary(self.console, result)
        return False

    def step_predict(self) -> bool:
        from smnas_trt.deploy.manifest import read_manifest
        from smnas_trt.deploy.predict import predict_images

        ok = []
        for arch_id in self.result.deployed_models:
            try:
                if read_manifest(self.deployed / arch_id)["status"] == "ok":
                    ok.append(arch_id)
            except SmnasError:
                continue
        if not ok:
            raise _Skip("no deployed model passed verification (step deploy)")
        images = sorted((self.data / "val").glob("*.png"))[: self.plan.predict_images]
        result = predict_images(self.deployed / ok[-1], images, self.predictions, min_score=0.3,
                                threads=self.plan.threads)
        self.result.predictions = self.predictions
        self.console.print(f"{result.json_path}: {sum(result.counts)} detections on {len(images)} images with "
                           f"{ok[-1]} ({result.mean_ms:.0f} ms per image)", highlight=False)
        return False

    def step_report(self) -> bool:
        from smnas_trt.search import is_run_dir

        if self.report_writer is None:
            raise _Skip("no report writer given")
        if not is_run_dir(self.run_dir):
            raise _Skip("needs a search run (step search)")
        self.result.report_md, self.result.pareto_png = self.report_writer(self.run_dir)
        return False


def run_demo(out: str | Path = "demo_out", plan: DemoPlan | None = None, console: Console | None = None,
             report_writer: ReportWriter | None = None) -> DemoResult:
    """Run (or continue) the demo in `out`; see the module docstring for the steps."""
    return Demo(out, plan, console, report_writer).run()


def print_demo_summary(console: Console, result: DemoResult) -> None:
    console.rule("[bold]demo finished", align="left")
    console.print(f"{result.out}: {result.seconds / 60:.1f} min "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in result.step_seconds.items())})", highlight=False)
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
        console.print(f"  [yellow]skipped[/] {step}: {why}", highlight=False, soft_wrap=True)
