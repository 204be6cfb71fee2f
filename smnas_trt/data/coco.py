"""COCO-format detection data: layout resolution, checked annotation loading, dataset and loader.

Resizing is a PLAIN resize (no letterbox, aspect ratio not kept) of every image to the
architecture's input size ``(width, height)``; boxes are scaled by the same factors and
:func:`to_original_boxes` maps predictions back to original image coordinates for COCO evaluation.
Training adds a random horizontal flip, except on the demo digits, which are not mirror-symmetric.

Labels are contiguous ``1..K`` for the K categories sorted by id; 0 is background (torchvision's
convention), so detectors are built with ``num_classes = K + 1``.

Annotation problems: a truncated/invalid JSON, an entry of the wrong shape (an id that is not an
integer, a bbox that is not four numbers), an annotation pointing at a missing image id, a
category outside the list, a missing image file or a size mismatch raise :class:`DataError` with
one line naming the file and id. Unusable boxes are dropped and counted per kind (negative width
or height, non-finite, entirely outside the image, zero-area); boxes partly outside the image are
clipped to it and counted as ``clipped``. The counts are returned by :func:`load_annotations`, kept
in ``dataset.annotation_counts`` and written to one log line. A split with no images, or no usable
box left, is refused (never trained or scored to an AP of 0). Crowd boxes are left out of training
targets but stay in the evaluation ground truth, where COCOeval ignores matches to them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from smnas_trt.data.demo import is_demo_dataset
from smnas_trt.errors import DataError

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)
Target = dict[str, Any]


@dataclass(frozen=True)
class SplitFiles:
    images_dir: Path
    ann_file: Path


def _layouts(root: Path, split: str) -> list[SplitFiles]:
    return [
        SplitFiles(root / split, root / f"instances_{split}.json"),  # smnas demo layout
        SplitFiles(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"),  # COCO 2017
        SplitFiles(root / split, root / "annotations" / f"instances_{split}.json"),
    ]


def resolve_split(data_dir: str | Path, split: str) -> SplitFiles:
    """Find the images folder and instances JSON of `split` under `data_dir`.

    Accepted layouts, tried in order: ``DIR/{split}/ + DIR/instances_{split}.json`` (the demo data),
    ``DIR/{split}2017/ + DIR/annotations/instances_{split}2017.json`` (COCO 2017) and
    ``DIR/{split}/ + DIR/annotations/instances_{split}.json``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    for files in _layouts(root, split):
        if files.ann_file.exists():
            if not files.images_dir.is_dir():
                raise DataError(f"images folder missing for split '{split}': {files.images_dir} (annotations: "
                                f"{files.ann_file})")
            return files
    tried = ", ".join(str(f.ann_file.relative_to(root)) for f in _layouts(root, split))
    raise DataError(f"no annotations for split '{split}' in {root} (looked for {tried})")


def _read_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.exists():
        raise DataError(f"annotation file missing: {ann_file}")
    try:
        data = json.loads(ann_file.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"truncated or invalid JSON in {ann_file}: {e.msg} at line {e.lineno}") from None
    except UnicodeDecodeError:
        raise DataError(f"annotation file is not UTF-8 JSON: {ann_file}") from None
    except (ValueError, RecursionError) as e:  # a number of 4300+ digits, nesting too deep for the parser
        raise DataError(f"invalid JSON in {ann_file}: {(str(e).splitlines() or [type(e).__name__])[0][:80]}") \
            from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {ann_file} does not hold a COCO object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {ann_file} lacks a '{key}' list")
    return data


# Kinds of dropped boxes, in the order they are tested, with how messages name them.
BOX_PROBLEMS: dict[str, str] = {
    "non_finite": "non-finite",
    "negative_size": "with negative width or height",
    "zero_area": "zero-area (under one pixel wide or high)",
    "outside_image": "entirely outside the image",
}
CLIPPED = "clipped"  # partly outside the image: kept, clipped to it
CROWD = "crowd_in_training"  # crowd boxes: kept for evaluation, left out of training targets


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _check_box(bbox: list[float], width: float, height: float) -> tuple[str | None, list[float]]:
    """(the problem that drops the box, or None; the box clipped to the image) for an xywh box of numbers."""
    if not all(_finite(v) for v in bbox):
        return "non_finite", bbox
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        return "negative_size", bbox
    if w < 1 or h < 1:
        return "zero_area", bbox
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return "outside_image", bbox
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        return CLIPPED, [x0, y0, x1 - x0, y1 - y0]
    return None, bbox


def describe_counts(counts: Counter[str]) -> str:
    """`412 with negative width or height, 3 non-finite` (dropped kinds only, in BOX_PROBLEMS order)."""
    return ", ".join(f"{counts[k]} {name}" for k, name in BOX_PROBLEMS.items() if counts[k])


def _images(ann_file: Path, entries: list[Any]) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for img in entries:
        ok = isinstance(img, dict) and _is_int(img.get("id"))
        ok = ok and isinstance(img.get("file_name"), str) and bool(img["file_name"]) and "\0" not in img["file_name"]
        ok = ok and all(_is_number(img.get(k)) and _finite(img[k]) and img[k] >= 1 and float(img[k]).is_integer()
                        for k in ("width", "height"))
        if not ok:
            raise DataError(f"{ann_file}: image entry {_show(img)} needs an integer id, a file_name and integer "
                            "width and height >= 1")
        if img["id"] in images:
            raise DataError(f"{ann_file}: image id {img['id']} appears twice in 'images'")
        images[img["id"]] = img
    if not images:
        raise DataError(f"{ann_file}: no images (the 'images' list is empty)")
    return images


def _categories(ann_file: Path, entries: list[Any]) -> list[int]:
    ids: list[int] = []
    for cat in entries:
        if not (isinstance(cat, dict) and _is_int(cat.get("id"))):
            raise DataError(f"{ann_file}: category entry {_show(cat)} needs an integer id")
        if cat["id"] in ids:
            raise DataError(f"{ann_file}: category id {cat['id']} appears twice in 'categories'")
        ids.append(cat["id"])
    if not ids:
        raise DataError(f"{ann_file}: the 'categories' list is empty")
    return sorted(ids)


def load_annotations(ann_file: str | Path) -> tuple[COCO, Counter[str]]:
    """Load and check a COCO instances file; returns the cleaned ground truth and the box counts.

    Counts: the dropped boxes per kind of BOX_PROBLEMS, ``clipped`` (kept, clipped to the image) and
    ``crowd_in_training``. Raises DataError for an inconsistent file, and for one with no images or
    no usable (non-crowd) box left, naming the file and the counts.
    """
    ann_file = Path(ann_file)
    data = _read_json(ann_file)
    images = _images(ann_file, data["images"])
    cat_ids = _categories(ann_file, data["categories"])
    cat_set = set(cat_ids)
    counts: Counter[str] = Counter()
    seen: set[int] = set()
    kept = []
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise DataError(f"{ann_file}: annotation entry {_show(ann)} is not an object")
        ann_id, image_id, category_id = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        if not _is_int(ann_id):
            raise DataError(f"{ann_file}: annotation {_show(ann)} needs an integer id")
        if ann_id in seen:
            raise DataError(f"{ann_file}: annotation id {ann_id} appears twice")
        seen.add(ann_id)
        if not _is_int(image_id) or image_id not in images:
            raise DataError(f"{ann_file}: annotation {ann_id} points at image id {_show(image_id)}, "
                            "which is not in 'images'")
        if not _is_int(category_id) or category_id not in cat_set:
            raise DataError(f"{ann_file}: annotation {ann_id} has category_id {_show(category_id)}, "
                            f"not in the categories {cat_ids[:20]}{'...' if len(cat_ids) > 20 else ''}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DataError(f"{ann_file}: annotation {ann_id} has bbox {_show(bbox)}; expected [x, y, width, height]")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise DataError(f"{ann_file}: annotation {ann_id} has iscrowd {_show(crowd)}; expected 0 or 1")
        area = ann.get("area")
        if area is not None and not (_is_number(area) and _finite(area) and area >= 0):
            raise DataError(f"{ann_file}: annotation {ann_id} has area {_show(area)}; expected a number >= 0")
        img = images[image_id]
        problem, box = _check_box(bbox, float(img["width"]), float(img["height"]))
        if problem in BOX_PROBLEMS:
            counts[problem] += 1
            continue
        if problem == CLIPPED:
            counts[CLIPPED] += 1
        counts[CROWD] += int(crowd)
        kept.append({**ann, "bbox": box, "iscrowd": int(crowd),
                     "area": float(box[2] * box[3]) if area is None else area})
    dropped = describe_counts(counts)
    if not any(not a["iscrowd"] for a in kept):
        why = dropped or ("the file has no annotations" if not data["annotations"] else "")
        if counts[CROWD]:
            why += f"{', ' if why else ''}{counts[CROWD]} crowd (not trained on)"
        raise DataError(f"{ann_file}: no usable box: {why}")
    if dropped or counts[CLIPPED]:
        log.warning("%s: %s boxes skipped (%s), %d clipped to the image", ann_file,
                    sum(counts[k] for k in BOX_PROBLEMS), dropped or "none", counts[CLIPPED])
    data = dict(data, annotations=kept)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco, counts


def to_original_boxes(boxes: torch.Tensor, input_size: Size, orig_size: Size) -> torch.Tensor:
    """Map xyxy boxes from the resized input back to the original (width, height), clipped."""
    sx = orig_size[0] / input_size[0]
    sy = orig_size[1] / input_size[1]
    out = boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    out[:, 0::2] = out[:, 0::2].clamp(0, orig_size[0])
    out[:, 1::2] = out[:, 1::2].clamp(0, orig_size[1])
    return out


class CocoDetection(Dataset[tuple[torch.Tensor, Target]]):
    """A COCO-format split as (image, target) pairs in torchvision's detection contract.

    ``image``: float tensor [3, h, w] in [0, 1], plainly resized to ``input_size = (w, h)``.
    ``target``: ``boxes`` (N, 4) xyxy in resized pixels, ``labels`` (N,) int64 in 1..K,
    ``image_id`` (int) and ``orig_size`` ((width, height) of the file).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        input_size: Size,
        train: bool = False,
        hflip: bool | None = None,
        max_images: int | None = None,
        cache: bool = False,
    ) -> None:
        if len(input_size) != 2 or min(input_size) < 1:
            raise DataError(f"input_size must be (width, height) > 0, got {input_size}")
        self.files = resolve_split(data_dir, split)
        self.split = split
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train = train
        # Digits are not mirror-symmetric (a flipped 5 reads as a 2), so the demo data is not flipped.
        self.hflip = (train and not is_demo_dataset(data_dir)) if hflip is None else hflip
        self.coco, self.annotation_counts = load_annotations(self.files.ann_file)
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.cat_to_label = {cat: i + 1 for i, cat in enumerate(self.cat_ids)}
        cats = self.coco.loadCats(self.cat_ids)
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        ids = sorted(self.coco.getImgIds())
        if max_images is not None:
            ids = ids[:max_images]
        self.image_ids: list[int] = ids
        for image_id in self.image_ids:
            path = self.image_path(image_id)
            if not path.is_file():
                raise DataError(f"image file missing: {path} (image id {image_id} in {self.files.ann_file})")
        # Decoded, resized uint8 pixels by index: decoding PNGs again every epoch costs a fifth of a
        # small model's CPU training time. Per process (each loader worker fills its own).
        self.cache = cache
        self._pixels: dict[int, torch.Tensor] = {}

    @property
    def num_categories(self) -> int:
        """K; build detectors with ``num_classes = K + 1``."""
        return len(self.cat_ids)

    @property
    def label_to_cat(self) -> list[int]:
        """Index by label: ``label_to_cat[label]`` is the category id; index 0 (background) is 0."""
        return [0, *self.cat_ids]

    def label_to_category(self, label: int) -> int:
        return self.cat_ids[label - 1]

    def image_path(self, image_id: int) -> Path:
        return self.files.images_dir / self.coco.imgs[image_id]["file_name"]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _load_pixels(self, index: int) -> tuple[torch.Tensor, int, int]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        width, height = int(info["width"]), int(info["height"])
        cached = self._pixels.get(index)
        if cached is not None:
            return cached, width, height
        path = self.image_path(image_id)
        try:
            with Image.open(path) as opened:
                im = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        width, height = im.size
        if (width, height) != (int(info["width"]), int(info["height"])):
            raise DataError(f"image {path} is {width}x{height} but its annotation says "
                            f"{info['width']}x{info['height']}")
        out_w, out_h = self.input_size
        if (width, height) != (out_w, out_h):
            im = im.resize((out_w, out_h), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.cache:
            self._pixels[index] = pixels
        return pixels, width, height

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image_id = self.image_ids[index]
        pixels, width, height = self._load_pixels(index)
        out_w, out_h = self.input_size
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width) * (out_w / width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height) * (out_h / height)
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)

        if self.hflip and torch.rand(()) < 0.5:
            pixels = pixels.flip(-1)
            boxes = torch.stack([out_w - boxes[:, 2], boxes[:, 1], out_w - boxes[:, 0], boxes[:, 3]], dim=1)
        image = pixels.to(torch.float32).div_(255.0)
        return image, {"boxes": boxes, "labels": labels, "image_id": image_id, "orig_size": (width, height)}


def check_dataset(data_dir: str | Path, splits: Sequence[str]) -> None:
    """Every check a training or evaluation will make on these splits (layout, annotations, boxes,
    image files), done up front so a command refuses bad data before it creates anything."""
    cats = {split: CocoDetection(data_dir, split, (32, 32)).cat_ids for split in dict.fromkeys(splits)}
    first, *rest = cats
    for split in rest:
        if cats[split] != cats[first]:
            raise DataError(f"data {str(data_dir)!r}: split '{split}' has categories {cats[split][:10]}, split "
                            f"'{first}' has {cats[first][:10]}; both need the same categories")


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Detection batches are lists (torchvision's contract), not stacked tensors."""
    return [b[0] for b in batch], [b[1] for b in batch]


def build_loader(
    data_dir: str | Path | None,
    split: str,
    input_size: Size,
    batch_size: int = 8,
    train: bool = False,
    workers: int = 0,
    seed: int = 0,
    max_images: int | None = None,
    dataset: CocoDetection | None = None,
) -> DataLoader[tuple[torch.Tensor, Target]]:
    """A DataLoader over a COCO-format split: shuffled and flipped when `train`, in order otherwise.

    Pass `dataset` to reuse an already loaded split (then `data_dir`, `split`, `input_size` and
    `max_images` are taken from it). The shuffle order follows the loader's generator, seeded
    with `seed`; the trainer reseeds it per epoch so a resumed run sees the same order.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if dataset is None:
        if data_dir is None:
            raise DataError("build_loader needs data_dir or dataset")
        dataset = CocoDetection(data_dir, split, input_size, train=train, max_images=max_images)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        persistent_workers=False,
        drop_last=False,
    )
