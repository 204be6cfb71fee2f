"""`smnas predict`: run a deployed model on images; write detections as JSON and images with boxes drawn."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from smnas_trt.deploy.runtime import Detections, Detector, load_image
from smnas_trt.errors import DeployError
from smnas_trt.fileio import atomic_path, atomic_write_json

DETECTIONS_JSON = "detections.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Colour per category id (cycled): readable on photos.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


@dataclass
class PredictResult:
    out: Path
    json_path: Path
    images: list[Path]  # drawn images, one per input
    counts: list[int]  # detections kept per input
    mean_ms: float  # mean wall time per image (load, pre-process, model, post-process)


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from paths and folders (a folder contributes its image files, sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DeployError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DeployError(f"image not found: {path}")
    if not files:
        raise DeployError("no images given")
    return files


def detections_json(det: Detections, detector: Detector, min_score: float) -> list[dict[str, Any]]:
    out = []
    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        if score < min_score:
            continue
        x1, y1, x2, y2 = (round(v, 2) for v in box)
        out.append({"category_id": int(label), "name": detector.category_name(label), "score": round(score, 5),
                    "bbox_xyxy": [x1, y1, x2, y2], "bbox_xywh": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]})
    return out


def draw(image: Image.Image, dets: list[dict[str, Any]]) -> Image.Image:
    """A copy of `image` with each detection's box and 'name score' drawn."""
    canvas = image.convert("RGB").copy()
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 200))
    for d in dets:
        colour = PALETTE[d["category_id"] % len(PALETTE)]
        x1, y1, x2, y2 = d["bbox_xyxy"]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{d['name']} {d['score']:.2f}"
        left, top, right, bottom = pen.textbbox((x1, y1), text)
        lift = bottom - top + 2
        pen.rectangle((x1, y1 - lift, x1 + right - left + 4, y1), fill=colour)
        pen.text((x1 + 2, y1 - lift), text, fill=(0, 0, 0))
    return canvas


def predict_images(model_dir: str | Path, inputs: Sequence[str | Path], out: str | Path, min_score: float = 0.3,
                   threads: int | None = None, agnostic_nms: bool = False,
                   on_image: Callable[[Path, int], None] | None = None) -> PredictResult:
    """Detect objects in every image; write OUT/detections.json and OUT/<name>.png with boxes drawn.

    `min_score` filters what is written and drawn (the model itself keeps scores >= 0.05);
    `agnostic_nms`: one box per object (`Detector.predict`).
    """
    if not 0 <= min_score <= 1:
        raise DeployError(f"--min-score must be within 0..1, got {min_score}")
    files = expand_images(inputs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DeployError(f"--out {out} exists and is not a folder")
    records: list[dict[str, Any]] = []
    drawn: list[Path] = []
    counts: list[int] = []
    seconds = 0.0
    with Detector.load(model_dir, threads=threads) as detector:
        names: set[str] = set()
        for path in files:
            t0 = time.perf_counter()
            image = load_image(path)
            assert isinstance(image, Image.Image)
            det = detector.predict(image, agnostic_nms=agnostic_nms)
            seconds += time.perf_counter() - t0
            dets = detections_json(det, detector, min_score)
            name = path.stem if path.stem not in names else f"{path.stem}_{len(names)}"
            names.add(name)
            target = out / f"{name}.png"
            with atomic_path(target) as tmp:
                draw(image, dets).save(tmp, format="PNG")
            records.append({"image": str(path), "width": image.size[0], "height": image.size[1],
                            "drawn": target.name, "detections": dets})
            drawn.append(target)
            counts.append(len(dets))
            if on_image is not None:
                on_image(path, len(dets))
        manifest = detector.manifest
    json_path = out / DETECTIONS_JSON
    atomic_write_json(json_path, {"model": {"folder": str(Path(model_dir).resolve()), "arch": manifest.arch,
                                            "arch_id": manifest.arch_id, "backend": manifest.backend,
                                            "precision": manifest.precision},
                                  "min_score": min_score, "agnostic_nms": agnostic_nms,
                                  "box_format": "pixels of the original image",
                                  "images": records})
    return PredictResult(out, json_path, drawn, counts, 1000 * seconds / len(files))




@dataclass(frozen=True)
class PredictionCheck:
    """How a deployed model's drawn boxes compare with the ground truth of the images it was shown."""

    images: int
    images_with_a_correct_box: int
    boxes: int
    correct_boxes: int  # IoU >= 0.5 with a ground-truth box of the same category

    @property
    def image_hit_rate(self) -> float:
        return self.images_with_a_correct_box / max(self.images, 1)

    @property
    def box_precision(self) -> float:
        return self.correct_boxes / max(self.boxes, 1)

    def summary(self) -> str:
        return (f"a correct box (IoU >= 0.5, right category) on {self.images_with_a_correct_box}/{self.images} images "
                f"({self.image_hit_rate:.0%}); {self.correct_boxes}/{self.boxes} drawn boxes correct "
                f"({self.box_precision:.0%})")


def check_predictions(result: PredictResult, data_dir: str | Path, split: str = "val") -> PredictionCheck:
    """Score what `predict_images` drew against the split's annotations (images matched by file name)."""
    import torch
    from torchvision.ops import box_iou

    from smnas_trt.data.coco import load_annotations, resolve_split

    files = resolve_split(data_dir, split)
    coco, _ = load_annotations(files.ann_file)
    by_name = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    records = json.loads(result.json_path.read_text())["images"]
    hits = boxes = correct = 0
    for record in records:
        image_id = by_name.get(Path(record["image"]).name)
        if image_id is None:
            raise DeployError(f"{record['image']} is not an image of {files.ann_file}")
        truth = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        dets = record["detections"]
        boxes += len(dets)
        if not dets or not truth:
            continue
        gt = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                           for a in truth])
        iou = box_iou(torch.tensor([d["bbox_xyxy"] for d in dets]), gt)
        same = torch.tensor([[d["category_id"] == a["category_id"] for a in truth] for d in dets])
        good = ((iou >= 0.5) & same).any(dim=1)
        correct += int(good.sum())
        hits += bool(good.any())
    return PredictionCheck(len(records), hits, boxes, correct)
