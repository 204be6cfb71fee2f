"""From-scratch detector training: AdamW or SGD, linear warmup then cosine or step decay.

The model is any torchvision-contract detector (train mode: ``model(images, targets) -> losses``;
eval mode: ``model(images) -> [{boxes, scores, labels}]``). A checkpoint (model, optimizer,
scheduler, scaler, epoch, history, config, meta) is written atomically to ``OUT/last.pt`` after
every epoch, with the history in ``OUT/metrics.json``; ``resume=True`` continues from it. Each
epoch reseeds the shuffle/flip RNGs from ``seed + epoch``, so a resumed run sees the same batches
as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import pickle
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.optim.lr_scheduler import LambdaLR

from smnas_trt.data.coco import CocoDetection, build_loader
from smnas_trt.errors import ConfigError, SmnasError, StorageError, short_repr
from smnas_trt.fileio import atomic_path, atomic_write_json
from smnas_trt.training.evaluate import evaluate

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "smnas-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "last.pt"


class TrainingError(SmnasError):
    """Training diverged, or a checkpoint does not match the run."""


class TrainConfig(BaseModel):
    """Recipe for a from-scratch run. `input_size` is (width, height), normally the arch's size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1)
    input_size: tuple[int, int] = (128, 128)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    schedule: Literal["cosine", "step"] = "cosine"
    step_milestones: tuple[float, ...] = (0.67, 0.89)  # shares of all iterations (step schedule)
    step_gamma: float = Field(0.1, gt=0)
    warmup_iters: int = Field(100, ge=0)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)  # cosine floor, as a share of lr
    grad_clip: float = Field(10.0, ge=0)  # max gradient norm; 0 disables
    amp: bool = True  # mixed precision, used on CUDA only
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)  # torch intra-op threads on CPU; None leaves torch's choice
    workers: int = Field(0, ge=0)
    eval_every: int = Field(0, ge=0)  # evaluate on eval_split every N epochs (0: never during training)
    eval_split: str = "val"
    eval_max_images: int | None = Field(None, ge=1)
    train_split: str = "train"
    hflip: bool | None = None  # random horizontal flips; None: on, except for the demo digits (not mirror-symmetric)
    cache_images: bool | None = None  # keep decoded, resized images in memory; None: when under 2 GiB
    max_train_images: int | None = Field(None, ge=1)
    progress: bool = True

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"width and height must be >= 1, got {list(v)}")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a stored dict; fields this version no longer has are dropped (older checkpoints)."""
        return cls.model_validate({k: v for k, v in d.items() if k in cls.model_fields})


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class TrainResult:
    epochs: int  # epochs completed
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    train_seconds: float = 0.0  # optimisation time over all epochs (evaluation excluded)
    cpu_seconds: float = 0.0  # CPU time of the training process over all epochs (all its threads)
    metrics: dict[str, float] | None = None  # the latest evaluation, if any


def lr_factor(it: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at iteration `it` of `total`: linear warmup, then cosine or step."""
    warm = 1.0
    if it < cfg.warmup_iters:
        alpha = it / max(1, cfg.warmup_iters)
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.schedule == "cosine":
        progress = min(1.0, max(0.0, (it - cfg.warmup_iters) / max(1, total - cfg.warmup_iters)))
        decay = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = cfg.step_gamma ** sum(it >= m * total for m in cfg.step_milestones)
    return warm * decay


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norm weights and biases (1-d parameters): decaying them only hurts.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


CACHE_LIMIT_BYTES = 2 << 30


def _want_cache(cfg: TrainConfig, n_images: int) -> bool:
    if cfg.workers > 0:
        return False  # loader workers restart each epoch and would refill their own copies
    if cfg.cache_images is not None:
        return cfg.cache_images
    return n_images * cfg.input_size[0] * cfg.input_size[1] * 3 <= CACHE_LIMIT_BYTES


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train_detector` (tensors and plain Python only)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainingError(f"cannot read checkpoint {path}: it holds objects other than tensors and plain values "
                            "(not a checkpoint of smnas train, or damaged)") from None
    except Exception as e:  # torch raises many types for a damaged file, with messages of many lines
        raise TrainingError(f"cannot read checkpoint {path}: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not an smnas checkpoint")
    version = ckpt.get("version")
    if not _is_int(version) or version > CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: checkpoint version {short_repr(version)}, this smnas reads {CHECKPOINT_VERSION}")
    # What resume, evaluation and deploy read, checked here: a damaged file fails now, on one line.
    for key, kind in (("model", dict), ("optimizer", dict), ("scheduler", dict), ("scaler", dict), ("meta", dict),
                      ("config", dict), ("history", list)):
        if not isinstance(ckpt.get(key), kind):
            raise TrainingError(f"{path}: checkpoint field {key!r} is missing or damaged")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise TrainingError(f"{path}: the model weights are not all named tensors")
    for key in ("epoch", "iters_per_epoch", "total_iters"):
        if not (_is_int(ckpt.get(key)) and ckpt[key] >= 0):
            raise TrainingError(f"{path}: checkpoint field {key!r} is missing or damaged")
    if not all(isinstance(h, dict) and _is_number(h.get("seconds")) for h in ckpt["history"]):
        raise TrainingError(f"{path}: the training history is damaged")
    return ckpt


def first_line(e: BaseException, limit: int = 120) -> str:
    """The first non-blank line of an exception's message, without terminal colour codes, cut to `limit`."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(e).__name__


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as e:  # torch's zip writer turns a failed write() (disk full, EFBIG) into RuntimeError
        raise StorageError(f"{path}: cannot write the checkpoint ({first_line(e)}); disk full or file size "
                           f"limit? Any previous checkpoint there is kept") from None


def train_detector(
    model: torch.nn.Module,
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `model` on ``data_dir``'s train split; checkpoint every epoch to ``out_dir/last.pt``.

    `meta` (plain JSON-able values, e.g. ``{"arch": ..., "num_classes": ...}``) is stored in the
    checkpoint; ``num_categories`` and ``label_to_cat`` of the dataset are added to it. With
    `resume`, an existing checkpoint is loaded and training continues after its last epoch (a
    finished run returns at once). `on_epoch` receives each epoch's history record.

    `stop_after` ends the run after that many epochs (counted from the start, not from a resume)
    while the learning-rate schedule still spans `config.epochs`: successive halving trains a
    candidate rung by rung with exactly the updates of one straight run.
    """
    cfg = config or TrainConfig()
    if stop_after is not None and not 1 <= stop_after <= cfg.epochs:
        raise ConfigError(f"train config: stop_after must be in 1..epochs ({cfg.epochs}), got {stop_after}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train config: device {cfg.device!r} requested but CUDA is not available")
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)

    dataset = CocoDetection(data_dir, cfg.train_split, cfg.input_size, train=True, hflip=cfg.hflip,
                           max_images=cfg.max_train_images)
    dataset.cache = _want_cache(cfg, len(dataset))
    loader = build_loader(None, cfg.train_split, cfg.input_size, cfg.batch_size, train=True,
                          workers=cfg.workers, seed=cfg.seed, dataset=dataset)
    eval_set = None
    if cfg.eval_every:
        eval_set = CocoDetection(data_dir, cfg.eval_split, cfg.input_size, train=False,
                                 max_images=cfg.eval_max_images)
        eval_set.cache = _want_cache(cfg, len(eval_set))
    meta = dict(meta or {})
    meta.update(num_categories=dataset.num_categories, label_to_cat=dataset.label_to_cat,
                class_names=dataset.class_names, input_size=list(cfg.input_size))

    model.to(device)
    optimizer = build_optimizer(model, cfg)
    iters_per_epoch = len(loader)
    total_iters = iters_per_epoch * cfg.epochs
    scheduler = LambdaLR(optimizer, lambda it: lr_factor(it, total_iters, cfg))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("iters_per_epoch") != iters_per_epoch or ckpt.get("total_iters") != total_iters:
            raise TrainingError(f"{ckpt_path} was written by a run with another dataset size, batch size or "
                                f"epoch count ({ckpt.get('total_iters')} vs {total_iters} iterations)")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise TrainingError(f"cannot resume from {ckpt_path}: its state does not fit this run "
                                f"({first_line(e, 80)})") from None
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt["history"])
        log.info("resuming %s after epoch %d", ckpt_path, start_epoch)

    last_epoch = cfg.epochs if stop_after is None else stop_after
    train_seconds = sum(float(h["seconds"]) for h in history)
    progress = _Progress(cfg.progress, last_epoch * iters_per_epoch, start_epoch * iters_per_epoch)
    with progress:
        for epoch in range(start_epoch, last_epoch):
            # Per-epoch seeds: shuffle order and flips depend only on (seed, epoch).
            torch.manual_seed(cfg.seed + 1000 + epoch)
            assert loader.generator is not None
            loader.generator.manual_seed(cfg.seed + epoch)
            model.train()
            loss_sum: dict[str, float] = {}
            n_images = 0
            start = time.perf_counter()
            cpu_start = time.process_time()
            for images, targets in loader:
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    losses = model(images, targets)
                loss = sum(losses.values())
                assert isinstance(loss, torch.Tensor)
                if not torch.isfinite(loss):
                    parts = {k: round(float(v), 4) for k, v in losses.items()}
                    raise TrainingError(f"loss is not finite at epoch {epoch + 1} ({parts}); lower --lr or raise "
                                        f"warmup_iters")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                n_images += len(images)
                loss_value = float(loss.detach())
                for k, v in losses.items():
                    loss_sum[k] = loss_sum.get(k, 0.0) + float(v.detach()) * len(images)
                loss_sum["loss"] = loss_sum.get("loss", 0.0) + loss_value * len(images)
                elapsed = time.perf_counter() - start
                progress.advance(epoch, cfg.epochs, loss_value, n_images / max(elapsed, 1e-9))
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            train_seconds += seconds
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": loss_sum.get("loss", 0.0) / max(n_images, 1),
                "losses": {k: v / max(n_images, 1) for k, v in loss_sum.items() if k != "loss"},
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,  # this process, all threads: the load-independent cost
                "images_per_s": n_images / max(seconds, 1e-9),
                "train_seconds": train_seconds,
                "metrics": None,
            }
            if eval_set is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == last_epoch):
                record["metrics"] = evaluate(model, None, dataset=eval_set, batch_size=cfg.batch_size,
                                             device=device)
            history.append(record)
            _save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "iters_per_epoch": iters_per_epoch, "total_iters": total_iters,
                "history": history, "config": cfg.to_dict(), "meta": meta,
            })
            atomic_write_json(out / "metrics.json", {"history": history, "config": cfg.to_dict(), "meta": meta})
            log.info("epoch %d/%d loss %.4f %.1f img/s%s", epoch + 1, cfg.epochs, record["loss"],
                     record["images_per_s"], f" AP {record['metrics']['AP']:.3f}" if record["metrics"] else "")
            if on_epoch is not None:
                on_epoch(record)
    latest = next((h["metrics"] for h in reversed(history) if h.get("metrics")), None)
    cpu_seconds = sum(float(h.get("cpu_seconds", 0.0)) for h in history)
    return TrainResult(epochs=len(history), checkpoint=ckpt_path, history=history,
                       train_seconds=train_seconds, cpu_seconds=cpu_seconds, metrics=latest)


class _Progress:
    """A rich progress bar showing loss and images/s; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.enabled = enabled
        self.total = total
        self.completed = completed
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("training", total=self.total, completed=self.completed)
        return self

    def advance(self, epoch: int, epochs: int, loss: float, images_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1,
                             description=f"epoch {epoch + 1}/{epochs} loss {loss:.3f} {images_per_s:.1f} img/s")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
