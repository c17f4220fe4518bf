"""The accuracy and area estimators: the published worked example of Olofsson et al. 2014, an
independent hand computation of their equations, and simulations whose true areas are known (the
95 % intervals must cover the truth in about 95 % of repeated samples)."""

import numpy as np
import pytest

from mpmae_core.runtime.heads import accuracy as A

# Olofsson et al. 2014, section 5 (Table 8): map classes deforestation, forest gain, stable forest,
# stable non-forest; rows the map, columns the reference; 30 m pixels (0.09 ha).
EXAMPLE = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
EXAMPLE_PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]
CLASSES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]


def units(matrix):
    """(map class, reference class) of every sample unit of a count matrix."""
    m, r = [], []
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            m += [i] * int(matrix[i, j])
            r += [j] * int(matrix[i, j])
    return np.array(m), np.array(r)


def test_the_published_worked_example():
    m, r = units(EXAMPLE)
    a = A.assess(m, r, m, dict(enumerate(EXAMPLE_PIXELS)), CLASSES, pixel_area=0.09, area_unit="ha", fpc=False)
    assert round(a.overall.value, 3) == 0.947 and round(a.overall.ci95, 3) == 0.018
    assert [round(u.value, 2) for u in a.users] == [0.88, 0.73, 0.93, 0.96]
    assert [round(u.ci95, 2) for u in a.users] == [0.07, 0.10, 0.04, 0.02]
    assert round(a.producers[0].value, 2) == 0.75 and round(a.producers[0].ci95, 2) == 0.21
    assert [round(a.area(k).value) for k in range(4)] == [21_158, 11_686, 285_770, 581_386]
    assert [round(a.area(k).ci95) for k in range(4)] == [6_158, 3_756, 15_510, 16_282]
    assert a.mapped_area(0) == pytest.approx(18_000)  # 200,000 pixels of 0.09 ha
    assert a.estimator == "stratified"
    # the finite population correction moves these figures by under 0.1 %
    b = A.assess(m, r, m, dict(enumerate(EXAMPLE_PIXELS)), CLASSES, pixel_area=0.09, fpc=True)
    assert b.area(0).ci95 == pytest.approx(a.area(0).ci95, rel=1e-3)
    # the sample size of their section 5.1: U = 0.7, 0.6, 0.9, 0.95 and S(O) = 0.01
    assert A.sample_size(EXAMPLE_PIXELS, [0.7, 0.6, 0.9, 0.95], 0.01) == 641


def test_equal_to_olofssons_equations_worked_by_hand():
    """Equations 2-11 of Olofsson et al. 2014 written out one by one, on a random matrix."""
    rng = np.random.default_rng(3)
    n = rng.integers(1, 40, (5, 5)) + np.diag(rng.integers(40, 90, 5))
    N = rng.integers(5_000, 500_000, 5).astype(float)
    W = N / N.sum()
    ni = n.sum(1)
    p = W[:, None] * n / ni[:, None]  # eq. 4
    U = np.diag(p) / p.sum(1)  # eq. 2
    P = np.diag(p) / p.sum(0)  # eq. 3
    O = np.trace(p)  # eq. 1
    v_o = sum(W[i] ** 2 * U[i] * (1 - U[i]) / (ni[i] - 1) for i in range(5))  # eq. 5
    v_u = U * (1 - U) / (ni - 1)  # eq. 6
    Nj = np.array([sum(N[i] / ni[i] * n[i, j] for i in range(5)) for j in range(5)])
    v_p = []
    for j in range(5):  # eq. 7
        t1 = N[j] ** 2 * (1 - P[j]) ** 2 * U[j] * (1 - U[j]) / (ni[j] - 1)
        t2 = P[j] ** 2 * sum(N[i] ** 2 * n[i, j] / ni[i] * (1 - n[i, j] / ni[i]) / (ni[i] - 1)
                             for i in range(5) if i != j)
        v_p.append((t1 + t2) / Nj[j] ** 2)
    area = p.sum(0)  # eq. 9
    se_area = [np.sqrt(sum(W[i] ** 2 * (n[i, k] / ni[i]) * (1 - n[i, k] / ni[i]) / (ni[i] - 1) for i in range(5)))
               for k in range(5)]  # eq. 10
    m, r = units(n)
    a = A.assess(m, r, m, dict(enumerate(N)), list("abcde"), fpc=False)
    np.testing.assert_allclose(a.proportions, p, atol=1e-12)
    assert a.overall.value == pytest.approx(O, abs=1e-12) and a.overall.se ** 2 == pytest.approx(v_o, rel=1e-9)
    np.testing.assert_allclose([u.value for u in a.users], U, atol=1e-12)
    np.testing.assert_allclose([u.se ** 2 for u in a.users], v_u, rtol=1e-9)
    np.testing.assert_allclose([x.value for x in a.producers], P, atol=1e-12)
    np.testing.assert_allclose([x.se ** 2 for x in a.producers], v_p, rtol=1e-9)
    np.testing.assert_allclose([x.value for x in a.area_proportion], area, atol=1e-12)
    np.testing.assert_allclose([x.se for x in a.area_proportion], se_area, rtol=1e-9)
    f1 = a.f1()
    assert f1[0] == pytest.approx(2 * U[0] * P[0] / (U[0] + P[0]))


def _population(rng, size=60_000):
    """A map and its true reference: 3 classes of shares 0.6, 0.3, 0.1; the map errs on 8 %, 20 %
    and 35 % of the pixels it gives each class."""
    mapped = rng.choice(3, size, p=[0.6, 0.3, 0.1])
    reference = mapped.copy()
    for k, err in enumerate((0.08, 0.20, 0.35)):
        idx = np.nonzero(mapped == k)[0]
        wrong = idx[rng.random(len(idx)) < err]
        reference[wrong] = (k + 1 + rng.integers(0, 2, len(wrong))) % 3
    return mapped, reference


def _cover(truth, est):
    return abs(est.value - truth) <= est.ci95


def test_the_intervals_cover_the_truth_in_95_percent_of_repeated_samples():
    """1,000 stratified random samples (strata: the map's classes, 100 / 80 / 60 points), and 1,000
    with strata that are not the map's classes (Stehman 2014): the truth of the overall accuracy and
    of every class's area lies in the 95 % interval 93-97 % of the time; the user's accuracies'
    intervals at least 88 % (see below)."""
    rng = np.random.default_rng(0)
    mapped, reference = _population(rng)
    K = 3
    true_oa = (mapped == reference).mean()
    true_area = [(reference == k).mean() for k in range(K)]
    true_ua = [((mapped == k) & (reference == k)).sum() / (mapped == k).sum() for k in range(K)]
    half = np.arange(len(mapped)) < len(mapped) // 2  # another stratification: two halves of the scene x 2
    other = (mapped == 0).astype(int) * 2 + half.astype(int)
    for strata, alloc in ((mapped, {0: 100, 1: 80, 2: 60}), (other, {0: 60, 1: 60, 2: 70, 3: 70})):
        members = {h: np.nonzero(strata == h)[0] for h in alloc}
        sizes = {h: len(v) for h, v in members.items()}
        hits = np.zeros(1 + 2 * K)
        reps = 1000
        for _ in range(reps):
            idx = np.concatenate([rng.choice(members[h], n, replace=False) for h, n in alloc.items()])
            a = A.assess(mapped[idx], reference[idx], strata[idx], sizes, ["a", "b", "c"],
                         mapped_counts=np.bincount(mapped, minlength=K))
            hits[0] += _cover(true_oa, a.overall)
            for k in range(K):
                hits[1 + k] += _cover(true_area[k], a.area_proportion[k])
                hits[1 + K + k] += _cover(true_ua[k], a.users[k])
        coverage = hits / reps
        print("coverage (OA, areas, user's accuracies):", coverage)
        assert ((coverage[:1 + K] >= 0.93) & (coverage[:1 + K] <= 0.97)).all(), coverage
        # user's accuracy intervals are Olofsson's normal (Wald) intervals of a proportion: near 1 with
        # n * U * (1 - U) of a few units they cover less (measured 0.906 for U = 0.92 and 100 points)
        assert (coverage[1 + K:] >= 0.88).all() and (coverage[1 + K:] <= 0.97).all(), coverage


def test_a_simple_random_sample_is_one_stratum_and_unbiased():
    rng = np.random.default_rng(1)
    mapped, reference = _population(rng)
    true_area = (reference == 2).mean()
    ests, hits = [], 0
    for _ in range(1000):
        idx = rng.choice(len(mapped), 400, replace=False)
        a = A.assess(mapped[idx], reference[idx], np.zeros(400, int), {0: len(mapped)}, ["a", "b", "c"],
                     mapped_counts=np.bincount(mapped, minlength=3))
        ests.append(a.area_proportion[2].value)
        hits += _cover(true_area, a.area_proportion[2])
    assert a.estimator == "simple random"
    assert abs(np.mean(ests) - true_area) < 0.003 and 0.93 <= hits / 1000 <= 0.97


def test_allocation_and_bad_samples():
    assert A.allocate(641, EXAMPLE_PIXELS, 100) == [100, 100, 146, 295]
    alloc = A.allocate(500, [1_000, 30, 100_000, 400_000], 50)
    assert sum(alloc) == 500 and alloc[1] == 30 and alloc[0] == 50 and alloc[3] > 3 * alloc[2]
    assert A.allocate(100, [10, 5, 1000, 3000], 50) == [10, 5, 50, 50]  # minimums first, even above n
    m, r = units(EXAMPLE)
    one = np.concatenate([np.nonzero(m != 1)[0], np.nonzero(m == 1)[0][:1]])
    with pytest.raises(A.AccuracyError, match="stratum 1 holds a single labelled sample point"):
        A.assess(m[one], r[one], m[one], dict(enumerate(EXAMPLE_PIXELS)), CLASSES)
    none = np.nonzero(m != 1)[0]
    with pytest.raises(A.AccuracyError, match="stratum 1 .150000 pixels. holds no labelled sample point"):
        A.assess(m[none], r[none], m[none], dict(enumerate(EXAMPLE_PIXELS)), CLASSES)
    with pytest.raises(A.AccuracyError, match="no labelled point"):
        A.assess([], [], [], {0: 10}, ["a"])
    with pytest.raises(A.AccuracyError, match="strictly between 0 and 1"):
        A.sample_size([1, 2], [0.8, 1.0], 0.01)
