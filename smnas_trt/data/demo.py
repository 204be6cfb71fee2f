"""The embedded demo dataset: handwritten digits pasted on crops of photographs, in COCO format.

Needs no download: digits come from scikit-learn's bundled 8x8 digits data and backgrounds from its
two bundled sample photographs. Layout written by :func:`generate_demo`::

    DIR/train/000001.png ...        DIR/instances_train.json
    DIR/val/000001.png ...          DIR/instances_val.json
    DIR/demo.json                   (generator parameters; marks a complete dataset)

Ten categories, ids 1..10, named "0".."9". Object heights span COCO's small, medium and large
ranges (relative to ``size``); digits may overlap and later ones occlude earlier ones. Train and
val use disjoint digit samples. Output is deterministic for a seed and written to a temporary
folder renamed at the end, so an interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from smnas_trt.errors import DataError
from smnas_trt.fileio import atomic_dir

DEMO_FORMAT = "smnas-demo-digits"
DEMO_VERSION = 2
MAX_OBJECTS = 6
# Height of a digit as a share of the image side: (probability, low, high). At size 256 these give
# COCO small (< 32 px), medium and large (> 96 px) objects; at a 128 px model input the smallest
# are 11 px high, about the least an 8x8 source digit stays readable at.
SIZE_MIXTURE = ((0.10, 0.09, 0.125), (0.55, 0.125, 0.375), (0.35, 0.375, 0.6))
# A new digit may cover at most this share of an existing box (and vice versa): some occlusion,
# never a hidden object.
MAX_COVER = 0.35
# Luminance gap between a digit's colour and the photo under it, so every digit stays readable.
MIN_CONTRAST = 90.0


def _marker(n_train: int, n_val: int, size: int, seed: int) -> dict[str, Any]:
    return {"format": DEMO_FORMAT, "version": DEMO_VERSION, "n_train": n_train, "n_val": n_val,
            "size": size, "seed": seed}


def is_demo_dataset(data_dir: str | Path) -> bool:
    """True for a folder written by `generate_demo` (its marker file names the demo format)."""
    try:
        return json.loads((Path(data_dir) / "demo.json").read_text()).get("format") == DEMO_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


class _Sources:
    """Digits (split into disjoint train/val pools) and background photos."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits, load_sample_images

        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        # Every fifth sample goes to val: both pools hold all ten classes and every writer style.
        idx = np.arange(len(images))
        self.pools = {
            "train": (images[idx % 5 != 0], digits.target[idx % 5 != 0]),
            "val": (images[idx % 5 == 0], digits.target[idx % 5 == 0]),
        }
        self.photos = [np.asarray(p) for p in load_sample_images().images]


def _background(src: _Sources, rng: np.random.Generator, size: int) -> np.ndarray:
    photo = src.photos[int(rng.integers(len(src.photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def _digit_alpha(digit: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upscale an 8x8 digit and sharpen it into a stroke mask in [0, 1]."""
    big = Image.fromarray(digit, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip((np.asarray(big) - 0.35) * 4.0, 0.0, 1.0)


def _pick_colour(rng: np.random.Generator, under: float) -> np.ndarray:
    for _ in range(32):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if abs(float(_luminance(colour)) - under) >= MIN_CONTRAST:
            return colour
    # Fall back to black or white, whichever is further from the background.
    return np.full(3, 0.0 if under > 127.5 else 255.0, dtype=np.float32)


def _covers(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter > MAX_COVER * min(area_a, area_b)


def _render_image(
    src: _Sources, split: str, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One image and its (digit, [x, y, w, h]) boxes."""
    canvas = _background(src, rng, size)
    digits, targets = src.pools[split]
    objects: list[tuple[int, list[float]]] = []
    placed: list[tuple[float, float, float, float]] = []
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(n_objects):
        k = int(rng.integers(len(digits)))
        probs = [m[0] for m in SIZE_MIXTURE]
        _, lo, hi = SIZE_MIXTURE[int(rng.choice(len(SIZE_MIXTURE), p=probs))]
        height = max(8, round(size * rng.uniform(lo, hi)))
        width = max(8, round(height * rng.uniform(0.75, 1.15)))
        alpha = _digit_alpha(digits[k], width, height)
        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs) == 0:
            continue
        # Tight box of the visible strokes inside the pasted cell.
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        for _attempt in range(20):
            x = int(rng.integers(-bx0, size - bx1 + 1))
            y = int(rng.integers(-by0, size - by1 + 1))
            box = (float(x + bx0), float(y + by0), float(x + bx1), float(y + by1))
            if not any(_covers(box, other) for other in placed):
                break
        else:
            continue
        # Clip the cell to the canvas (the strokes are inside by construction).
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + width, size), min(y + height, size)
        a = alpha[cy0 - y:cy1 - y, cx0 - x:cx1 - x, None]
        region = canvas[cy0:cy1, cx0:cx1]
        under = float(_luminance(region[a[..., 0] > 0.5]).mean())
        colour = _pick_colour(rng, under)
        canvas[cy0:cy1, cx0:cx1] = region * (1 - a) + colour * a
        placed.append(box)
        objects.append((int(targets[k]), [box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    image = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)
    return image, objects


def _write_split(src: _Sources, root: Path, split: str, n: int, size: int, seed: int) -> int:
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    (root / split).mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(1, n + 1):
        pixels, objects = _render_image(src, split, rng, size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(root / split / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for digit, bbox in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": digit + 1,
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
            })
    coco = {
        "info": {"description": f"smnas demo digits ({split})", "version": str(DEMO_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)],
    }
    (root / f"instances_{split}.json").write_text(json.dumps(coco))
    return len(annotations)


def generate_demo(
    out: str | Path, n_train: int = 2000, n_val: int = 300, size: int = 256, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset to `out` and return its path.

    If `out` already holds a complete demo dataset made with the same parameters it is reused as is.
    A different existing folder is refused unless `overwrite` is set.
    """
    out = Path(out)
    if n_train < 1 or n_val < 1:
        raise DataError(f"demo dataset: --train and --val must be >= 1 (got {n_train}, {n_val})")
    if size < 64:
        raise DataError(f"demo dataset: --size must be >= 64 pixels (got {size})")
    marker = _marker(n_train, n_val, size, seed)
    marker_file = out / "demo.json"
    if out.exists() and not overwrite:
        if marker_file.exists():
            try:
                if json.loads(marker_file.read_text()) == marker:
                    return out
            except json.JSONDecodeError:
                pass
        if any(out.iterdir()):
            raise DataError(f"demo dataset: {out} exists and holds other files; pass --overwrite or another --out")
    src = _Sources()
    with atomic_dir(out) as tmp:
        for split, n in (("train", n_train), ("val", n_val)):
            _write_split(src, tmp, split, n, size, seed)
        (tmp / "demo.json").write_text(json.dumps(marker, indent=2) + "\n")
    return out
