"""Class weighting of the loss (issue 27): ``class_weights`` gives the documented weights of
each option on a known histogram (the expected values computed here from the definitions, one
class at a time), and keeps its promises on any histogram (Hypothesis): finite, positive, the
ratio cap respected, weights ordered inversely to frequency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesegd.errors import ConfigError
from tilesegd.training.config import TrainConfig
from tilesegd.training.model import class_weights

# 5 classes, one absent (id 3): shares 0.5, 0.05, 0.005, 0, 0.445 of 2000 labelled pixels
COUNTS = [1000, 100, 10, 0, 890]


def shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts]


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def expected_balanced(counts: list[int], cap: float | None = None) -> list[float]:
    """Median frequency over present classes / own frequency, clipped to [0.05, 20], lowered
    to cap x the smallest; an absent class takes the largest."""
    f = shares(counts)
    m = median([v for v in f if v > 0])
    w = {c: min(max(m / v, 0.05), 20.0) for c, v in enumerate(f) if v > 0}
    if cap is not None:
        lo = min(w.values())
        w = {c: min(v, cap * lo) for c, v in w.items()}
    top = max(w.values())
    return [w.get(c, top) for c in range(len(counts))]


def expected_inverse_sqrt(counts: list[int], cap: float | None = None) -> list[float]:
    """1 / sqrt(frequency), lowered to cap x the smallest, scaled to a pixel-weighted mean
    of 1; an absent class takes the largest."""
    f = shares(counts)
    w = {c: 1 / math.sqrt(v) for c, v in enumerate(f) if v > 0}
    if cap is not None:
        lo = min(w.values())
        w = {c: min(v, cap * lo) for c, v in w.items()}
    mean = sum(f[c] * v for c, v in w.items())
    w = {c: v / mean for c, v in w.items()}
    top = max(w.values())
    return [w.get(c, top) for c in range(len(counts))]


def test_no_weighting_is_the_default() -> None:
    assert TrainConfig().class_weights is None and TrainConfig().class_weight_cap is None
    assert class_weights(None, np.array(COUNTS)) is None


def test_balanced_is_median_frequency() -> None:
    w = class_weights("balanced", np.array(COUNTS))
    assert w.dtype == np.float32 and w.shape == (5,)
    # by hand: median of (0.5, 0.05, 0.005, 0.445) = 0.2475; 0.2475 / 0.005 = 49.5 -> 20
    np.testing.assert_allclose(w, [0.495, 4.95, 20.0, 20.0, 0.2475 / 0.445], rtol=1e-6)
    np.testing.assert_allclose(w, expected_balanced(COUNTS), rtol=1e-6)
    np.testing.assert_allclose(class_weights("balanced", np.array([100, 300, 0, 600])),
                               [3.0, 1.0, 3.0, 0.5], rtol=1e-6)  # fmt: skip


def test_balanced_with_a_cap() -> None:
    w = class_weights("balanced", np.array(COUNTS), cap=10)
    np.testing.assert_allclose(w, [0.495, 4.95, 4.95, 4.95, 0.2475 / 0.445], rtol=1e-6)
    np.testing.assert_allclose(w, expected_balanced(COUNTS, 10), rtol=1e-6)
    assert w.max() / w.min() == pytest.approx(10, rel=1e-6)


def test_inverse_sqrt_has_pixel_weighted_mean_one() -> None:
    w = class_weights("inverse_sqrt", np.array(COUNTS))
    np.testing.assert_allclose(w, expected_inverse_sqrt(COUNTS), rtol=1e-6)
    f = np.array(shares(COUNTS))
    assert float((f * w).sum()) == pytest.approx(1.0, rel=1e-6)
    # 100 x rarer (0.5 vs 0.005): 10 x the weight
    assert w[2] / w[0] == pytest.approx(10.0, rel=1e-6)


def test_inverse_sqrt_with_a_cap() -> None:
    w = class_weights("inverse_sqrt", np.array(COUNTS), cap=5)
    np.testing.assert_allclose(w, expected_inverse_sqrt(COUNTS, 5), rtol=1e-6)
    assert w.max() / w.min() == pytest.approx(5, rel=1e-6)
    assert float((np.array(shares(COUNTS)) * w).sum()) == pytest.approx(1.0, rel=1e-6)


def test_no_labelled_pixels_and_given_lists() -> None:
    for spec in ("balanced", "inverse_sqrt"):
        np.testing.assert_array_equal(class_weights(spec, np.zeros(3)), [1, 1, 1])
    given = class_weights([1, 2.5, 4], np.array([5, 0, 1]), cap=2)  # a given list: no cap
    np.testing.assert_array_equal(given, [1, 2.5, 4])


@pytest.mark.parametrize(
    ("spec", "cap", "match"),
    [
        ("median", None, "class_weights must be"),
        ([1.0, 2.0], None, "lists 2 values for 5 classes"),
        ([1.0, 0.0, 1, 1, 1], None, "finite numbers > 0"),
        ([1.0, float("nan"), 1, 1, 1], None, "finite numbers > 0"),
        ("balanced", 0.5, "class_weight_cap must be >= 1"),
    ],
)
def test_bad_weighting_is_refused(spec, cap, match) -> None:
    with pytest.raises(ConfigError, match=match):
        class_weights(spec, np.array(COUNTS), cap)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="pixels >= 0"):
        class_weights("balanced", np.array([3, -1, 2]))
    with pytest.raises(ValueError, match="pixels >= 0"):
        class_weights("inverse_sqrt", np.ones((2, 2)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(class_weights="median"), "class_weights must be null"),
        (dict(class_weights=[1, -2]), "numbers > 0"),
        (dict(class_weights="balanced", class_weight_cap=0.9), "class_weight_cap"),
        (dict(class_weights="balanced", class_weight_cap="ten"), "class_weight_cap"),
    ],
)
def test_config_refuses_bad_weighting(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw).validate()


def test_config_accepts_each_option() -> None:
    for kw in (
        dict(class_weights=None),
        dict(class_weights="balanced"),
        dict(class_weights="inverse_sqrt", class_weight_cap=10),
        dict(class_weights=[1.0, 2.0, 3.0]),
    ):
        TrainConfig(**kw).validate()


pixels = st.one_of(st.just(0), st.integers(1, 10**9))
histograms = st.lists(pixels, min_size=1, max_size=30).filter(lambda c: sum(c) > 0)


@settings(max_examples=examples(200), deadline=None)
@given(
    counts=histograms,
    spec=st.sampled_from(["balanced", "inverse_sqrt"]),
    cap=st.one_of(st.none(), st.floats(1.0, 1000.0)),
)
def test_weights_are_finite_positive_capped_and_inverse_to_frequency(counts, spec, cap) -> None:
    w = class_weights(spec, np.array(counts), cap).astype(np.float64)
    assert w.shape == (len(counts),)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    if cap is not None:
        assert w.max() / w.min() <= cap * (1 + 1e-5)
    for i, ci in enumerate(counts):
        for j, cj in enumerate(counts):
            if ci < cj:  # rarer (or absent): at least the weight
                assert w[i] >= w[j] * (1 - 1e-6), (i, j)
    expected = (expected_balanced if spec == "balanced" else expected_inverse_sqrt)(counts, cap)
    np.testing.assert_allclose(w, expected, rtol=1e-5)
