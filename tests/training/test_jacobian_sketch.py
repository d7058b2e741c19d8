"""The sketched Jacobian-lens estimator: exact with all directions, unbiased with few,
planted where the exact estimator plants, shaped like it."""

from __future__ import annotations

import pytest
import torch

from hooklens.errors import InputError
from hooklens.lenses.jacobian_estimator import prompt_jacobians, prompt_tokens
from hooklens.training import jacobian_sketch
from hooklens.training.jacobian_sketch import (
    output_basis,
    projected_prompt_jacobians,
    random_directions,
    sketch_prompt_jacobians,
    sketch_update,
    stratified_directions,
)
from tests.conftest import D_MODEL, N_LAYERS

PROMPT = " ".join(f"w{4 + (5 * j) % 11}" for j in range(14))
LAYERS = list(range(N_LAYERS - 1))
SETTINGS = dict(dim_batch=5, skip_first_positions=2)


@pytest.fixture(scope="module")
def bridge(model_zoo):
    return model_zoo["bridge-llama"]  # raw: what J-lenses are fitted on


@pytest.fixture(scope="module")
def frozen(bridge):
    """The bridge with frozen parameters for the module's tests, then as it was."""
    before = [(p, p.requires_grad) for p in bridge.parameters()]
    bridge.requires_grad_(False)
    yield bridge
    for param, requires_grad in before:
        param.requires_grad_(requires_grad)


@pytest.fixture(scope="module")
def tokens(frozen):
    return prompt_tokens(frozen, PROMPT, 16)


@pytest.fixture(scope="module")
def exact(frozen, tokens):
    return prompt_jacobians(frozen, tokens, LAYERS, **SETTINGS)


def _relative_gap(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.double()
    return float((estimate.double() - reference).abs().max() / reference.abs().max())


def test_the_identity_directions_measure_exactly_the_exact_estimator(frozen, tokens, exact):
    measured = projected_prompt_jacobians(frozen, tokens, LAYERS, torch.eye(D_MODEL), **SETTINGS)
    for layer in LAYERS:
        assert _relative_gap(measured[layer], exact[layer]) <= 1e-6, layer


def test_any_directions_measure_q_transpose_j(frozen, tokens, exact):
    q = random_directions(D_MODEL, 7, torch.Generator().manual_seed(3))
    measured = projected_prompt_jacobians(frozen, tokens, LAYERS, q, **SETTINGS)
    for layer in LAYERS:
        reference = q.double().T @ exact[layer].double()  # float64 reference
        assert _relative_gap(measured[layer], reference) <= 1e-5, layer


@pytest.mark.parametrize("keep", [0, 5], ids=["random", "stratified"])
def test_with_d_model_probes_the_sketch_is_the_exact_estimator(frozen, tokens, exact, keep):
    # Any prior cancels when every direction is measured: C + QQᵀ(J − C) = J.
    prior = {layer: torch.full((D_MODEL, D_MODEL), 0.1) for layer in LAYERS}
    sketch = sketch_prompt_jacobians(
        frozen,
        tokens,
        LAYERS,
        probes=D_MODEL,
        keep=keep,
        basis=output_basis(frozen),
        generator=torch.Generator().manual_seed(0),
        prior=prior,
        **SETTINGS,
    )
    for layer in LAYERS:
        assert _relative_gap(sketch[layer], exact[layer]) <= 1e-5, layer


def test_the_subspace_sketch_is_exact_inside_and_the_prior_outside(frozen, tokens, exact):
    basis = output_basis(frozen)
    sketch = sketch_prompt_jacobians(
        frozen, tokens, [0], probes=6, keep=6, basis=basis, **SETTINGS
    )[0].double()
    inside, outside = basis[:, :6].double(), basis[:, 6:].double()
    reference = exact[0].double()
    assert _relative_gap(inside.T @ sketch, inside.T @ reference) <= 1e-5
    torch.testing.assert_close(outside.T @ sketch, outside.T, atol=1e-5, rtol=0)


def test_shapes_dtypes_and_layers_match_the_exact_estimator(frozen, tokens, exact):
    sketch = sketch_prompt_jacobians(
        frozen, tokens, [1], probes=6, generator=torch.Generator().manual_seed(0), **SETTINGS
    )
    assert list(sketch) == [1]
    assert sketch[1].shape == exact[1].shape == (D_MODEL, D_MODEL)
    assert sketch[1].dtype == exact[1].dtype == torch.float32
    assert sketch[1].device == exact[1].device


def test_cotangents_are_planted_at_the_exact_estimators_valid_positions(
    frozen, tokens, monkeypatch
):
    planted = []
    real_grad = torch.autograd.grad

    def recording_grad(outputs, inputs, grad_outputs, **kwargs):
        planted.append(grad_outputs.detach().clone())
        return real_grad(outputs, inputs, grad_outputs=grad_outputs, **kwargs)

    monkeypatch.setattr(jacobian_sketch.torch.autograd, "grad", recording_grad)
    q = random_directions(D_MODEL, 7, torch.Generator().manual_seed(1))
    projected_prompt_jacobians(frozen, tokens, [0], q, dim_batch=3, skip_first_positions=4)
    monkeypatch.setattr(jacobian_sketch.torch.autograd, "grad", real_grad)
    assert len(planted) == 3  # ceil(7 / 3) backward passes
    valid = torch.arange(4, tokens.shape[1] - 1)  # skipped, and the last has no target
    columns = [q.T[3 * i : 3 * i + 3] for i in range(3)]
    for cotangent, probes in zip(planted, columns, strict=True):
        rows, positions = torch.nonzero(cotangent.abs().sum(dim=-1), as_tuple=True)
        assert set(positions.tolist()) == set(valid.tolist())
        assert set(rows.tolist()) == set(range(len(probes)))
        torch.testing.assert_close(
            cotangent[: len(probes), valid], probes[:, None].expand(-1, len(valid), -1)
        )


def _mean_over_seeds(j, prior, plan, n_seeds):
    total = torch.zeros_like(j)
    for seed in range(n_seeds):
        q, w = plan(torch.Generator().manual_seed(seed))
        total += sketch_update(q.double().T @ j, q.double(), w, prior).double()
    return total / n_seeds


def test_the_scaled_random_sketch_is_unbiased_and_the_projection_is_not(exact):
    j = exact[1].double()
    prior = torch.eye(D_MODEL, dtype=torch.float64)  # the logit lens as control variate
    k, n_seeds = 8, 400

    def random_plan(generator, scale):
        return random_directions(D_MODEL, k, generator), torch.full((k,), scale)

    scaled = _mean_over_seeds(j, prior, lambda g: random_plan(g, D_MODEL / k), n_seeds)
    projected = _mean_over_seeds(j, prior, lambda g: random_plan(g, 1.0), n_seeds)
    spread = float((j - prior).norm())
    # One draw errs by about sqrt(d/k − 1) ‖J − C‖; the mean of n by that over sqrt(n).
    expected_error = (D_MODEL / k - 1) ** 0.5 / n_seeds**0.5
    assert float((scaled - j).norm()) / spread <= 2 * expected_error
    # The unscaled projection moves only k/d of the way from C towards J in expectation.
    shrunk = prior + (k / D_MODEL) * (j - prior)
    assert float((projected - shrunk).norm()) / spread <= 2 * expected_error
    assert float((projected - j).norm()) / spread >= 0.5


def test_the_stratified_sketch_is_unbiased(frozen, exact):
    j = exact[0].double()
    basis = output_basis(frozen)
    n_seeds = 2000
    mean = _mean_over_seeds(j, None, lambda g: stratified_directions(basis, 12, 4, g), n_seeds)
    spread = float((j - torch.eye(D_MODEL, dtype=torch.float64)).norm())
    inflation = (D_MODEL - 4) / (12 - 4)  # the sampled stratum's 1 / inclusion probability
    assert float((mean - j).norm()) / spread <= 2 * (inflation - 1) ** 0.5 / n_seeds**0.5


def test_the_output_basis_is_orthonormal_and_sorted_by_what_the_unembedding_reads(frozen):
    basis = output_basis(frozen).double()
    torch.testing.assert_close(basis.T @ basis, torch.eye(D_MODEL, dtype=torch.float64))
    w_u = frozen.W_U.detach().double()
    gain = frozen.ln_final.original_component.weight.detach().double()
    read = gain[:, None] * (w_u - w_u.mean(dim=1, keepdim=True))
    strength = ((basis.T @ read) ** 2).sum(dim=1)
    assert torch.all(strength[:-1] >= strength[1:] - 1e-9)


def test_the_stratified_directions_are_orthonormal_and_keep_the_top_ones(frozen):
    basis = output_basis(frozen)
    q, w = stratified_directions(basis, 10, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.T @ q, torch.eye(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(q[:, :3], basis[:, :3])
    torch.testing.assert_close(w, torch.tensor([1.0] * 3 + [(D_MODEL - 3) / 7] * 7))


@pytest.mark.parametrize("probes, keep", [(0, 0), (D_MODEL + 1, 0), (4, 4), (4, -1)], ids=str)
def test_bad_probe_counts_are_refused(frozen, probes, keep):
    with pytest.raises(InputError):
        stratified_directions(output_basis(frozen), probes, keep)


def test_cyclic_stratified_prompts_measure_each_direction_once_per_cycle(frozen):
    basis = output_basis(frozen)
    keep, probes = 4, 11  # the other 28 directions, 7 per prompt: a cycle of 4 prompts
    seen = []
    for index in range(4):
        order = torch.Generator().manual_seed(5)  # one order for the whole fit
        q, w = stratified_directions(basis, probes, keep, order, prompt_index=index)
        torch.testing.assert_close(q[:, :keep], basis[:, :keep])
        sampled = (basis.T @ q[:, keep:]).abs().argmax(dim=0)
        seen.extend(sampled.tolist())
        torch.testing.assert_close(w[keep:], torch.full((7,), 4.0))
    assert sorted(seen) == list(range(keep, D_MODEL))


def test_with_a_fixed_prior_a_whole_cycle_averages_each_measured_direction(frozen, exact):
    """Over one cycle the inverse-inclusion weights and the prior cancel: every row of
    Bᵀ J is measured once (the kept ones every prompt), so the mean is J exactly."""
    basis = output_basis(frozen).double()
    j = exact[0].double()
    estimates = []
    for index in range(4):
        order = torch.Generator().manual_seed(5)
        q, w = stratified_directions(basis.float(), 11, 4, order, prompt_index=index)
        estimates.append(sketch_update(q.double().T @ j, q.double(), w).double())
    assert _relative_gap(sum(estimates) / 4, j) <= 1e-5
