"""Search configs: YAML validated with pydantic; unknown fields are errors, each reported on one line.

Paths in the YAML are relative to the working directory; `load_search_config` resolves them to
absolute paths, and that resolved form is what a run directory freezes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from smnas_trt.errors import ConfigError
from smnas_trt.predictors.predictor import FitConfig
from smnas_trt.profiling.spec import DEFAULT_THREADS, BackendName, BackendSpec, Precision
from smnas_trt.profiling.timing import TimingConfig
from smnas_trt.space import MUTATIONS
from smnas_trt.space.config import CONFIG_DIR, pydantic_error_line, read_yaml
from smnas_trt.training.trainer import TrainConfig

# TrainConfig fields the search sets itself (per stage or per candidate), refused under `training:`.
TRAINING_OWNED = frozenset({"epochs", "input_size", "seed", "device", "threads", "progress"})

BUILTIN_SEARCH_CONFIGS = {"demo": CONFIG_DIR / "search_demo.yaml"}




def _no_nul(path: str) -> str:
    if "\x00" in path:
        raise ValueError("a path cannot contain a NUL byte")
    return path


PathText = Annotated[str, AfterValidator(_no_nul)]  # a file or folder path as written in the YAML

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyConfig(_Strict):
    """What "fast" means: a budget on one backend, and where the timings and predictor live.

    backend, precision, batch, threads, device and cuda_graphs are the fields of a `BackendSpec`
    (`spec()`), checked as one: the same spec `smnas profile-lut` builds from its options."""

    budget_ms: float = Field(gt=0, description="Latency budget in ms on `backend` at `scope`.")
    backend: BackendName = "ort-cpu"
    scope: Literal["network", "end2end"] = "network"
    precision: Precision = "fp32"
    batch: int = Field(1, ge=1)
    threads: int = Field(DEFAULT_THREADS, ge=1, description="Intra-op threads for CPU timing (the profiler's default).")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: the backend's).")
    cuda_graphs: bool = False
    passes: int = Field(1, ge=1, description="Time each candidate this many times and keep the median pass.")
    drift: bool = Field(True, description="Measure this run's drift on the table's anchors and correct the "
                        "predictions by it (off: predict the table's machine state, e.g. to replay a run exactly).")
    num_classes: int | None = Field(None, ge=2, description="Classes incl. background the heads are timed with; "
                                    "must match the table (default: the table's).")
    lut: PathText = Field(description="Latency table (SQLite) from `smnas profile-lut`; copied into the run.")
    predictor: PathText | None = Field(None, description="A fitted predictor folder; fitted from `lut` when omitted.")
    refit: bool = Field(True, description="Refit the predictor on the new timings after every generation.")
    predictor_fit: FitConfig = Field(default_factory=FitConfig, description="Settings for fitting the predictor "
                                     "here (rounds, folds, max_depth, ...).")
    timing: TimingConfig = Field(default_factory=TimingConfig, description="warmup_runs, warmup_s, min_runs, "
                                 "max_runs, budget_s (default: the profiler's).")
    allow_foreign_device: bool = False

    @model_validator(mode="after")
    def _spec(self) -> LatencyConfig:
        self.spec()  # one vocabulary for devices and what each backend can run
        return self

    def spec(self) -> BackendSpec:
        try:
            return BackendSpec(backend=self.backend, precision=self.precision, batch=self.batch, threads=self.threads,
                               device=self.device, cuda_graphs=self.cuda_graphs)
        except ValidationError as e:
            raise ValueError(pydantic_error_line(e).removeprefix("config: ")) from None


class StageConfig(_Strict):
    """Generations of one stage; each trains its candidates by Pareto-aware successive halving.

    A generation starts `train * eta**(len(rungs) - 1)` candidates at rung 0. After each rung the best
    1/eta by non-dominated rank on (measured latency, AP at that rung), crowding distance breaking ties,
    continue from their checkpoint to the next rung; the others stop there. The learning-rate schedule
    spans the top rung's epochs, so a candidate that reaches it has had exactly one straight training.
    `rungs: [N]` is a plain N-epoch training of `train` candidates.
    """

    generations: int = Field(1, ge=0, le=1000)
    train: int = Field(4, ge=1, description="Candidates trained to the top rung per generation.")
    rungs: tuple[int, ...] = Field((1,), description="Epochs reached at each rung, increasing, e.g. [1, 3, 9].")
    eta: int = Field(3, ge=2, description="1 of every eta candidates at a rung goes on to the next.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "epochs" in raw:
            raise ValueError(f"epochs: replaced by rungs; write rungs: [{raw['epochs']}] for a plain "
                             f"{raw['epochs']}-epoch training, or e.g. rungs: [1, 3, 9] for successive halving")
        return raw

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("list at least one rung (epochs), e.g. [6]")
        if v[0] < 1 or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"epochs per rung must be >= 1 and strictly increasing, e.g. [1, 3, 9]; got {list(v)}")
        return v

    @property
    def epochs(self) -> int:
        """Epochs of a candidate that reaches the top rung (the length of the learning-rate schedule)."""
        return self.rungs[-1]

    def starts(self) -> int:
        """Candidates started at rung 0 of each generation."""
        return self.train * self.eta ** (len(self.rungs) - 1)

    def promoted_to(self, rung: int) -> int:
        """How many candidates of a generation train at `rung` (at most)."""
        return self.train * self.eta ** (len(self.rungs) - 1 - rung)


class ModularStageConfig(StageConfig):
    population: int = Field(6, ge=1, description="Parents kept by non-dominated sorting + crowding distance.")
    mutation_rates: dict[str, float] = Field(default_factory=dict, description="Relative rate per mutation operator.")

    @field_validator("mutation_rates")
    @classmethod
    def _known_ops(cls, v: dict[str, float]) -> dict[str, float]:
        for op, rate in v.items():
            if op not in MUTATIONS:
                raise ValueError(f"unknown operator {op!r}; allowed: {', '.join(MUTATIONS)}")
            if rate < 0:
                raise ValueError(f"{op}: rate must be >= 0, got {rate}")
        if v and not any(r > 0 for r in v.values()) and len(v) == len(MUTATIONS):
            raise ValueError("at least one operator needs a positive rate")
        return v


class GateConfig(_Strict):
    """The predictor gate: screen many children, train the most promising few."""

    enabled: bool = True
    oversampling: int = Field(50, ge=1, description="Children screened per candidate trained.")
    safety: float = Field(0.0, ge=0, description="Reject when predicted + safety * uncertainty > budget "
                          "(uncertainty: half-width of the predictor's 90% interval; raise it when confirm is off).")
    confirm: bool = Field(True, description="Time each kept candidate on the real backend before training it.")
    max_confirm_factor: float = Field(2.0, ge=1, description="At most this many timings per training slot.")


class EvaluationConfig(_Strict):
    split: str = "val"
    max_images: int | None = Field(None, ge=1, description="Score on the first N images only (quick runs).")
    batch_size: int = Field(8, ge=1)


class ExecutorConfig(_Strict):
    """Where trainings run. `local`: worker processes on this machine, several at once (the default);
    `inprocess`: one after another in the search's own process (debugging); `ray`: one task per
    training on a Ray cluster. Latency timing never overlaps training: it runs between rounds of training."""

    kind: Literal["local", "inprocess", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address; a local cluster is started when omitted.")
    max_parallel: int | None = Field(None, ge=1, description="Trainings at once (default local: CPU cores / "
                                     "threads_per_task, or one per GPU; ray: the cluster's slots).")
    threads_per_task: int | None = Field(None, ge=1, description="Torch threads of each training (default 1 on CPU: "
                                         "one-thread trainings side by side do 2.8x the work of one 2-thread "
                                         "training on 2 cores; with GPUs, the cores per GPU). Ray reserves this "
                                         "many CPUs per task.")
    gpus_per_task: float | Literal["auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "cpus_per_task" in raw:
            raise ValueError("cpus_per_task: renamed threads_per_task (torch threads, and the CPUs Ray reserves)")
        return raw


class SearchConfig(_Strict):
    name: str = "search"
    space: PathText = Field("demo", description="Space YAML path or built-in name (demo, paper).")
    data: PathText = Field(description="COCO-format dataset folder (e.g. from `smnas data demo`).")
    seed: int = 0
    strategy: Literal["smnas", "random"] = Field(
        "smnas", description="smnas: structural then modular evolution; random: uniform archs every generation.")
    latency: LatencyConfig
    training: TrainConfig = Field(default_factory=TrainConfig, description="The trainer's recipe (lr, batch_size, "
                                  "...); epochs, input size, seed and device are set per stage and candidate.")
    evaluation: EvaluationConfig = EvaluationConfig.model_validate({})
    structural: StageConfig = StageConfig.model_validate({})
    modular: ModularStageConfig = ModularStageConfig.model_validate({})
    gate: GateConfig = GateConfig.model_validate({})
    executor: ExecutorConfig = ExecutorConfig.model_validate({})
    device: str = Field("auto", description="Training device: auto (cuda if the worker has a GPU), cpu, cuda:0.")
    max_train_cpu_s: float | None = Field(None, gt=0, description="Start no new generation once trainings have "
                                          "used this many CPU-seconds (all workers together).")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "threads" in raw:
            raise ValueError("threads: moved to executor.threads_per_task")
        return raw

    @field_serializer("training")
    def _training_recipe(self, v: TrainConfig) -> dict[str, Any]:
        """The whole recipe the run trains with, but the fields each stage and candidate set themselves."""
        return v.model_dump(mode="json", exclude=set(TRAINING_OWNED))

    @field_validator("training")
    @classmethod
    def _training_fields(cls, v: TrainConfig) -> TrainConfig:
        owned = sorted(v.model_fields_set & TRAINING_OWNED)
        if owned:
            raise ValueError(f"{owned[0]} is set by the search (per stage or per candidate), not here")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> SearchConfig:
        if self.structural.generations + self.modular.generations == 0:
            raise ValueError("structural.generations + modular.generations must be at least 1")
        if self.strategy == "smnas" and self.modular.generations and not self.structural.generations:
            raise ValueError("modular.generations needs parents: set structural.generations >= 1")
        return self

    # ------------------------------------------------------------------ helpers
    def frozen_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def identity_dict(self) -> dict[str, Any]:
        """The fields that define a run's results: everything but where it executes."""
        d = self.frozen_dict()
        d.pop("executor")
        return d

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the identity fields: what makes two runs the same run."""
        return hashlib.sha256(json.dumps(self.identity_dict(), sort_keys=True).encode()).hexdigest()

    def with_executor(self, executor: ExecutorConfig) -> SearchConfig:
        return self.model_copy(update={"executor": executor})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.frozen_dict(), sort_keys=False)

    def stage_plan(self) -> list[str]:
        """The stage of every generation, in order."""
        if self.strategy == "random":
            return ["random"] * (self.structural.generations + self.modular.generations)
        return ["structural"] * self.structural.generations + ["modular"] * self.modular.generations

    def stage(self, stage: str) -> StageConfig:
        """The settings of a stage; random generations use the structural stage's."""
        return self.modular if stage == "modular" else self.structural


def _resolve(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path fields absolute so a frozen config means the same files from any directory."""
    out = dict(raw)

    def fix(value: Any) -> Any:
        if not (isinstance(value, str) and value):
            return value
        try:
            return str((base / value).resolve())
        except (ValueError, OSError):  # a NUL byte, a loop of links: the field check below names it
            return value

    if "data" in out:
        out["data"] = fix(out["data"])
    space = out.get("space")
    if isinstance(space, str) and (space.endswith((".yaml", ".yml")) or "/" in space):
        out["space"] = fix(space)
    lat = out.get("latency")
    if isinstance(lat, dict):
        lat = dict(lat)
        for key in ("lut", "predictor"):
            if lat.get(key):
                lat[key] = fix(lat[key])
        out["latency"] = lat
    return out


def parse_search_config(raw: Any, source: str = "config", base: Path | None = None) -> SearchConfig:
    """Validate a mapping (e.g. loaded YAML); raise ConfigError with one line naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        return SearchConfig.model_validate(_resolve(raw, base or Path.cwd()))
    except ValidationError as e:
        raise ConfigError(f"{source}: {pydantic_error_line(e, SearchConfig)}") from None


def load_search_config(path_or_name: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Load a search config from YAML (or the built-in `demo`), apply dotted overrides, validate."""
    path = BUILTIN_SEARCH_CONFIGS.get(str(path_or_name), Path(path_or_name))
    if not path.is_file():
        raise ConfigError(f"config: no such file {str(path)!r}; give a YAML path or one of: "
                          f"{', '.join(BUILTIN_SEARCH_CONFIGS)}")
    raw = read_yaml(path)
    if isinstance(raw, dict) and overrides:
        raw = apply_overrides(raw, overrides)
    return parse_search_config(raw, str(path))


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`{"latency.budget_ms": 20}` style overrides on a nested mapping (copied, not mutated)."""
    out = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {key} is not a section")
        node[leaf] = value
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two frozen configs."""
    diffs: list[str] = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_differences(va, vb, name + ".")
        elif va != vb:
            diffs.append(name)
    return diffs
