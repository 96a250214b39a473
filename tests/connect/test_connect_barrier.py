"""Barrier definitions on hand-built 1-D paths with known answers."""

import math

import pytest
import torch

from zooscape.connect import barrier, barrier_linear, barrier_mean, barrier_midpoint, barriers

ALPHAS = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    "values, expected",
    [
        # symmetric bump: all three agree
        ([0.0, 1.0, 2.0, 1.0, 0.0], {"linear": 2.0, "mean": 2.0, "midpoint": 2.0}),
        # straight line between different endpoints: no barrier above the chord, but "mean" sees half the gap
        ([1.0, 0.8, 0.6, 0.4, 0.2], {"linear": 0.0, "mean": 0.4, "midpoint": 0.0}),
        # convex valley: midpoint is negative, the others are 0
        ([0.0, -1.0, -1.0, -1.0, 0.0], {"linear": 0.0, "mean": 0.0, "midpoint": -1.0}),
        # off-centre bump: the midpoint misses it entirely
        ([0.0, 2.0, 0.0, 0.0, 0.0], {"linear": 2.0, "mean": 2.0, "midpoint": 0.0}),
        # bump on a sloped chord: chord at 0.25 is 0.25, so linear = 1.0 - 0.25; mean = 1.0 - 0.5
        ([0.0, 1.0, 0.5, 0.75, 1.0], {"linear": 0.75, "mean": 0.5, "midpoint": 0.0}),
    ],
)
def test_known_barriers(values, expected):
    v = torch.tensor(values, dtype=torch.float64)
    assert barrier_linear(v, ALPHAS) == pytest.approx(expected["linear"])
    assert barrier_mean(v, ALPHAS) == pytest.approx(expected["mean"])
    assert barrier_midpoint(v, ALPHAS) == pytest.approx(expected["midpoint"])
    assert barriers(v, ALPHAS) == pytest.approx(expected)
    for name, value in expected.items():
        assert barrier(v, ALPHAS, name) == pytest.approx(value)


def test_constant_path_has_zero_barrier():
    v = torch.full((7,), 0.37)
    a = torch.linspace(0, 1, 7)
    assert barriers(v, a) == {"linear": 0.0, "mean": 0.0, "midpoint": 0.0}


def test_parabola_closed_form():
    # x(a) = h * 4 a (1 - a) + (1 - a) x0 + a x1 : linear barrier h at a = 0.5, midpoint also h
    h, x0, x1 = 0.7, 0.2, 1.1
    a = torch.linspace(0, 1, 101, dtype=torch.float64)
    v = h * 4 * a * (1 - a) + (1 - a) * x0 + a * x1
    assert barrier_linear(v, a) == pytest.approx(h)
    assert barrier_midpoint(v, a) == pytest.approx(h)
    # mean: max of the parabola (vertex at a* = 0.5 + (x1 - x0) / (8 h)) minus (x0 + x1) / 2
    a_star = 0.5 + (x1 - x0) / (8 * h)
    peak = h * 4 * a_star * (1 - a_star) + (1 - a_star) * x0 + a_star * x1
    assert barrier_mean(v, a) == pytest.approx(peak - (x0 + x1) / 2, abs=1e-4)


def test_ordering_invariants():
    g = torch.Generator().manual_seed(0)
    a = torch.linspace(0, 1, 11)
    for _ in range(20):
        v = torch.randn(11, generator=g)
        b = barriers(v, a)
        assert b["midpoint"] <= b["linear"] + 1e-12
        assert b["linear"] >= 0
        assert b["mean"] >= abs(float(v[-1] - v[0])) / 2 - 1e-12


def test_midpoint_missing_is_error_and_nan_in_barriers():
    a = torch.linspace(0, 1, 4)
    v = torch.tensor([0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="0.5"):
        barrier_midpoint(v, a)
    assert math.isnan(barriers(v, a)["midpoint"])


@pytest.mark.parametrize(
    "values, alphas, match",
    [
        ([0.0, 1.0], [0.0, 0.5, 1.0], "shape"),
        ([[0.0, 1.0]], [[0.0, 1.0]], "1-D"),
        ([0.0, 1.0, 0.0], [0.1, 0.5, 1.0], "start at 0"),
        ([0.0, 1.0, 0.0], [0.0, 0.5, 0.9], "end at 1"),
        ([0.0, 1.0, 0.0, 1.0], [0.0, 0.6, 0.5, 1.0], "increasing"),
        ([0.0, float("nan"), 0.0], [0.0, 0.5, 1.0], "NaN"),
        ([1.0], [0.0], "at least 2"),
    ],
)
def test_bad_input(values, alphas, match):
    with pytest.raises(ValueError, match=match):
        barrier_linear(torch.tensor(values), torch.tensor(alphas))


def test_unknown_definition():
    with pytest.raises(ValueError, match="definition"):
        barrier(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0]), "frankle")
