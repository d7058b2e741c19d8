"""Subspace ablation and causal bases: which directions of a layer's residual a lens's
readout depends on, and what the model does without them.

Removing a subspace. For a basis `A [d, k]` of full column rank with column space S,
`P = A (AᵀA)⁻¹ Aᵀ` is the orthogonal projection onto S (`P = A Aᵀ` when the columns are
orthonormal; otherwise `(AᵀA)⁻¹` is applied by a linear solve, never inverted). Of a
batch of vectors `u [..., d]`, the three modes keep the component in S⊥ and replace the
one in S:

    zero:      u ↦ u − P u                (projection onto the orthogonal complement)
    mean:      u ↦ u − P u + P ū          (ū: the mean of u over all its leading axes)
    resample:  u ↦ u − P u + P u_π        (π: a derangement of the rows, no row in place)

Causal basis (the "causal basis extraction" of Belrose et al., "Eliciting Latent
Predictions from Large Language Models with the Tuned Lens", 2023). For lens row ℓ with
hidden states h, the first direction maximises the readout's divergence from itself,

    v₁ = argmax_{‖v‖=1}  E_tokens KL( lens(h, ℓ) ‖ lens(remove(h, v), ℓ) ),

and direction j maximises it over unit vectors orthogonal to v₁ … v_{j−1}; its energy is
that expected KL in nats (with `labels`: the increase of next-token cross-entropy). The
vectors, sorted by decreasing energy, form an orthonormal `CausalBasis`.

Layer convention. Rows count like a lens's, as the table in `hooklens.core.residuals`
states (row n_layers is the final residual for every component).
`ablate_subspace(model, basis, ℓ, component=lens.component)` therefore changes exactly
the tensor that `lens` reads at row ℓ (and everything the model computes from it).

Examples:
    >>> import torch
    >>> from hooklens.causal.subspaces import remove_subspace
    >>> u = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    >>> remove_subspace(u, torch.tensor([1.0, 0.0, 0.0]))
    tensor([[0., 2., 3.],
            [0., 2., 1.]])
    >>> remove_subspace(u, torch.tensor([1.0, 0.0, 0.0]), mode="mean")
    tensor([[2., 2., 3.],
            [2., 2., 1.]])
    >>> basis = torch.eye(32)[:, :4]  # [d_model, k]: here the first four axes
    >>> with ablate_subspace(model, basis, layer=2):
    ...     logits = model(tokens)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens._checks import (
    check_id_range,
    positive_int,
    token_id_tensor,
    validate_hidden,
)
from hooklens.causal._projection import (
    ABLATION_MODES,
    AblationMode,
    CausalBasis,
    checked_basis,
    checked_mode,
    pooled_rows,
    remove,
    remove_subspace,
)
from hooklens.causal.derangement import derange, sample_derangement
from hooklens.causal.interventions import Hook
from hooklens.core import ModelAdapter, distributed, normalize_component
from hooklens.core.chunked_kl import (
    kl_to_target,
    target_distribution,
    target_projection,
    weight_chunks,
)
from hooklens.core.residuals import row_hook_names
from hooklens.errors import InputError, InputTypeError, NonFiniteActivationError
from hooklens.lenses.base import Lens

__all__ = [
    "ABLATION_MODES",
    "AblationMode",
    "CausalBasis",
    "ablate_subspace",
    "derange",
    "extract_causal_bases",
    "remove_subspace",
    "residual_hook_name",
    "sample_derangement",
    "subspace_ablation",
]


# --- as a TransformerLens hook -----------------------------------------------------------


def residual_hook_name(model: Any, layer: int, component: str = "resid_pre") -> str:
    """The hook a lens reading `component` reads at row `layer` (`0..n_layers`; negative
    counts from the end): `component` of block `layer`, or the last block's `resid_post`
    for the final row."""
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
    return row_hook_names(adapter, layer, normalize_component(component))[0]


def subspace_ablation(
    model: Any,
    basis: Float[Tensor, "d_model k"] | Float[Tensor, " d_model"] | CausalBasis,
    layer: int,
    mode: AblationMode = "zero",
    orthonormal: bool = False,
    component: str = "resid_pre",
) -> Hook:
    """A `(hook_name, hook_fn)` pair that removes `basis`'s column space from the residual
    `component` at lens row `layer` (see `remove_subspace` and the layer convention in the
    module docstring), for `fwd_hooks=[...]`, `model.hooks(...)` or `run_with_hooks`.

    "mean" and "resample" pool over every position of every prompt in the run the hook
    sees; "resample" draws its derangement from torch's default generator.

    Examples:
        >>> from hooklens import PredictionTrajectory
        >>> basis = torch.eye(32)[:, :4]  # [d_model, k], or a CausalBasis
        >>> hook = subspace_ablation(model, basis, layer=2)
        >>> hook[0]
        'blocks.2.hook_resid_pre'
        >>> ablated = PredictionTrajectory.from_lens_and_model(
        ...     lens, model, "The capital of France is", fwd_hooks=[hook])
    """
    adapter = ModelAdapter(model)
    name = residual_hook_name(adapter, layer, component)
    vectors, orthonormal = checked_basis(basis, orthonormal, adapter.d_model)
    vectors = vectors.detach()
    mode = checked_mode(mode)

    def hook(activation: Tensor, hook: Any = None) -> Tensor:
        permutation = None
        if mode != "zero":
            rows = pooled_rows(activation, mode)
            if mode == "resample":
                permutation = sample_derangement(rows, device=activation.device)
        return remove(activation, vectors, mode, orthonormal, permutation)

    return name, hook


@contextmanager
def ablate_subspace(
    model: Any,
    basis: Float[Tensor, "d_model k"] | Float[Tensor, " d_model"] | CausalBasis,
    layer: int,
    mode: AblationMode = "zero",
    orthonormal: bool = False,
    component: str = "resid_pre",
) -> Iterator[Any]:
    """While active, every forward pass of `model` runs with `basis`'s column space
    removed from the residual `component` at lens row `layer` (`subspace_ablation`).

    The hook is removed on exit, also when the block raises; hooks added before stay.

    Examples:
        >>> basis = torch.eye(32)[:, :4]  # [d_model, k], or a CausalBasis
        >>> with ablate_subspace(model, basis, layer=2, mode="mean"):
        ...     logits = model(tokens)
        >>> logits.shape
        torch.Size([1, 6, 96])
    """
    hook = subspace_ablation(
        model, basis, layer, mode=mode, orthonormal=orthonormal, component=component
    )
    with model.hooks(fwd_hooks=[hook]):
        yield model


# --- causal bases ----------------------------------------------------------------------


def extract_causal_bases(
    lens: Lens,
    hiddens: Float[Tensor, "layer_and_output ... d_model"] | Sequence[Float[Tensor, "... d_model"]],
    k: int,
    *,
    labels: Int[Tensor, "... pos"] | None = None,
    max_iter: int = 100,
    mode: AblationMode = "mean",
    layers: Iterable[int] | None = None,
    progress: bool = True,
) -> Iterator[CausalBasis]:
    """Yield a `CausalBasis` of `k` directions for each lens row in `layers`.

    Direction j maximises (L-BFGS, strong Wolfe line search, at most `max_iter`
    iterations) the mean over tokens of KL(lens(h) ‖ lens(remove(h, v))) over unit
    vectors v orthogonal to directions 1 … j−1, starting from the j-th left singular
    vector of the lens's effective unembedding at that row (`Mᵀ W_U` for a lens whose
    `transform_hidden` is `h ↦ M h + c`). See the module docstring for the definition.

    The KL is taken to the lens's own unablated readout and computed chunk by chunk
    over the vocabulary, forward and backward (`hooklens.core.chunked_kl.kl_to_target`):
    one `[tokens, vocab]` target per row, never logits, probabilities and their
    gradient at once. The lens is not changed and gets no gradients. Under
    torch.distributed each rank passes its own tokens; loss and gradient are averaged
    over ranks, so every rank finds the same basis ("mean" and "resample" pool over the
    rank's own tokens).

    Args:
        lens: any hooklens `Lens` (logit, tuned, Jacobian, ...).
        hiddens: one hidden state `[batch, pos, d_model]` (or `[rows, d_model]`) per
            lens row `0..n_layers`, as the lens reads it: e.g.
            `residual_stack(cache, lens.component)`.
        k: directions per row, `1..d_model`.
        labels: the token ids the hiddens were computed from (`[batch, pos]`, the
            hiddens' leading shape; −1 = none): the energy is then the increase of
            cross-entropy of position t's readout against `labels[..., t + 1]`.
        max_iter: L-BFGS iterations per direction.
        mode: how a direction is removed while it is optimised: "mean" (default, as
            tuned-lens), "zero" or "resample" (one derangement per row, kept fixed).
        layers: lens rows to extract (default: every row but the final residual).
        progress: show a tqdm bar (rank 0 only).

    Examples:
        >>> from hooklens import LogitLens, residual_stack
        >>> _, cache = model.run_with_cache(tokens)
        >>> lens = LogitLens.from_model(model)
        >>> hiddens = residual_stack(cache, lens.component)
        >>> for basis in extract_causal_bases(lens, hiddens, k=4, layers=[2]):
        ...     print(basis)
        CausalBasis(layer=2, k=4, d_model=32, energies=[...])
    """
    if not isinstance(lens, Lens):
        raise InputTypeError(
            f"lens must be a hooklens Lens (LogitLens, TunedLens, JacobianLens, ...), "
            f"got {type(lens).__name__}"
        )
    d_model = lens.unembed.d_model
    k = positive_int(k, "k", at_most=d_model)
    max_iter = positive_int(max_iter, "max_iter")
    mode = checked_mode(mode)
    hiddens = list(hiddens)  # a residual_stack tensor, or a list of tensors
    if len(hiddens) != lens.n_layers + 1:
        raise InputError(
            f"hiddens holds {len(hiddens)} hidden states, but the lens has "
            f"{lens.n_layers + 1} rows (0..{lens.n_layers}, {lens.n_layers} = the final "
            "residual): pass one per row, e.g. residual_stack(cache, lens.component)"
        )
    rows = list(range(lens.n_layers)) if layers is None else [lens.layer_index(i) for i in layers]
    for row in rows:
        hidden = hiddens[row]
        validate_hidden(hidden, d_model, f"hiddens[{row}]")
        if mode != "zero":
            pooled_rows(hidden, mode)
    if labels is not None:
        labels = token_id_tensor(labels, "labels")
        check_id_range(labels, "labels", lens.unembed.d_vocab, allow_missing=True)
        for row in rows:
            _next_token_rows(labels, hiddens[row].shape, row)
    return _extract(lens, hiddens, k, labels, max_iter, mode, rows, progress)


def _extract(
    lens: Lens,
    hiddens: list[Tensor],
    k: int,
    labels: Tensor | None,
    max_iter: int,
    mode: str,
    rows: list[int],
    progress: bool,
) -> Iterator[CausalBasis]:
    unembed = lens.unembed
    device = unembed.W_U.device
    w_chunks = weight_chunks(unembed.W_U, unembed.chunk_size, torch.float32)
    gram = _unembedding_gram(w_chunks)
    bar = tqdm(
        total=len(rows) * k,
        disable=not (progress and distributed.is_primary()),
        desc="causal bases",
    )
    try:
        for row in rows:
            hidden = hiddens[row].detach().to(device)
            hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
            scored = None if labels is None else _next_token_rows(labels, hidden.shape, row)
            hidden = hidden.reshape(-1, hidden.shape[-1])
            energy = _energy_function(lens, hidden, row, scored, mode, w_chunks)
            start = _initial_directions(lens, row, gram, k).to(hidden.dtype)
            energies = torch.zeros(k, device=device)
            vectors = torch.zeros_like(start)
            for j in range(k):
                bar.set_description(f"causal basis of row {row}, direction {j + 1}/{k}")
                direction = _best_direction(energy, start[:, j], vectors[:, :j], max_iter, bar)
                with torch.no_grad():
                    energies[j] = _mean_over_ranks_(energy(direction))
                vectors[:, j] = direction
                bar.set_postfix(energy=f"{energies[j].item():.4g}")
                bar.update()
            # Greedy energies need not decrease (a later direction can find more).
            order = energies.argsort(descending=True)
            yield CausalBasis(energies[order], vectors[:, order], row)
    finally:
        bar.close()


def _best_direction(
    energy: Callable[[Tensor], Tensor],
    start: Float[Tensor, " d_model"],
    found: Float[Tensor, "d_model j"],
    max_iter: int,
    bar: Any,
) -> Float[Tensor, " d_model"]:
    """The unit vector orthogonal to `found` that maximises `energy`, from `start`."""

    def project(x: Tensor) -> Tensor:
        # Onto the complement of the directions found so far, then onto the unit
        # sphere: the energy is a function of the direction only, so L-BFGS may let the
        # norm of its parameter drift.
        x = x - found @ (found.T @ x)
        return x / (x.norm() + torch.finfo(x.dtype).eps)

    v = torch.nn.Parameter(project(start).detach().clone())
    optimizer = torch.optim.LBFGS([v], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        loss = -energy(project(v))
        # autograd.grad, not backward: the lens's own parameters get no .grad.
        (grad,) = torch.autograd.grad(loss, v)
        loss = _mean_over_ranks_(loss.detach())
        v.grad = _mean_over_ranks_(grad)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteActivationError(
                "the lens's readout of the ablated hidden states is not finite (KL = "
                f"{-loss.item()}); check the lens and the hidden states' dtype"
            )
        bar.set_postfix(energy=f"{-loss.item():.4g}")
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return project(v.detach())


def _energy_function(
    lens: Lens,
    hidden: Float[Tensor, "rows d_model"],
    row: int,
    labelled: tuple[Tensor, Tensor] | None,
    mode: str,
    w_chunks: list[Tensor],
) -> Callable[[Tensor], Tensor]:
    """`direction ↦ E_tokens KL(lens(hidden) ‖ lens(remove(hidden, direction)))` (or the
    increase of next-token cross-entropy), differentiable in the direction."""
    unembed = lens.unembed
    scored: Tensor | None = None
    with torch.no_grad():
        if labelled is None:
            target_probs, target_neg_entropy = target_distribution(_lens_logits(lens, hidden, row))
        else:
            scored, targets = labelled
            # KL(one-hot ‖ p) = −log p(target): the cross-entropy, through the same
            # chunked loss.
            target_probs = torch.zeros(len(targets), unembed.d_vocab, device=hidden.device)
            target_probs[torch.arange(len(targets)), targets.to(hidden.device)] = 1.0
            target_neg_entropy = torch.zeros(len(targets), device=hidden.device)
            scored = scored.to(hidden.device)
        projection = (
            None
            if unembed.logit_softcap
            else target_projection(unembed, target_probs, w_chunks=w_chunks)
        )
    permutation = (
        sample_derangement(hidden.shape[0], device=hidden.device) if mode == "resample" else None
    )

    def divergence(h: Tensor) -> Tensor:
        translated = lens.transform_hidden(h, row)
        if scored is not None:
            translated = translated[scored]
        return kl_to_target(
            unembed, translated, target_probs, target_neg_entropy, projection, w_chunks=w_chunks
        )

    baseline = 0.0
    if labelled is not None:
        with torch.no_grad():
            baseline = float(_mean_over_ranks_(divergence(hidden)))

    def energy(direction: Tensor) -> Tensor:
        ablated = remove(hidden, direction[:, None], mode, True, permutation)
        return divergence(ablated) - baseline

    return energy


def _lens_logits(lens: Lens, hidden: Tensor, row: int) -> Float[Tensor, "rows vocab"]:
    """The lens's float32 logits, written chunk by chunk into one `[rows, vocab]` tensor."""
    translated = lens.transform_hidden(hidden, row)
    logits = torch.empty(hidden.shape[0], lens.unembed.d_vocab, device=hidden.device)
    for vocab, chunk in lens.unembed.logit_chunks(translated):
        logits[:, vocab] = chunk
    return logits


def _next_token_rows(
    labels: Int[Tensor, "... pos"], hidden_shape: torch.Size, row: int
) -> tuple[Int[Tensor, " scored"], Int[Tensor, " scored"]]:
    """The flattened rows that have a next token, and that token."""
    if len(hidden_shape) < 2 or tuple(labels.shape) != tuple(hidden_shape[:-1]):
        raise InputError(
            f"labels has shape {tuple(labels.shape)}, hiddens[{row}] {tuple(hidden_shape)}: "
            "labels must be the token ids the hidden states were computed from, of the "
            "hidden states' leading shape ([batch, pos])"
        )
    following = torch.full_like(labels, -1)
    following[..., :-1] = labels[..., 1:]
    following = following.reshape(-1)
    scored = (following >= 0).nonzero().squeeze(-1)
    if scored.numel() == 0:
        raise InputError(
            "labels leave no position with a next token to score: pass at least two "
            "positions per prompt (−1 marks a position without a token)"
        )
    return scored, following[scored]


def _unembedding_gram(w_chunks: list[Tensor]) -> Float[Tensor, "d_model d_model"]:
    """`W_U W_Uᵀ` in float64, summed over vocabulary chunks."""
    d_model = w_chunks[0].shape[0]
    gram = torch.zeros(d_model, d_model, dtype=torch.float64, device=w_chunks[0].device)
    for chunk in w_chunks:
        chunk64 = chunk.double()
        gram += chunk64 @ chunk64.T
    return gram


def _initial_directions(
    lens: Lens, row: int, gram: Float[Tensor, "d_model d_model"], k: int
) -> Float[Tensor, "d_model k"]:
    """The top-k left singular vectors of the lens's effective unembedding `Mᵀ W_U`.

    `Mᵀ` is read off `transform_hidden` as the images of the unit vectors minus that of
    zero (exact for the affine maps of the logit, tuned and Jacobian lenses); the left
    singular vectors of `Mᵀ W_U` are the eigenvectors of `Mᵀ (W_U W_Uᵀ) M`, a `[d, d]`
    matrix, so the vocabulary is never decomposed.
    """
    d_model = gram.shape[0]
    with torch.no_grad():
        eye = torch.eye(d_model, device=gram.device)
        linear = lens.transform_hidden(eye, row) - lens.transform_hidden(eye[:1] * 0, row)
        linear = linear.double()  # row i = M e_i, so this is Mᵀ
        _, eigenvectors = torch.linalg.eigh(linear @ gram @ linear.T)
    return eigenvectors.flip(-1)[:, :k].float()  # eigh sorts ascending


def _mean_over_ranks_(tensor: Tensor) -> Tensor:
    """Average `tensor` over the ranks in place (a no-op for one process)."""
    if distributed.active():
        distributed.all_reduce_sum_(tensor).div_(distributed.world_size())
    return tensor
