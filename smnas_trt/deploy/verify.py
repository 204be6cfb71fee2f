"""Deployed model vs PyTorch: detections matched box by box, plus the raw graph outputs compared.

Matching is greedy per class: pairs in descending IoU (torchvision's box_iou), each detection used
once. The headline figure is the share of detections matched at IoU >= 0.99 with the same label;
score differences are reported over matched pairs.

A detection can legitimately appear on one side only when its score sits at a cut-off (the score
threshold, or the last of the top-k kept per image) and the two sides differ by rounding there.
Unmatched detections whose score lies within `borderline` of the cut-off are counted apart, not
as failures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from smnas_trt.errors import DeployError

MATCH_IOU = 0.99


@dataclass(frozen=True)
class Tolerance:
    """What a precision must reach to pass."""

    match_iou: float  # IoU a pair needs to count as matched
    min_match_share: float  # matched / all non-borderline detections
    max_score_diff: float  # largest |score difference| over matched pairs
    max_output_rel_diff: float  # largest |graph - PyTorch| over an output, relative to its largest |value|
    borderline: float  # score band at the cut-off where a one-sided detection is tolerated
    box_atol: float  # boxes whose coordinates all agree within this many pixels match whatever their IoU

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


TOLERANCES = {
    # Same arithmetic up to kernel order: boxes agree to ~1e-5 px.
    "fp32": Tolerance(match_iou=MATCH_IOU, min_match_share=0.99, max_score_diff=1e-3, max_output_rel_diff=1e-3,
                      borderline=1e-3, box_atol=0.01),
    # 10-bit mantissa: boxes move by ~0.1 px, scores by ~1e-3; small boxes can dip below IoU 0.99.
    "fp16": Tolerance(match_iou=0.9, min_match_share=0.95, max_score_diff=0.03, max_output_rel_diff=0.05,
                      borderline=0.02, box_atol=0.5),
    # 8-bit activations (255 steps over each tensor's calibrated range, values beyond it clipped) and 7/8-bit
    # weights, rounding in every layer: boxes move by a pixel or two, scores by a few hundredths, and a
    # detection near the score cut-off can fall out on one side. So a pair matches at IoU 0.5 (COCO's own
    # criterion for the same object: what AP counts), 80% of detections must match, scores may differ by up
    # to 0.15, a one-sided detection within 0.1 of the cut-off is borderline, and the worst element of a raw
    # graph output may be off by half its range: a feature-map element beyond the calibrated range is
    # clipped. Measured on the tests' tiny two-stage model (5 calibration images, 3 val images): 100% of
    # detections matched at IoU 0.5 (73% at 0.99), max |Δscore| 0.014; worst elements 0.23-0.30 of the range
    # for the FPN maps, 0.02 for the RoI head's outputs. The deployed model's AP on the val split is the
    # real test of an int8 model; these bounds catch a broken graph, not a lossy one.
    "int8": Tolerance(match_iou=0.5, min_match_share=0.8, max_score_diff=0.15, max_output_rel_diff=0.5,
                      borderline=0.1, box_atol=2.0),
}


def tolerance_for(precision: str) -> Tolerance:
    if precision not in TOLERANCES:
        raise DeployError(f"precision {precision!r} has no verification tolerance; allowed: {', '.join(TOLERANCES)}")
    return TOLERANCES[precision]


@dataclass
class ImageMatch:
    """Matching of one image's detections."""

    n_ref: int
    n_test: int
    matched: int  # pairs at tol.match_iou with the same label
    matched_099: int  # pairs at IoU >= 0.99 (reported for every precision)
    borderline: int  # one-sided detections at a score cut-off (both sides)
    compared: int  # detections that must match: the larger side, less its borderline ones
    score_diffs: list[float]
    ious: list[float]


def _cutoff(scores: torch.Tensor, score_thresh: float, max_dets: int) -> float:
    """The score below which a detection may fall out on one side: the threshold, or the k-th score when full."""
    if len(scores) >= max_dets and len(scores):
        return float(scores.min())
    return score_thresh


def box_similarity(a: torch.Tensor, b: torch.Tensor, atol: float) -> torch.Tensor:
    """IoU of every pair [len(a), len(b)], raised to 1.0 where all four coordinates agree within `atol`
    pixels: tiny and zero-area boxes (torchvision detectors emit them; their IoU is undefined or swings
    with 1e-4 px) then match when they are the same box."""
    a, b = a.double(), b.double()
    iou = box_iou(a, b).nan_to_num(0.0)
    close = (a[:, None, :] - b[None, :, :]).abs().amax(-1) <= atol
    return torch.where(close, torch.ones_like(iou), iou)


def _greedy_pairs(ref: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
                  atol: float) -> list[tuple[int, int, float]]:
    """(ref index, test index, IoU) pairs, greedy by IoU within each label, each box used once."""
    pairs: list[tuple[int, int, float]] = []
    for label in torch.unique(torch.cat([ref["labels"], test["labels"]])).tolist():
        ri = torch.nonzero(ref["labels"] == label).flatten()
        ti = torch.nonzero(test["labels"] == label).flatten()
        if len(ri) == 0 or len(ti) == 0:
            continue
        iou = box_similarity(ref["boxes"][ri], test["boxes"][ti], atol)
        order = torch.argsort(iou.flatten(), descending=True)
        used_r: set[int] = set()
        used_t: set[int] = set()
        cols = iou.shape[1]
        for flat in order.tolist():
            r, t = divmod(flat, cols)
            value = float(iou[r, t])
            if value <= 0:
                break
            if r in used_r or t in used_t:
                continue
            used_r.add(r)
            used_t.add(t)
            pairs.append((int(ri[r]), int(ti[t]), value))
    return pairs


def match_detections(ref: dict[str, torch.Tensor], test: dict[str, torch.Tensor], tol: Tolerance,
                     score_thresh: float = 0.05, max_dets: int = 100) -> ImageMatch:
    """Match one image's detections (boxes xyxy, scores, labels) of PyTorch (`ref`) and the deployed model."""
    ref = {k: torch.as_tensor(v).cpu() for k, v in ref.items()}
    test = {k: torch.as_tensor(v).cpu() for k, v in test.items()}
    pairs = _greedy_pairs(ref, test, tol.box_atol)
    good = [(r, t, iou) for r, t, iou in pairs if iou >= tol.match_iou]
    matched_r = {r for r, _, _ in good}
    matched_t = {t for _, t, _ in good}
    band = max(_cutoff(ref["scores"], score_thresh, max_dets), _cutoff(test["scores"], score_thresh, max_dets))
    band += tol.borderline
    border_ref = sum(float(ref["scores"][i]) <= band for i in range(len(ref["scores"])) if i not in matched_r)
    border_test = sum(float(test["scores"][i]) <= band for i in range(len(test["scores"])) if i not in matched_t)
    return ImageMatch(
        n_ref=len(ref["scores"]), n_test=len(test["scores"]), matched=len(good),
        matched_099=sum(iou >= MATCH_IOU for _, _, iou in pairs), borderline=border_ref + border_test,
        compared=max(len(ref["scores"]) - border_ref, len(test["scores"]) - border_test),
        score_diffs=[abs(float(ref["scores"][r]) - float(test["scores"][t])) for r, t, _ in good],
        ious=[iou for _, _, iou in good],
    )


@dataclass
class Verification:
    """Figures of one deployed model against PyTorch over a set of images; `passed` against `tolerance`."""

    precision: str
    tolerance: Tolerance
    images: int = 0
    ref_detections: int = 0
    test_detections: int = 0
    matched: int = 0
    matched_099: int = 0
    borderline: int = 0
    compared: int = 0  # detections that must match (see ImageMatch.compared)
    score_diffs: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    output_rel_diff: dict[str, float] = field(default_factory=dict)  # per graph output, worst over images

    def add(self, m: ImageMatch) -> None:
        self.images += 1
        self.ref_detections += m.n_ref
        self.test_detections += m.n_test
        self.matched += m.matched
        self.matched_099 += m.matched_099
        self.borderline += m.borderline
        self.compared += m.compared
        self.score_diffs += m.score_diffs
        self.ious += m.ious

    def add_outputs(self, name: str, test: np.ndarray, ref: np.ndarray) -> None:
        """Compare one raw graph output with PyTorch's; keeps the worst relative difference per output."""
        test = np.asarray(test, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if test.shape != ref.shape:
            raise DeployError(f"verification: output {name} has shape {test.shape}, PyTorch gives {ref.shape}")
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-6)
        diff = float(np.abs(test - ref).max()) / scale if ref.size else 0.0
        self.output_rel_diff[name] = max(self.output_rel_diff.get(name, 0.0), diff)

    @property
    def match_share(self) -> float:
        return 1.0 if self.compared == 0 else min(1.0, self.matched / self.compared)

    @property
    def match_share_099(self) -> float:
        return 1.0 if self.compared == 0 else min(1.0, self.matched_099 / self.compared)

    @property
    def max_score_diff(self) -> float:
        return max(self.score_diffs, default=0.0)

    @property
    def mean_score_diff(self) -> float:
        return float(np.mean(self.score_diffs)) if self.score_diffs else 0.0

    @property
    def min_iou(self) -> float:
        return min(self.ious, default=1.0)

    @property
    def max_output_rel_diff(self) -> float:
        return max(self.output_rel_diff.values(), default=0.0)

    def failures(self) -> list[str]:
        t = self.tolerance
        out = []
        if self.images == 0:
            out.append("no images were compared")
        if self.match_share < t.min_match_share:
            out.append(f"{self.match_share:.1%} of detections matched at IoU >= {t.match_iou:g} "
                       f"(needs {t.min_match_share:.0%})")
        if self.max_score_diff > t.max_score_diff:
            out.append(f"max |score difference| {self.max_score_diff:.3g} > {t.max_score_diff:g}")
        if self.max_output_rel_diff > t.max_output_rel_diff:
            worst = max(self.output_rel_diff, key=lambda k: self.output_rel_diff[k])
            out.append(f"graph output {worst} differs by {self.max_output_rel_diff:.3g} of its range "
                       f"(> {t.max_output_rel_diff:g})")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        return (f"{self.images} images, {self.ref_detections} PyTorch boxes: {self.match_share_099:.1%} matched at "
                f"IoU>=0.99, max |Δscore| {self.max_score_diff:.2g}, max output diff {self.max_output_rel_diff:.2g}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "failures": self.failures(), "precision": self.precision,
            "tolerance": self.tolerance.to_dict(), "images": self.images,
            "pytorch_detections": self.ref_detections, "deployed_detections": self.test_detections,
            "borderline_one_sided": self.borderline, "compared": self.compared,
            "matched": self.matched, "match_share": self.match_share,
            "matched_iou_0.99": self.matched_099, "match_share_iou_0.99": self.match_share_099,
            "min_matched_iou": self.min_iou, "max_score_diff": self.max_score_diff,
            "mean_score_diff": self.mean_score_diff, "output_rel_diff": self.output_rel_diff,
        }
