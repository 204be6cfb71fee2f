"""Two-objective Pareto utilities: latency (minimise) against accuracy (maximise).

Points are `(latency_ms, ap)` pairs. Hypervolume is measured against the reference point
`(ref_latency_ms, ref_ap)` (the search uses `(budget_ms, 0.0)`): the area of the region that the
points dominate and that itself dominates the reference point. Points at or beyond the reference
contribute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]


def dominates(a: Point, b: Point) -> bool:
    """a is no slower and no less accurate than b, and strictly better in one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Indices grouped into fronts (front 0 is the Pareto front). O(n log n) per front for two objectives."""
    remaining = list(range(len(points)))
    fronts: list[list[int]] = []
    while remaining:
        # Sorted by latency, then by AP descending: a point is non-dominated iff its AP beats every faster one.
        order = sorted(remaining, key=lambda i: (points[i][0], -points[i][1]))
        front: list[int] = []
        best_ap = -math.inf
        last: Point | None = None
        for i in order:
            p = points[i]
            if p[1] > best_ap or (last is not None and p == last):
                front.append(i)
                best_ap = max(best_ap, p[1])
                last = p
        fronts.append(sorted(front))
        chosen = set(front)
        remaining = [i for i in remaining if i not in chosen]
    return fronts


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, ordered by latency."""
    if not points:
        return []
    return sorted(non_dominated_sort(points)[0], key=lambda i: (points[i][0], -points[i][1]))


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each index in one front (boundary points get infinity)."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for axis in (0, 1):
        ordered = sorted(front, key=lambda i: points[i][axis])
        lo, hi = points[ordered[0]][axis], points[ordered[-1]][axis]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, len(ordered) - 1):
            dist[ordered[k]] += (points[ordered[k + 1]][axis] - points[ordered[k - 1]][axis]) / (hi - lo)
    return dist


def rank_and_crowding(points: Sequence[Point]) -> list[tuple[int, float]]:
    """(front rank, crowding distance) for every point, the NSGA-II selection keys."""
    keys: list[tuple[int, float]] = [(0, 0.0)] * len(points)
    for rank, front in enumerate(non_dominated_sort(points)):
        for i, d in crowding_distance(points, front).items():
            keys[i] = (rank, d)
    return keys


def select_survivors(points: Sequence[Point], k: int) -> list[int]:
    """The k best indices by (rank ascending, crowding descending): NSGA-II environmental selection."""
    keys = rank_and_crowding(points)
    order = sorted(range(len(points)), key=lambda i: (keys[i][0], -keys[i][1], points[i][0], i))
    return order[:k]


def promote(points: Sequence[Point], k: int, budget_ms: float) -> list[int]:
    """Successive halving's choice: the k indices to go on to the next rung.

    Best by non-dominated rank, then crowding distance; the two ends of a front both have infinite
    crowding, so what is left of a tie goes to the larger hypervolume contribution (reference point:
    budget, AP 0), which prefers an accurate end over a fast one that detects nothing. Points within the
    budget come first: past it a point adds no hypervolume, so those fill only what is left.
    """
    ref = (budget_ms, 0.0)

    def ranked(indices: list[int]) -> list[int]:
        pts = [points[i] for i in indices]
        keys = rank_and_crowding(pts)
        gain = [0.0] * len(pts)
        for front in non_dominated_sort(pts):
            members = [pts[j] for j in front]
            whole = hypervolume_2d(members, ref)
            for pos, j in enumerate(front):
                gain[j] = whole - hypervolume_2d(members[:pos] + members[pos + 1:], ref)
        order = sorted(range(len(pts)), key=lambda j: (keys[j][0], -keys[j][1], -gain[j], pts[j][0], j))
        return [indices[j] for j in order]

    within = [i for i, p in enumerate(points) if p[0] <= budget_ms]
    over = [i for i, p in enumerate(points) if p[0] > budget_ms]
    return (ranked(within) + ranked(over))[:k]


def hypervolume_2d(points: Sequence[Point], ref: Point) -> float:
    """Area dominated by `points` and bounded by `ref = (max latency, min AP)`."""
    inside = [p for p in points if p[0] < ref[0] and p[1] > ref[1]]
    if not inside:
        return 0.0
    front = [inside[i] for i in pareto_front(inside)]
    # Along a front AP rises with latency; slice horizontally: between consecutive AP levels the
    # covered latency span starts at the fastest point that reaches the upper level.
    area = 0.0
    prev_ap = ref[1]
    for lat, ap in sorted(front, key=lambda p: p[1]):
        area += (ref[0] - lat) * (ap - prev_ap)
        prev_ap = ap
    return area


def hypervolume_contribution(front_points: Sequence[Point], candidate: Point, ref: Point) -> float:
    """How much hypervolume `candidate` would add to `front_points`."""
    return hypervolume_2d([*front_points, candidate], ref) - hypervolume_2d(front_points, ref)
