"""The closed-form fit of low-rank tuned lenses (`LeastSquaresMoments.solve_low_rank`)."""

from __future__ import annotations

import pytest
import torch

from hooklens import TunedLens
from hooklens.training.fast_fit import LeastSquaresMoments, fit_tuned_lens
from tests.conftest import VOCAB


def _problem(intercept: bool, d: int = 8, n: int = 300, seed: int = 0):
    """Inputs x and targets y with a translator y − x of full rank, decaying spectrum."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) * torch.linspace(2, 0.5, d)
    x = x + 0.7 * intercept  # a mean the intercept must handle
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, -2, d, dtype=torch.float64)
    W = mixing @ torch.diag(scales) @ torch.randn(d, d, generator=generator, dtype=torch.float64)
    noise = 0.05 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = x + x @ W.T + 0.3 * intercept + noise
    moments = LeastSquaresMoments(n_layers=1, d_model=d)
    for rows in torch.split(torch.arange(n), 100):
        moments.add_targets(y[rows])
        moments.update(0, x[rows], y[rows])
    return x, y, moments


def _direct_reduced_rank(x, y, rank: int, ridge: float, intercept: bool):
    """The rank-r minimiser of Σ‖y − x − W x − b‖² + λ‖W‖² the textbook way, from the data:
    centre, augment with √λ I rows, QR the inputs, truncate the SVD of Qᵀ Z̃ (Eckart–Young)."""
    d = x.shape[1]
    mean_x = x.mean(0) if intercept else torch.zeros(d, dtype=x.dtype)
    z = y - x
    mean_z = z.mean(0) if intercept else torch.zeros(d, dtype=x.dtype)
    X = torch.cat([x - mean_x, ridge**0.5 * torch.eye(d, dtype=x.dtype)])
    Z = torch.cat([z - mean_z, torch.zeros(d, d, dtype=x.dtype)])
    Q, R = torch.linalg.qr(X)  # ‖Z − X B‖² = ‖Qᵀ Z − R B‖² + a constant
    u, s, vh = torch.linalg.svd(Q.T @ Z)
    best = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]  # the best rank-r R B
    B = torch.linalg.solve_triangular(R, best, upper=True)  # z_row ≈ x_row B: W = Bᵀ
    W = B.T
    return W, mean_z - W @ mean_x


def _objective(x, y, W, b, ridge):
    return ((y - x - x @ W.T - b) ** 2).sum() + ridge * (W**2).sum()


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("rank", [1, 3, 6])
def test_the_closed_form_rank_r_fit_is_the_reduced_rank_ridge_optimum(intercept, rank):
    x, y, moments = _problem(intercept)
    alpha = 0.05  # a ridge large enough to matter
    U, V, b = moments.solve_low_rank(0, rank, alpha, intercept=intercept)
    ridge = float(moments._ridge(0, alpha))
    W_direct, b_direct = _direct_reduced_rank(x, y, rank, ridge, intercept)
    assert torch.linalg.matrix_rank(U @ V.T) == rank
    torch.testing.assert_close(U @ V.T, W_direct, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(b, b_direct, atol=1e-9, rtol=1e-9)
    # and no rank-r perturbation of it does better
    best = _objective(x, y, U @ V.T, b, ridge)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        dU = 1e-3 * torch.randn(U.shape, generator=generator, dtype=torch.float64)
        dV = 1e-3 * torch.randn(V.shape, generator=generator, dtype=torch.float64)
        assert _objective(x, y, (U + dU) @ (V + dV).T, b, ridge) >= best


@pytest.mark.parametrize("intercept", [True, False])
def test_rank_d_model_is_the_full_fit(intercept):
    _, _, moments = _problem(intercept)
    U, V, b = moments.solve_low_rank(0, 8, intercept=intercept)
    M, offset = moments.solve(0, intercept=intercept)
    torch.testing.assert_close(U @ V.T, M - torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(b, offset, atol=1e-10, rtol=0)


def test_fast_fit_with_rank_d_model_is_todays_lens(hooked):
    generator = torch.Generator().manual_seed(2)
    train = [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(2)]
    full = fit_tuned_lens(hooked, train, progress=False)
    same = fit_tuned_lens(hooked, train, rank=hooked.cfg.d_model, progress=False)
    assert same.config.rank is None
    assert full.state_dict().keys() == same.state_dict().keys()
    for name, value in full.state_dict().items():
        assert torch.equal(value, same.state_dict()[name]), name


def test_fast_fit_at_low_rank_fits_rank_r_translators(hooked):
    generator = torch.Generator().manual_seed(2)
    train = [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(2)]
    lens = fit_tuned_lens(hooked, train, rank=4, progress=False)
    assert isinstance(lens, TunedLens) and lens.config.rank == 4
    for layer in range(lens.n_layers):
        assert lens[layer].U.shape == (hooked.cfg.d_model, 4)
        translator = lens[layer]
        assert torch.linalg.matrix_rank(translator.U.double() @ translator.V.double().T) == 4


def test_solve_low_rank_refuses_a_rank_out_of_range():
    _, _, moments = _problem(True)
    for rank in (0, 9):
        with pytest.raises(ValueError, match="rank must be from 1 to d_model = 8"):
            moments.solve_low_rank(0, rank)
