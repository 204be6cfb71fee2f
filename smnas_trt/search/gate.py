"""The predictor gate: drop duplicate and over-budget children before any training, rank the rest.

Ranking depends on what is known:
- structural / random generations (no AP estimate for a new structure): spread the picks over the
  latency range, farthest-first in log latency from what is already trained or picked, so the
  first front covers fast and slow structures alike;
- modular generations: each child is expected to keep its parent's AP (SM-NAS mutations are small
  steps), and its latency is taken optimistically as `predicted - uncertainty`. Children are picked
  greedily by the hypervolume they would add to the current front (with earlier picks added), then by
  their signed distance to the front; uncertain children therefore get a bonus, as in UCB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from smnas_trt.search.pareto import Point, hypervolume_contribution, pareto_front


@dataclass(frozen=True)
class Child:
    arch: str  # canonical string
    arch_id: str
    parent_id: str | None = None
    parent_ap: float | None = None  # AP of the parent (modular stage): the child's expected AP


@dataclass(frozen=True)
class Decision:
    child: Child
    predicted_ms: float | None
    uncertainty_ms: float | None
    decision: str  # kept | over_budget | duplicate
    rank: int | None = None


def screen(children: Sequence[Child], predicted: Sequence[float] | None, uncertainty: Sequence[float] | None,
           budget_ms: float, safety: float, known_ids: set[str], enabled: bool = True) -> list[Decision]:
    """Decide for every child: duplicate (seen in this run or earlier in the list), over budget, or kept.

    With the gate disabled only duplicates are dropped (training the same arch twice teaches nothing);
    predictions, if given, are still recorded so the predictor's error can be reported.
    """
    seen = set(known_ids)
    out: list[Decision] = []
    for i, child in enumerate(children):
        p = None if predicted is None else float(predicted[i])
        u = None if uncertainty is None else float(uncertainty[i])
        if child.arch_id in seen:
            out.append(Decision(child, p, u, "duplicate"))
            continue
        seen.add(child.arch_id)
        if enabled and p is not None and p + safety * (u or 0.0) > budget_ms:
            out.append(Decision(child, p, u, "over_budget"))
        else:
            out.append(Decision(child, p, u, "kept"))
    return out


def rank_spread(kept: Sequence[Decision], existing_ms: Sequence[float]) -> list[Decision]:
    """Farthest-first in log latency from `existing_ms` and earlier picks; the fastest child starts."""
    remaining = [d for d in kept if d.predicted_ms is not None]
    unpredicted = [d for d in kept if d.predicted_ms is None]
    anchors = [math.log(max(t, 1e-6)) for t in existing_ms]
    ordered: list[Decision] = []
    while remaining:
        def gap(d: Decision) -> float:
            x = math.log(max(d.predicted_ms or 0.0, 1e-6))
            return min((abs(x - a) for a in anchors), default=math.inf)

        if anchors:
            best = max(remaining, key=lambda d: (gap(d), -(d.predicted_ms or 0.0), d.child.arch_id))
        else:
            best = min(remaining, key=lambda d: (d.predicted_ms or 0.0, d.child.arch_id))
        ordered.append(best)
        anchors.append(math.log(max(best.predicted_ms or 0.0, 1e-6)))
        remaining.remove(best)
    return _numbered(ordered + unpredicted)


def front_distance(point: Point, front: Sequence[Point], scale: float) -> float:
    """Signed latency gap to the front at the point's AP, in units of `scale` (negative: it would improve it).

    The front's fastest point reaching at least the point's AP sets the bar; a point above every front
    AP is measured against the slowest front point.
    """
    reaching = [lat for lat, ap in front if ap >= point[1]]
    bar = min(reaching) if reaching else max((lat for lat, _ in front), default=math.inf)
    if math.isinf(bar):
        return -math.inf
    return (point[0] - bar) / scale


def _optimistic(d: Decision, ref: Point) -> Point:
    """Where a child lands if it keeps its parent's AP and its latency is `uncertainty` below the prediction."""
    lat = d.predicted_ms if d.predicted_ms is not None else ref[0]
    lat = max(lat - (d.uncertainty_ms or 0.0), 1e-6)
    return (lat, d.child.parent_ap if d.child.parent_ap is not None else ref[1])


def _improvement_key(d: Decision, front: Sequence[Point], ref: Point, with_hv: bool) -> tuple[float, float, float, str]:
    pt = _optimistic(d, ref)
    gain = hypervolume_contribution(front, pt, ref) if with_hv else 0.0
    return (-gain, front_distance(pt, front, ref[0]), d.predicted_ms or 0.0, d.child.arch_id)


def rank_front_improvement(kept: Sequence[Decision], front: Sequence[Point], ref: Point,
                           greedy: int) -> list[Decision]:
    """Greedy optimistic-hypervolume ranking of the first `greedy` picks; the rest by front distance."""
    current = [front[i] for i in pareto_front(list(front))]
    remaining = list(kept)
    ordered: list[Decision] = []
    while remaining and len(ordered) < greedy:
        best = min(remaining, key=lambda d: _improvement_key(d, current, ref, True))
        ordered.append(best)
        remaining.remove(best)
        # Count the pick as if it landed where we hope, so the next pick fills another gap.
        grown = [*current, _optimistic(best, ref)]
        current = [grown[i] for i in pareto_front(grown)]
    ordered += sorted(remaining, key=lambda d: _improvement_key(d, current, ref, False))
    return _numbered(ordered)


def rank_in_order(kept: Sequence[Decision]) -> list[Decision]:
    """No ranking (gate off): the order the children were proposed in, which is random."""
    return _numbered(list(kept))


def _numbered(decisions: Sequence[Decision]) -> list[Decision]:
    return [Decision(d.child, d.predicted_ms, d.uncertainty_ms, d.decision, rank) for rank, d in
            enumerate(decisions)]
