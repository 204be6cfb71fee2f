"""Train and evaluate architectures by their canonical string: the builder plus the trainer.

This is what the search and the CLI call; the detector comes from
``smnas_trt.models.build_detector(arch, num_classes)`` with ``num_classes = K + 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import torch

from smnas_trt.data.coco import CocoDetection
from smnas_trt.errors import ArchError
from smnas_trt.training.evaluate import evaluate
from smnas_trt.training.trainer import TrainConfig, TrainingError, TrainResult, load_checkpoint, train_detector


def _parse(arch: Any) -> Any:
    from smnas_trt.space import parse

    return parse(arch) if isinstance(arch, str) else arch


def build_for_data(arch: Any, num_categories: int) -> torch.nn.Module:
    """The detector of `arch` (string or Arch) for a dataset of K = `num_categories` categories."""
    from smnas_trt.models import build_detector

    return build_detector(_parse(arch), num_classes=num_categories + 1)


def train_arch(arch: Any, data_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None,
               resume: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None,
               stop_after: int | None = None) -> TrainResult:
    """Build `arch` (string or Arch) for the dataset at `data_dir` and train it from scratch.

    The input size comes from the arch; the initial weights from ``config.seed``. The checkpoint's
    meta carries the arch string, so :func:`load_trained` / ``smnas eval`` can rebuild the model.
    """
    parsed = _parse(arch)
    base = config or TrainConfig()
    cfg = TrainConfig.from_dict({**base.to_dict(), "input_size": [parsed.size.width, parsed.size.height]})
    # Reading the train split once here only to count categories; train_detector loads it again.
    k = CocoDetection(data_dir, cfg.train_split, cfg.input_size, max_images=1).num_categories
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_for_data(parsed, k)
    return train_detector(model, data_dir, out_dir, cfg, resume=resume,
                          meta={"arch": str(parsed), "num_classes": k + 1}, on_epoch=on_epoch, stop_after=stop_after)


def load_trained(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the detector saved in `checkpoint` (it must carry ``meta.arch``); returns (model, meta)."""
    ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.get("meta") or {})
    if not isinstance(meta.get("arch"), str):
        raise TrainingError(f"{checkpoint} has no architecture string (trained outside `smnas train`)")
    k = meta.get("num_categories")
    labels, size = meta.get("label_to_cat"), meta.get("input_size")
    if not (_is_int(k) and k >= 1 and isinstance(labels, list) and len(labels) == k + 1
            and all(_is_int(c) for c in labels)):
        raise TrainingError(f"{checkpoint}: its meta lacks the dataset's categories (num_categories, label_to_cat)")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 1 for v in size)):
        raise TrainingError(f"{checkpoint}: its meta lacks the input size [width, height]")
    try:
        model = build_for_data(meta["arch"], k)
    except ArchError as e:
        raise TrainingError(f"{checkpoint}: stored architecture no longer parses: {e}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TrainingError(f"{checkpoint}: the stored weights do not fit {meta['arch']} "
                            f"({_detail(e)})") from None
    model.eval()
    return model, meta


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _detail(e: BaseException) -> str:
    """The first specific line of torch's load_state_dict report (its first line only names the class)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:120]


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "val",
                        out_json: str | Path | None = None, batch_size: int = 8, device: str = "cpu",
                        max_images: int | None = None) -> dict[str, float]:
    """COCO metrics of a checkpoint written by :func:`train_arch` on a split of `data_dir`."""
    model, meta = load_trained(checkpoint)
    model.to(device)
    size = tuple(meta["input_size"])
    dataset = CocoDetection(data_dir, split, (int(size[0]), int(size[1])), max_images=max_images)
    if dataset.label_to_cat != meta["label_to_cat"]:
        raise TrainingError(f"{checkpoint} was trained on categories {meta['label_to_cat'][1:]} but {data_dir} "
                            f"split '{split}' has {dataset.label_to_cat[1:]}")
    return evaluate(model, None, dataset=dataset, batch_size=batch_size, device=device, out_json=out_json)
