"""Drift between timing runs: the same machine times the same model a few percent differently an hour later.

Every latency table holds anchor models (`profile.choose_anchors`), timed at the start and end of
every profile run; their median over those runs is the table's reference state. A later timing run
(a search, `predictor eval` on another table, `deploy`, a `profile-lut --resume`) measures its own
state first (`profile.measure_drift`): `Drift.ratio` is the median over anchors of (now / reference), `Drift.spread` the
robust spread of the anchors' log ratios (how far one model's drift strays from the common one).
Predictions made from the table are scaled by the ratio for that run and their intervals widened by
the spread; above `DRIFT_WARN` the run says so, since its budget is being judged on another machine
state than the one the table describes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DRIFT_WARN = 0.05  # measured between runs an hour apart on the 2-core machine: 5-8%
MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation for normal data


@dataclass(frozen=True)
class Drift:
    """How this run's machine state compares with a table's: model latencies now = table x `ratio`."""

    ratio: float
    spread: float  # robust standard deviation of log(now / table) over the anchors
    n: int
    ratios: dict[str, float]

    @property
    def warn(self) -> bool:
        return abs(self.ratio - 1.0) > DRIFT_WARN

    def line(self, what: str = "this run") -> str:
        return (f"drift: {self.n} anchor models time {self.ratio:.3f}x the table in {what} (spread "
                f"{100 * self.spread:.1f}%); predictions for it are scaled by {self.ratio:.3f}")

    def warning(self, what: str = "this run's timings") -> str:
        change = "slower" if self.ratio > 1 else "faster"
        return (f"drift {100 * abs(self.ratio - 1):.1f}% ({change} than when the table was timed) is above "
                f"{100 * DRIFT_WARN:.0f}%: {what} are judged on another machine state than the table's; "
                "predictions are corrected by the anchors, but a quieter machine, or a fresh table, is safer")

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "spread": self.spread, "n": self.n, "ratios": self.ratios}


def drift_against(reference: Mapping[str, float], now: Mapping[str, float]) -> Drift | None:
    """The drift of `now` (anchor -> ms) against `reference`; None without a common anchor."""
    common = sorted(set(reference) & set(now))
    if not common:
        return None
    ratios = {a: now[a] / reference[a] for a in common}
    logs = [math.log(r) for r in ratios.values()]
    center = statistics.median(logs)
    spread = MAD_TO_SD * statistics.median(abs(x - center) for x in logs) if len(logs) > 2 else 0.0
    return Drift(math.exp(center), spread, len(common), ratios)
