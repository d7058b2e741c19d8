"""Affine least squares from streamed moments equals the direct solution."""

from __future__ import annotations

import pytest
import torch

from hooklens.core import AffineMoments
from hooklens.errors import InputError


def _rows(n: int, d_in: int, d_out: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, dtype=torch.float64, generator=generator) * 3 + 1
    y = torch.randn(n, d_out, dtype=torch.float64, generator=generator)
    return x, y


@pytest.mark.parametrize(("d_in", "d_out"), [(5, 3), (3, 7)])
def test_streamed_solution_equals_least_squares_on_all_rows(d_in, d_out):
    """Batches of rows, non-square widths, no ridge: the lstsq of [x, 1] against y."""
    x, y = _rows(60, d_in, d_out)
    moments = AffineMoments(d_in, d_out)
    for start in range(0, 60, 13):
        moments.update(x[start : start + 13], y[start : start + 13])
    weight, bias = moments.solve(alpha=0.0)
    design = torch.cat([x, torch.ones(60, 1, dtype=torch.float64)], dim=1)
    direct = torch.linalg.lstsq(design, y).solution
    torch.testing.assert_close(weight, direct[:d_in].T, rtol=0, atol=1e-10)
    torch.testing.assert_close(bias, direct[d_in], rtol=0, atol=1e-10)
    assert moments.count == 60


def test_ridge_shrinks_the_weights_toward_zero_and_leaves_the_intercept_free():
    """λ = α tr(Cov x) / d on A only: the ridge optimum of the centred problem."""
    x, y = _rows(40, 4, 2, seed=1)
    moments = AffineMoments(4, 2)
    moments.update(x, y)
    alpha = 0.5
    weight, bias = moments.solve(alpha)
    xc, yc = x - x.mean(0), y - y.mean(0)
    ridge = alpha * torch.trace(xc.T @ xc) / 4
    expected = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(4, dtype=torch.float64), xc.T @ yc)
    torch.testing.assert_close(weight, expected.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(bias, y.mean(0) - x.mean(0) @ expected, rtol=0, atol=1e-10)
    assert weight.norm() < moments.solve(0.0)[0].norm()


def test_fewer_rows_than_widths_still_solve():
    x, y = _rows(3, 6, 2)
    moments = AffineMoments(6, 2)
    with pytest.raises(InputError, match="no data"):
        moments.solve()
    moments.update(x, y)
    weight, bias = moments.solve(alpha=0.0)  # singular without a ridge: minimum norm
    torch.testing.assert_close(x @ weight.T + bias, y, rtol=0, atol=1e-8)


@pytest.mark.outside_annotations
def test_rows_that_do_not_pair_are_refused():
    x, y = _rows(3, 6, 2)
    with pytest.raises(InputError, match="pair them row by row"):
        AffineMoments(6, 2).update(x, y[:2])
