"""Sketched Jacobian-lens estimators (a few cotangent directions per prompt), measured
against the exact one and not recommended (issue 15).

The exact estimator (`hooklens.lenses.jacobian_estimator.prompt_jacobians`) spends
`ceil(d_model / dim_batch)` backward passes per prompt, one per `dim_batch` rows of `J`.
Planting the cotangent `q` (a unit vector of the final residual's space) instead of a
one-hot row at the same valid positions gives `qᵀ J_p` in one backward row (the
estimand is linear in the cotangent), so `k` directions `Q` cost `ceil(k / dim_batch)`
backwards and measure `Qᵀ J_p` exactly. What is not measured is filled in from a prior
`C` (the identity, i.e. the logit lens, or the running mean of the previous prompts):

    Ĵ_p = C + Q diag(w) Qᵀ (J_p − C)

- `w = d / k` with `Q` a seeded uniformly random orthonormal frame (E[QQᵀ] = (k/d) I):
  unbiased for `J_p` whatever `C` is (C must not depend on this prompt's draw), with a
  variance of about `(d/k − 1) ‖J_p − C‖²_F` per prompt; `C` is a control variate.
- `w = 1`: the orthogonal projection update, biased toward `C` by `(1 − k/d)` per prompt
  in expectation, lower variance.
- `Q` from `output_basis(model)` (the final residual's directions ordered by how much
  the unembedding reads them) and `w = 1`: a fixed subspace, exact there, `C` elsewhere.
- `stratified_directions`: the top `keep` directions of that basis every prompt (weight
  1) plus a random sample of the rest with inverse-inclusion weights (Horvitz–Thompson):
  unbiased, with the sampling noise put where the readout is least sensitive to it; with
  `prompt_index` the rest is walked cyclically in one random order, so that with
  `C = I` the mean over a whole cycle averages every measured row exactly.

Verdict (issue 15, measured with benchmarks/jlens_estimators.py on SmolLM2-135M): **no
sketch holds up; do not fit lenses with it.** At k = 128 (4.39× fewer passes) every
variant reads held-out text worse, on average over layers, than the exact estimator on
4× fewer prompts, which costs the same and needs no new code; none is within 5% of the
exact fit at every layer (numbers in `sketch_prompt_jacobians`). Why: the per-prompt
Jacobians are alike (one exact prompt already gets 80% of the 4-prompt fit's KL gain
over the logit lens), so the error that matters is the sketch's own; an unbiased frame
of k of d directions gathers k/d of a prompt's information for at least k/d of its cost
(plus a whole forward), so at best it breaks even with fewer exact prompts, and its
control variate is poor early in a fit. The biased variants fall back to the prior in
the directions they do not measure, and `J − I` is not concentrated in 128 of them.
This module stays as the benchmark's instrument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens._checks import positive_int
from hooklens.core import ModelAdapter
from hooklens.errors import InputError
from hooklens.lenses.jacobian_estimator import projected_prompt_jacobians


def sketch_update(
    measured: Float[Tensor, "k d_model"],
    directions: Float[Tensor, "d_model k"],
    weights: Float[Tensor, " k"],
    prior: Float[Tensor, "d_model d_model"] | None = None,
) -> Float[Tensor, "d_model d_model"]:
    """`C + Q diag(w) (Qᵀ J_p − Qᵀ C)` from the measured `Qᵀ J_p` (`C = I` by default).

    Example:
        >>> q = torch.eye(4)[:, :2]
        >>> sketch_update(torch.ones(2, 4), q, torch.ones(2))[0]
        tensor([1., 1., 1., 1.])
    """
    directions = directions.float()
    d_model = directions.shape[0]
    prior = torch.eye(d_model) if prior is None else prior.float()
    innovation = measured.float() - directions.T @ prior  # [k, d_model]
    return prior + directions @ (weights.float()[:, None] * innovation)


def random_directions(
    d_model: int, probes: int, generator: torch.Generator | None = None
) -> Float[Tensor, "d_model probes"]:
    """`probes` orthonormal columns, uniformly random (Haar) from `generator`.

    Example:
        >>> q = random_directions(8, 3, torch.Generator().manual_seed(0))
        >>> torch.allclose(q.T @ q, torch.eye(3), atol=1e-6)
        True
    """
    positive_int(probes, "probes", at_most=d_model)
    gaussian = torch.randn(d_model, probes, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # Sign-fixing makes the frame Haar-distributed, which E[QQᵀ] = (k/d) I relies on.
    return (q * torch.sign(torch.diagonal(r))).float()


def output_basis(model: Any) -> Float[Tensor, "d_model d_model"]:
    """The final residual's orthonormal directions, most read by the unembedding first.

    Eigenvectors of `G W̃_U W̃_Uᵀ G` (`G` the final norm's gain, `W̃_U` the unembedding
    centred over the vocabulary, since a shift shared by all logits changes no
    probability), in decreasing order of eigenvalue: an error of `J h` along column `i`
    moves the logits by about the square root of eigenvalue `i` per unit.
    """
    adapter = ModelAdapter(model)
    gain, _ = adapter.final_norm_gain_and_bias()
    with torch.no_grad():
        w_u = adapter.W_U.detach().double().cpu()
        w_u = w_u - w_u.mean(dim=1, keepdim=True)
        if gain is not None:
            w_u = gain.detach().double().cpu()[:, None] * w_u
        _, eigenvectors = torch.linalg.eigh(w_u @ w_u.T)
    return eigenvectors.flip(dims=[1]).float()  # eigh sorts ascending


def stratified_directions(
    basis: Float[Tensor, "d_model d_model"],
    probes: int,
    keep: int,
    generator: torch.Generator | None = None,
    *,
    prompt_index: int | None = None,
) -> tuple[Float[Tensor, "d_model probes"], Float[Tensor, " probes"]]:
    """`(Q, w)`: the first `keep` columns of `basis` (weight 1) and `probes − keep` of the
    others, weighted by the inverse of their inclusion probability `(d − keep) / (probes −
    keep)`; E[Q diag(w) Qᵀ] = I.

    The others are drawn afresh from `generator` without replacement, or, with
    `prompt_index`, read in turn from one random order of them (drawn from `generator`,
    which must then be seeded alike for every prompt of a fit): consecutive prompts
    measure disjoint directions, so every direction is measured once per
    `(d − keep) / (probes − keep)` prompts instead of a binomial number of times.
    """
    d_model = basis.shape[1]
    positive_int(probes, "probes", at_most=d_model)
    if not 0 <= keep < probes:
        raise InputError(f"keep must lie in 0..probes-1 = {probes - 1}, got {keep}")
    n_rest, n_sampled = d_model - keep, probes - keep
    order = torch.randperm(n_rest, generator=generator)
    if prompt_index is None:
        rest = order[:n_sampled]
    else:
        rest = order[(prompt_index * n_sampled + torch.arange(n_sampled)) % n_rest]
    columns = torch.cat([torch.arange(keep), keep + rest])
    weights = torch.ones(probes)
    weights[keep:] = n_rest / n_sampled
    return basis[:, columns], weights


def sketch_directions(
    d_model: int,
    probes: int,
    *,
    keep: int = 0,
    basis: Float[Tensor, "d_model d_model"] | None = None,
    generator: torch.Generator | None = None,
    prompt_index: int | None = None,
) -> tuple[Float[Tensor, "d_model probes"], Float[Tensor, " probes"]]:
    """`(Q, w)` of one prompt: a random frame scaled by d/k (`keep=0`), the stratified
    draw over `basis` (`0 < keep < probes`; `prompt_index`: see `stratified_directions`),
    or `basis`'s first `probes` columns with weight 1 (`keep == probes`: the
    fixed-subspace estimator, biased toward the prior)."""
    positive_int(probes, "probes", at_most=d_model)
    if keep == 0:
        return random_directions(d_model, probes, generator), torch.full(
            (probes,), d_model / probes
        )
    if basis is None:
        raise InputError("keep > 0 needs a basis: pass basis=output_basis(model)")
    if keep == probes:
        return basis[:, :probes], torch.ones(probes)
    return stratified_directions(basis, probes, keep, generator, prompt_index=prompt_index)


def sketch_prompt_jacobians(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    source_layers: Sequence[int],
    *,
    dim_batch: int,
    skip_first_positions: int,
    probes: int,
    keep: int = 0,
    basis: Float[Tensor, "d_model d_model"] | None = None,
    generator: torch.Generator | None = None,
    prior: Mapping[int, Tensor] | None = None,
) -> dict[int, Float[Tensor, "d_model d_model"]]:
    """`{layer: Ĵ_p}`: `prompt_jacobians` estimated from `probes` cotangent directions.

    Same inputs and output as `prompt_jacobians`; one forward and
    `ceil(probes / dim_batch)` backwards instead of `ceil(d_model / dim_batch)`. The
    directions come from `sketch_directions` (`keep=0`: a Haar-random frame drawn from
    `generator`, scaled by d/k; `0 < keep < probes`: stratified over `basis`, e.g.
    `output_basis(model)`; `keep == probes`: the fixed subspace). With `keep < probes`
    the estimate is unbiased for `J_p` whatever `prior` (`{layer: C}`, identity by
    default) is, as long as `prior` does not depend on this prompt's draw (the running
    mean of the previous prompts' estimates is the natural control variate: it needs the
    fit's running sums and count). `probes = d_model` reproduces `prompt_jacobians`.

    Measured (not recommended): SmolLM2-135M bridge, 4 training prompts × 48 tokens,
    skip 16, dim_batch 8, all 29 source layers, 2 × 256 held-out tokens; mean over
    layers of |relative ΔKL(output ‖ lens)| against the exact 4-prompt fit (KL 6.62
    nats; the logit lens 16.09): exact on 1 prompt (4.00×) 24.6% (max 45.3%); random
    frame, scaled, running-mean prior (4.39×) 134.7% (max 910%); unscaled projection
    32.9% (max 155%); stratified keep=64, running mean 140.4%; cyclic keep=32, C = I
    39.0% (max 132%); fixed 128-direction subspace 46.8% (max 162%). None is within 5%
    at every layer, and none beats the 1-prompt exact fit on average. Wall time of one
    real sketch prompt (keep=64) against one exact prompt: 150 s vs 476 s (3.2×, load
    shared with other jobs). The sketch equals its simulation from the exact `J_p` to
    2e-6 on that prompt.

    Example:
        >>> basis = output_basis(model)  # here: the examples' tiny 4-layer model
        >>> sketch = sketch_prompt_jacobians(model, tokens, range(3), dim_batch=8,
        ...     skip_first_positions=1, probes=16, keep=8, basis=basis,
        ...     generator=torch.Generator().manual_seed(0))
        >>> sorted(sketch), sketch[0].shape
        ([0, 1, 2], torch.Size([32, 32]))
    """
    adapter = ModelAdapter(model)
    directions, weights = sketch_directions(
        adapter.d_model, probes, keep=keep, basis=basis, generator=generator
    )
    measured = projected_prompt_jacobians(
        model,
        tokens,
        source_layers,
        directions,
        dim_batch=dim_batch,
        skip_first_positions=skip_first_positions,
    )
    return {
        layer: sketch_update(
            measured[layer], directions, weights, None if prior is None else prior[layer]
        )
        for layer in source_layers
    }
