"""Closed-form tuned lens: per-layer ridge least squares to the final residual.

For each layer ℓ, fit `y ≈ M x + b` from the layer's residual x to the final residual y
(the input of the final norm), with the ridge pulling M toward the identity:

    minimise  Σ ‖y − M x − b‖² + λ ‖M − I‖²,   λ = α · tr(Cov x) / d   (b unpenalised)

One streaming pass of the model accumulates Σ x xᵀ, Σ x yᵀ, Σ x, Σ y and the count in
float64 (the matmuls themselves in float32); each layer is then one `(d+1)²` solve. The
translator of a `TunedLens` is `h ↦ h + W h + b`, so `W = M − I`.

Least squares is not the KL objective the lens is judged by, but it starts a KL
fine-tune far closer to the optimum than the identity does (docs/performance.md measures it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.core import ModelAdapter, distributed
from hooklens.core.precision import retain_freed_memory
from hooklens.errors import InputError
from hooklens.lenses.tuned import TunedLens


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
        """Add rows of one layer's inputs `x` with the shared targets `y`."""
        x32, y32 = x.float(), y.float()
        self.xx[layer] += (x32.T @ x32).double()
        self.xy[layer] += (x32.T @ y32).double()
        self.x[layer] += x32.sum(0).double()

    def add_targets(self, y: Float[Tensor, "rows d_model"]) -> None:
        """Count the rows of a batch once (call once per batch, not per layer)."""
        self.y += y.float().sum(0).double()
        self.count += y.shape[0]

    def all_reduce(self) -> None:
        """Sum the moments of every rank (data-parallel runs; a no-op for one process)."""
        for tensor in (self.xx, self.xy, self.x, self.y):
            distributed.all_reduce_sum_(tensor)
        count = torch.tensor([self.count], dtype=torch.float64, device=self.xx.device)
        self.count = int(distributed.all_reduce_sum_(count).item())

    def solve(
        self, layer: int, alpha: float = 1e-5, intercept: bool = True
    ) -> tuple[Float[Tensor, "d_model d_model"], Float[Tensor, " d_model"]]:
        """`(M, b)` minimising the ridge objective for `layer` (float64); `b = 0` without
        an intercept."""
        if self.count == 0:
            raise InputError("no data: call update() with at least one batch first")
        d = self.xx.shape[-1]
        n = float(self.count)
        sum_x = self.x[layer]
        covariance_trace = torch.trace(self.xx[layer]) - sum_x @ sum_x / n
        ridge = alpha * covariance_trace / d
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


def fit_tuned_lens(
    model: Any,
    token_batches: Iterable[Int[Tensor, "batch pos"]],
    *,
    alpha: float = 1e-5,
    component: str = "resid_pre",
    bias: bool = True,
    progress: bool = True,
) -> TunedLens:
    """A `TunedLens` fitted in closed form on `token_batches` (one pass of the model).

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
    lens = TunedLens.from_model(adapter, bias=bias, component=component)
    names = adapter.residual_hook_names(lens.component)
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
                hook = adapter.hook_name(lens.component, layer)
                moments.update(layer, cache[hook].reshape(-1, adapter.d_model), y)
            bar.set_postfix(tokens=moments.count)
        moments.all_reduce()  # under torchrun each rank saw its own shard
        eye = torch.eye(adapter.d_model, dtype=torch.float64, device=adapter.device)
        for layer in range(adapter.n_layers):
            matrix, offset = moments.solve(layer, alpha, intercept=bias)
            translator = lens[layer]
            translator.weight.copy_(matrix - eye)
            if translator.bias is not None:
                translator.bias.copy_(offset)
    lens.fit_settings = {"method": "fast fit", "alpha": alpha, "tokens": moments.count}
    return lens
