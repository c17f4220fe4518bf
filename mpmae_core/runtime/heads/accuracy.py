"""A map's accuracy and its classes' areas from a probability sample: the estimators of good
practice (Olofsson et al. 2014, "Good practices for estimating area and assessing accuracy of land
change", Remote Sensing of Environment 148: 42-57; Stehman 2014, "Estimating area and map accuracy
for stratified random sampling when the strata are different from the map classes", International
Journal of Remote Sensing 35: 4923-4939).

Every figure is a stratified estimator of a total or of a ratio of two totals. A sample unit ``u``
of stratum ``h`` (``N_h`` pixels in the population, ``n_h`` in the sample) carries indicators
``y_u`` and ``x_u``; a total is estimated by ``sum_h N_h mean_h(y)`` with variance
``sum_h N_h^2 (1 - n_h/N_h) s2_h(y) / n_h``, and a ratio ``R = Y / X`` by the ratio of the
estimated totals with variance ``sum_h N_h^2 (1 - n_h/N_h) (s2_h(y) + R^2 s2_h(x) - 2 R s_h(x, y))
/ n_h / X^2``. The indicators are:

- overall accuracy: ``y = [map == reference]`` over the population size;
- user's accuracy of class k: ``y = [map == k and reference == k]``, ``x = [map == k]``;
- producer's accuracy of k: the same ``y``, ``x = [reference == k]``;
- the area proportion of k: ``y = [reference == k]`` over the population size;
- the error matrix in area proportions: ``y = [map == i and reference == j]``.

When the strata are the map's classes these are Olofsson et al.'s equations 2-11 (the finite
population correction aside, which they leave out and which is below 0.1 % for strata of
thousands of pixels); a simple random sample is one stratum. Confidence intervals are
``estimate +- z * SE`` with z = 1.96 for 95 %. Pure numpy: labels in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

Z95 = 1.96  # as Olofsson et al. 2014 (the normal quantile 1.95996 rounded)


class AccuracyError(ValueError):
    """A sample or design that cannot give estimates; the message says why and what to do."""


def _stratum_moments(strata: np.ndarray, values: np.ndarray, h) -> tuple[float, float, int]:
    v = values[strata == h]
    n = len(v)
    if n == 0:
        return 0.0, 0.0, 0
    return float(v.mean()), float(v.var(ddof=1)) if n > 1 else 0.0, n


def _cov(strata, x, y, h) -> float:
    sel = strata == h
    n = int(sel.sum())
    if n < 2:
        return 0.0
    xs, ys = x[sel], y[sel]
    return float(((xs - xs.mean()) * (ys - ys.mean())).sum() / (n - 1))


@dataclass(frozen=True)
class Design:
    """The sampling design: stratum ids and their population sizes (pixels)."""

    sizes: dict  # stratum id -> N_h
    fpc: bool = True  # finite population correction

    @property
    def total(self) -> float:
        return float(sum(self.sizes.values()))


def total_estimate(design: Design, strata: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(estimated population total of y, its variance)."""
    est = var = 0.0
    for h, N in design.sizes.items():
        mean, s2, n = _stratum_moments(strata, y, h)
        if n == 0:
            continue
        est += N * mean
        f = (1 - n / N) if design.fpc and N > 0 else 1.0
        var += N * N * f * s2 / n
    return est, var


def ratio_estimate(design: Design, strata: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(estimated Y / X, its variance); (nan, nan) when no unit has x."""
    Y, _ = total_estimate(design, strata, y)
    X, _ = total_estimate(design, strata, x)
    if X <= 0:
        return float("nan"), float("nan")
    R = Y / X
    var = 0.0
    for h, N in design.sizes.items():
        _, s2y, n = _stratum_moments(strata, y, h)
        if n == 0:
            continue
        _, s2x, _ = _stratum_moments(strata, x, h)
        f = (1 - n / N) if design.fpc and N > 0 else 1.0
        var += N * N * f * (s2y + R * R * s2x - 2 * R * _cov(strata, x, y, h)) / n
    return R, max(var, 0.0) / (X * X)


@dataclass
class Estimate:
    value: float
    se: float

    @property
    def ci95(self) -> float:
        """The half-width of the 95 % confidence interval."""
        return Z95 * self.se

    def as_dict(self) -> dict:
        return {"estimate": _num(self.value), "se": _num(self.se), "ci95": _num(self.ci95),
                "low": _num(self.value - self.ci95), "high": _num(self.value + self.ci95)}


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


@dataclass
class Assessment:
    """Every figure of an accuracy and area assessment."""

    classes: list
    estimator: str  # "stratified" or "simple random"
    counts: np.ndarray  # (K, K) sample counts, rows: map, columns: reference
    proportions: np.ndarray  # (K, K) estimated area proportions
    overall: Estimate
    users: list  # Estimate per class (map rows)
    producers: list  # Estimate per class (reference columns)
    area_proportion: list  # Estimate per class
    mapped_proportion: np.ndarray  # (K,) share of the population mapped as each class
    population: float  # pixels
    pixel_area: float = 1.0  # area of one pixel (e.g. m2 or ha)
    area_unit: str = "pixels"
    sample_sizes: dict = field(default_factory=dict)  # stratum -> n_h
    strata_sizes: dict = field(default_factory=dict)  # stratum -> N_h

    def f1(self) -> list:
        out = []
        for u, p in zip(self.users, self.producers):
            out.append(2 * u.value * p.value / (u.value + p.value) if (u.value + p.value) > 0 else float("nan"))
        return out

    def area(self, k: int) -> Estimate:
        scale = self.population * self.pixel_area
        e = self.area_proportion[k]
        return Estimate(e.value * scale, e.se * scale)

    def mapped_area(self, k: int) -> float:
        return float(self.mapped_proportion[k] * self.population * self.pixel_area)

    def as_dict(self) -> dict:
        f1 = self.f1()
        return {
            "estimator": self.estimator,
            "classes": list(self.classes),
            "sample_counts": self.counts.astype(int).tolist(),
            "area_proportions": self.proportions.tolist(),
            "overall_accuracy": self.overall.as_dict(),
            "per_class": [{
                "class": c, "users_accuracy": self.users[k].as_dict(), "producers_accuracy": self.producers[k].as_dict(),
                "f1": _num(f1[k]), "area_proportion": self.area_proportion[k].as_dict(),
                "area": self.area(k).as_dict(), "mapped_area": self.mapped_area(k),
                "mapped_proportion": float(self.mapped_proportion[k]),
                "sample_mapped": int(self.counts[k].sum()), "sample_reference": int(self.counts[:, k].sum()),
            } for k, c in enumerate(self.classes)],
            "population_pixels": self.population, "pixel_area": self.pixel_area, "area_unit": self.area_unit,
            "sample_size": int(self.counts.sum()),
            "sample_sizes_by_stratum": {str(k): int(v) for k, v in self.sample_sizes.items()},
            "strata_sizes": {str(k): float(v) for k, v in self.strata_sizes.items()},
        }


def assess(mapped, reference, strata, strata_sizes: dict, classes, mapped_counts=None, pixel_area: float = 1.0,
           area_unit: str = "pixels", fpc: bool = True, stratum_names: Optional[dict] = None) -> Assessment:
    """The assessment of a sample. ``mapped`` and ``reference``: class indices (0..K-1) of each sample
    unit on the map and in the reference; ``strata``: each unit's stratum; ``strata_sizes``: pixels
    per stratum in the population (a simple random sample: one stratum holding every pixel);
    ``mapped_counts``: pixels mapped as each class (for the mapped areas; default: the strata
    sizes, when the strata are the map's classes)."""
    mapped, reference, strata = (np.asarray(a).ravel() for a in (mapped, reference, strata))
    if not (len(mapped) == len(reference) == len(strata)):
        raise AccuracyError("the map classes, reference classes and strata of the sample differ in length")
    K = len(classes)
    if len(mapped) == 0:
        raise AccuracyError("the sample holds no labelled point: give the reference class of the validation points")
    if ((mapped < 0) | (mapped >= K) | (reference < 0) | (reference >= K)).any():
        raise AccuracyError(f"a class index lies outside 0..{K - 1}")
    unknown = sorted(set(strata.tolist()) - set(strata_sizes))
    if unknown:
        raise AccuracyError(f"sample points lie in strata {unknown} that the design does not know")
    design = Design({h: float(N) for h, N in strata_sizes.items()}, fpc)
    sample_sizes = {h: int((strata == h).sum()) for h in strata_sizes}
    def named(h) -> str:
        return f"stratum {h}" + (f" ({stratum_names[h]})" if stratum_names and h in stratum_names else "")

    small = [h for h, n in sample_sizes.items() if 0 < n < 2]
    if small:
        raise AccuracyError(f"{named(small[0])} holds a single labelled sample point: a variance needs at least 2 per "
                            "stratum; label more points there")
    empty = [h for h, n in sample_sizes.items() if n == 0 and design.sizes[h] > 0]
    if empty:
        raise AccuracyError(f"{named(empty[0])} ({design.sizes[empty[0]]:g} pixels) holds no labelled sample point: "
                            "its area would be left out of every estimate; label points there too")
    N = design.total
    counts = np.zeros((K, K))
    np.add.at(counts, (mapped, reference), 1)
    props = np.zeros((K, K))
    for i in range(K):
        for j in range(K):
            props[i, j] = total_estimate(design, strata, ((mapped == i) & (reference == j)).astype(float))[0] / N
    correct = (mapped == reference).astype(float)
    t, v = total_estimate(design, strata, correct)
    overall = Estimate(t / N, np.sqrt(v) / N)
    users, producers, areas = [], [], []
    for k in range(K):
        y = ((mapped == k) & (reference == k)).astype(float)
        r, v = ratio_estimate(design, strata, y, (mapped == k).astype(float))
        users.append(Estimate(r, np.sqrt(v)))
        r, v = ratio_estimate(design, strata, y, (reference == k).astype(float))
        producers.append(Estimate(r, np.sqrt(v)))
        t, v = total_estimate(design, strata, (reference == k).astype(float))
        areas.append(Estimate(t / N, np.sqrt(v) / N))
    if mapped_counts is None:
        mapped_counts = [design.sizes.get(k, 0.0) for k in range(K)]
    mapped_prop = np.asarray(mapped_counts, float) / max(float(np.sum(mapped_counts)), 1.0)
    return Assessment(list(classes), "stratified" if len(strata_sizes) > 1 else "simple random", counts, props,
                      overall, users, producers, areas, mapped_prop, N, pixel_area, area_unit, sample_sizes,
                      dict(design.sizes))


# ----------------------------------------------------------------------------------- sample design


def sample_size(weights, users_accuracy, target_se: float) -> int:
    """Olofsson et al. 2014, equation 13: the sample size whose overall accuracy has standard error
    ``target_se``, from the strata's weights and their anticipated user's accuracies."""
    W = np.asarray(weights, float)
    U = np.asarray(users_accuracy, float)
    if W.shape != U.shape or W.ndim != 1 or len(W) == 0:
        raise AccuracyError("give one weight and one anticipated user's accuracy per stratum")
    if not (0 < target_se < 1) or (U <= 0).any() or (U >= 1).any() or (W < 0).any():
        raise AccuracyError("the target standard error and the anticipated accuracies must lie strictly between 0 "
                            "and 1, and the weights must not be negative")
    W = W / W.sum()
    return int(np.ceil((np.sum(W * np.sqrt(U * (1 - U))) / target_se) ** 2))


def allocate(n: int, sizes, minimum: int = 50) -> list[int]:
    """Sample units per stratum: proportional to the strata's sizes, every stratum raised to
    ``minimum`` (rare classes need enough points for their user's accuracy) and the others lowered
    in proportion so that the total stays ``n`` (more when the minimums alone exceed it); never
    more than a stratum holds."""
    N = np.asarray(sizes, float)
    if int(n) < 1 or N.ndim != 1 or (N < 0).any() or N.sum() <= 0:
        raise AccuracyError("a sample needs at least one unit and strata with pixels")
    cap = np.floor(N)
    floor = np.minimum(cap, float(max(int(minimum), 0)))
    alloc = np.zeros(len(N))
    fixed = np.zeros(len(N), bool)
    while True:
        free = ~fixed
        if not free.any():
            break
        rest = max(float(n) - alloc[fixed].sum(), 0.0)
        share = np.zeros(len(N))
        share[free] = rest * N[free] / N[free].sum() if N[free].sum() > 0 else 0.0
        low, high = free & (share < floor), free & (share > cap)
        if not (low | high).any():
            alloc[free] = share[free]
            break
        alloc[low], alloc[high] = floor[low], cap[high]
        fixed |= low | high
    out = np.floor(alloc + 1e-9)
    short = int(n) - int(out.sum())
    for k in np.argsort(-(alloc - out), kind="stable"):  # the largest remainders first
        if short <= 0:
            break
        if out[k] < cap[k]:
            out[k] += 1
            short -= 1
    return [int(v) for v in out]
