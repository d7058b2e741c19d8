"""Closed-form tuned lens: per-layer ridge least squares to the final residual.

For each layer ℓ, fit `y ≈ M x + b` from the layer's residual x to the final residual y
(the input of the final norm), with the ridge pulling M toward the identity:

    minimise  Σ ‖y − M x − b‖² + λ ‖M − I‖²,   λ = α · tr(Cov x) / d   (b unpenalised)

One streaming pass of the model accumulates Σ x xᵀ, Σ x yᵀ, Σ x, Σ y and the count in
float64 (the matmuls themselves in float32); each layer is then one `(d+1)²` solve. The
translator of a `TunedLens` is `h ↦ h + W h + b`, so `W = M − I`.

Least squares is not the KL objective the lens is judged by, but it starts a KL
fine-tune far closer to the optimum than the identity does (docs/performance.md measures it).

Low rank (`fit_tuned_lens(..., rank=r)`, `LeastSquaresMoments.solve_low_rank`): what is
low rank is the translator's `W = M − I`, so the problem is the same ridge objective in
the residual-of-identity parametrisation, with the target z = y − x,

    minimise  Σ ‖z − W x − b‖² + λ ‖W‖²   over  rank(W) ≤ r  and b,

and its exact minimiser is reduced-rank ridge regression (Mukherjee & Zhu 2011): with
b free, b = z̄ − W x̄ and the objective is ‖Z̃ − X̃ Wᵀ‖²_F over the augmented data
X̃ = [X − x̄; √λ I], Z̃ = [Z − z̄; 0]. Take the full ridge solution Ŵ; the fitted values
Ẑ = X̃ Ŵᵀ have Ẑᵀ Ẑ = Ŵ (Σ_c + λ I) Ŵᵀ (Σ_c: the centred Σ x xᵀ). With P ∈ R^{d×r} its
top-r eigenvectors, W_r = P Pᵀ Ŵ (so U = P, V = Ŵᵀ P) and b_r = z̄ − W_r x̄. It is the
global optimum, not an approximation: the residual Z̃ − Ẑ is orthogonal to the column
space of X̃, so the objective is ‖Z̃ − Ẑ‖² + ‖Ẑ − X̃ Wᵀ‖², and by Eckart–Young the best
rank-r X̃ Wᵀ is Ẑ projected onto its top-r right singular vectors (X̃ has full column
rank for λ > 0). Projecting the fitted values of y (of M) instead would make M low rank,
not W: a low-rank M is far from the identity a translator starts at.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.core import ModelAdapter, distributed, normalize_component
from hooklens.core.precision import retain_freed_memory
from hooklens.errors import InputError
from hooklens.lenses.tuned import LowRankTranslator, TunedLens


class LeastSquaresMoments:
    """Running sums for one least-squares problem per layer, all sharing the target y."""

    def __init__(self, n_layers: int, d_model: int, device: torch.device | str = "cpu"):
        shape = (n_layers, d_model, d_model)
        self.xx = torch.zeros(shape, dtype=torch.float64, device=device)
        self.xy = torch.zeros(shape, dtype=torch.float64, device=device)
        self.x = torch.zeros(n_layers, d_model, dtype=torch.float64, device=device)
        self.y = torch.zeros(d_model, dtype=torch.float64, device=device)
        self.count = 0

    def update(
        self, layer: int, x: Float[Tensor, "rows d_model"], y: Float[Tensor, "rows d_model"]
    ) -> None:
        """Add rows of one layer's inputs `x` with the shared targets `y` (float32 matmuls;
        float64 ones for float64 rows)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x32, y32 = x.to(dtype), y.to(dtype)
        self.xx[layer] += (x32.T @ x32).double()
        self.xy[layer] += (x32.T @ y32).double()
        self.x[layer] += x32.sum(0).double()

    def add_targets(self, y: Float[Tensor, "rows d_model"]) -> None:
        """Count the rows of a batch once (call once per batch, not per layer)."""
        self.y += y.to(torch.promote_types(y.dtype, torch.float32)).sum(0).double()
        self.count += y.shape[0]

    def all_reduce(self) -> None:
        """Sum the moments of every rank (data-parallel runs; a no-op for one process)."""
        for tensor in (self.xx, self.xy, self.x, self.y):
            distributed.all_reduce_sum_(tensor)
        count = torch.tensor([self.count], dtype=torch.float64, device=self.xx.device)
        self.count = int(distributed.all_reduce_sum_(count).item())

    def _ridge(self, layer: int, alpha: float) -> Tensor:
        """λ = α · tr(Cov x) / d of `layer` (a float64 scalar)."""
        if self.count == 0:
            raise InputError("no data: call update() with at least one batch first")
        sum_x = self.x[layer]
        covariance_trace = torch.trace(self.xx[layer]) - sum_x @ sum_x / float(self.count)
        return alpha * covariance_trace / self.xx.shape[-1]

    def solve(
        self, layer: int, alpha: float = 1e-5, intercept: bool = True
    ) -> tuple[Float[Tensor, "d_model d_model"], Float[Tensor, " d_model"]]:
        """`(M, b)` minimising the ridge objective for `layer` (float64); `b = 0` without
        an intercept."""
        ridge = self._ridge(layer, alpha)
        d = self.xx.shape[-1]
        n = float(self.count)
        sum_x = self.x[layer]
        # Augmented system over [x, 1]: rows/columns d is the bias.
        gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=self.xx.device)
        gram[:d, :d] = self.xx[layer] + ridge * torch.eye(
            d, dtype=torch.float64, device=gram.device
        )
        gram[:d, d] = gram[d, :d] = sum_x
        gram[d, d] = n
        rhs = torch.zeros(d + 1, d, dtype=torch.float64, device=gram.device)
        rhs[:d] = self.xy[layer] + ridge * torch.eye(d, dtype=torch.float64, device=gram.device)
        rhs[d] = self.y
        if not intercept:
            gram, rhs = gram[:d, :d], rhs[:d]
        solution = torch.linalg.solve(gram, rhs)  # y_row ≈ x_row @ S[:d] (+ S[d])
        offset = solution[d] if intercept else torch.zeros_like(solution[0])
        return solution[:d].T, offset

    def solve_low_rank(
        self, layer: int, rank: int, alpha: float = 1e-5, intercept: bool = True
    ) -> tuple[
        Float[Tensor, "d_model rank"], Float[Tensor, "d_model rank"], Float[Tensor, " d_model"]
    ]:
        """`(U, V, b)` (float64): `W = U Vᵀ` of rank ≤ `rank` and `b` minimising
        `Σ ‖y − x − W x − b‖² + λ ‖W‖²` for `layer` exactly (reduced-rank ridge
        regression; the module docstring derives it). `U` has orthonormal columns;
        `rank = d_model` gives `U Vᵀ = M − I` of `solve`; `b = 0` without an intercept.

        Examples:
            >>> moments = LeastSquaresMoments(n_layers=1, d_model=4)
            >>> x = torch.randn(64, 4)
            >>> moments.add_targets(x @ torch.diag(torch.tensor([3., 1., 1., 1.])))
            >>> moments.update(0, x, x @ torch.diag(torch.tensor([3., 1., 1., 1.])))
            >>> U, V, b = moments.solve_low_rank(0, rank=1)  # y − x = 2 x₀ e₀: rank 1
            >>> torch.allclose(U @ V.T, torch.diag(torch.tensor([2., 0., 0., 0.])).double(),
            ...                atol=1e-3)
            True
        """
        d = self.xx.shape[-1]
        if not 1 <= rank <= d:
            raise InputError(f"rank must be from 1 to d_model = {d}, got {rank}")
        matrix, offset = self.solve(layer, alpha, intercept)
        eye = torch.eye(d, dtype=torch.float64, device=matrix.device)
        full = matrix - eye  # Ŵ: the ridge solution for z = y − x
        scatter = self.xx[layer]
        if intercept:
            scatter = scatter - torch.outer(self.x[layer], self.x[layer]) / float(self.count)
        fitted_gram = full @ (scatter + self._ridge(layer, alpha) * eye) @ full.T  # Ẑᵀ Ẑ
        fitted_gram = (fitted_gram + fitted_gram.T) / 2
        _, vectors = torch.linalg.eigh(fitted_gram)  # ascending
        U = vectors[:, d - rank :].flip(-1).contiguous()  # the top r, largest first
        V = full.T @ U
        if not intercept:
            return U, V, torch.zeros_like(offset)
        mean_x = self.x[layer] / float(self.count)
        mean_z = self.y / float(self.count) - mean_x
        return U, V, mean_z - U @ (V.T @ mean_x)


def fit_tuned_lens(
    model: Any,
    token_batches: Iterable[Int[Tensor, "batch pos"]],
    *,
    alpha: float = 1e-5,
    component: str = "resid_pre",
    bias: bool = True,
    rank: int | None = None,
    progress: bool = True,
) -> TunedLens:
    """A `TunedLens` fitted in closed form on `token_batches` (one pass of the model).

    `rank=r` fits a low-rank lens (`TunedLens.from_model(model, rank=r)`) with the exact
    rank-r minimiser of the same ridge objective (`LeastSquaresMoments.solve_low_rank`).

    Examples:
        >>> from hooklens.training.data import batches, load_texts, pack
        >>> chunks = pack(load_texts("wikipedia-summaries")["text"], model.tokenizer, 512)
        ...                                                             # doctest: +SKIP
        >>> # here: a local file of 300 short lines, and the examples' tiny model
        >>> chunks = pack(load_texts("texts.jsonl")["text"], model.tokenizer, 16)
        >>> lens = fit_tuned_lens(model, batches(chunks, 8))
        >>> lens
        TunedLens(model='tiny-llama', layers=4, d_model=32, bias=True, component='resid_pre')
    """
    adapter = ModelAdapter(model)
    lens = TunedLens.from_model(adapter, bias=bias, component=component, rank=rank)
    moments = accumulate_moments(model, token_batches, component=lens.component, progress=progress)
    return solve_into(lens, moments, alpha)


def accumulate_moments(
    model: Any,
    token_batches: Iterable[Int[Tensor, "batch pos"]],
    *,
    component: str = "resid_pre",
    progress: bool = True,
) -> LeastSquaresMoments:
    """The moments of every layer's `component` against the final residual over
    `token_batches` (one pass of the model; summed over ranks under torchrun)."""
    adapter = ModelAdapter(model)
    component = normalize_component(component)
    names = adapter.residual_hook_names(component)
    moments = LeastSquaresMoments(adapter.n_layers, adapter.d_model, adapter.device)
    # The fit needs residuals only: a model that can stop after its last block skips the
    # final norm and the [tokens, vocab] logits (~14% of a SmolLM2 forward).
    no_head = {"stop_at_layer": adapter.n_layers} if adapter.can_stop_at_layer else {}
    retain_freed_memory()
    show = progress and distributed.is_primary()
    bar = tqdm(token_batches, desc="fast fit", unit="batch", disable=not show)
    with torch.no_grad():
        for tokens in bar:
            _, cache = model.run_with_cache(
                tokens.to(adapter.device), names_filter=lambda name: name in names, **no_head
            )
            y = cache[adapter.final_hook_name].reshape(-1, adapter.d_model)
            moments.add_targets(y)
            for layer in range(adapter.n_layers):
                hook = adapter.hook_name(component, layer)
                moments.update(layer, cache[hook].reshape(-1, adapter.d_model), y)
            bar.set_postfix(tokens=moments.count)
        moments.all_reduce()  # under torchrun each rank saw its own shard
    return moments


def solve_into(lens: TunedLens, moments: LeastSquaresMoments, alpha: float = 1e-5) -> TunedLens:
    """Set every translator of `lens` to the closed-form fit of `moments` (full or rank r,
    with an intercept if the lens has biases); returns `lens`. One pass of moments serves
    lenses of every rank (benchmarks/lens_rank.py)."""
    eye = torch.eye(lens.config.d_model, dtype=torch.float64, device=moments.xx.device)
    with torch.no_grad():
        for layer in range(lens.n_layers):
            translator = lens[layer]
            intercept = translator.bias is not None
            if isinstance(translator, LowRankTranslator):
                U, V, offset = moments.solve_low_rank(layer, translator.rank, alpha, intercept)
                translator.U.copy_(U)
                translator.V.copy_(V)
            else:
                matrix, offset = moments.solve(layer, alpha, intercept=intercept)
                translator.weight.copy_(matrix - eye)
            if translator.bias is not None:
                translator.bias.copy_(offset)
    lens.fit_settings = {"method": "fast fit", "alpha": alpha, "tokens": moments.count}
    return lens
