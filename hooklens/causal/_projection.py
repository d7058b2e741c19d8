"""Internal. Removing a subspace from vectors: `CausalBasis`, `remove_subspace` and the
projection arithmetic that `hooklens.causal.subspaces` (hooks, causal-basis extraction)
builds on. The formulas are in that module's docstring; it re-exports the public names.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.causal.derangement import sample_derangement
from hooklens.errors import InputError, InputTypeError, LensMismatchError

AblationMode = Literal["zero", "mean", "resample"]
ABLATION_MODES: tuple[str, ...] = get_args(AblationMode)


class CausalBasis(NamedTuple):
    """An orthonormal basis of the directions a lens reads at one layer, most causal first.

    The first two fields are tuned-lens's own (`energies, vectors = basis[:2]` ports).

    Attributes:
        energies: `[k]`, decreasing: the mean KL (nats) of the lens's readout when that
            direction alone is removed (or the increase of next-token cross-entropy, for
            a basis extracted with labels).
        vectors: `[d_model, k]`, orthonormal columns in the order of `energies`.
        layer: the lens row the basis was extracted at (`n_layers` = final residual).
    """

    energies: Float[Tensor, " k"]
    vectors: Float[Tensor, "d_model k"]
    layer: int

    @property
    def k(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[0])

    def __repr__(self) -> str:
        shown = ", ".join(f"{e:.4g}" for e in self.energies[:4].tolist())
        more = ", …" if self.k > 4 else ""
        return (
            f"CausalBasis(layer={self.layer}, k={self.k}, d_model={self.d_model}, "
            f"energies=[{shown}{more}])"
        )


def remove_subspace(
    u: Float[Tensor, "... d_model"],
    basis: Float[Tensor, "d_model k"] | Float[Tensor, " d_model"] | CausalBasis,
    mode: AblationMode = "zero",
    orthonormal: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "... d_model"]:
    """Remove what `u` holds along the column space of `basis` (see the module docstring).

    Args:
        u: vectors `[..., d_model]`; "mean" and "resample" pool over all leading axes.
        basis: `[d_model, k]` (its column space is removed), a `[d_model]` vector (its
            span), or a `CausalBasis` (orthonormal by construction).
        mode: "zero", "mean" or "resample".
        orthonormal: promise that the columns are orthonormal (skips the solve and the
            rank check; a wrong promise gives a wrong projection).
        generator: random source of the "resample" derangement.

    Returns:
        `u`'s shape and dtype; computed in the wider of `u`'s and `basis`'s dtypes,
        and at least float32 (a bfloat16 or float16 basis is solved in float32).
        Differentiable in `u` and `basis`.
    """
    if not isinstance(u, Tensor):
        raise InputTypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    vectors, orthonormal = checked_basis(basis, orthonormal, u.shape[-1] if u.ndim else None)
    mode = checked_mode(mode)
    if u.ndim == 0 or u.shape[-1] != vectors.shape[0]:
        raise InputError(
            f"u has shape {tuple(u.shape)}, but the basis is {tuple(vectors.shape)} "
            f"(d_model={vectors.shape[0]}): the last axis of u must be d_model"
        )
    if not u.is_floating_point():
        raise InputTypeError(f"u must be floating point, got {u.dtype}")
    permutation = None
    if mode != "zero":
        rows = pooled_rows(u, mode)
        if mode == "resample":
            permutation = sample_derangement(rows, device=u.device, generator=generator)
    return remove(u, vectors, mode, orthonormal, permutation)


def remove(
    u: Float[Tensor, "... d_model"],
    vectors: Float[Tensor, "d_model k"],
    mode: str,
    orthonormal: bool,
    permutation: Int[Tensor, " rows"] | None = None,
) -> Float[Tensor, "... d_model"]:
    """`remove_subspace` without the checks (for hooks and the optimiser's inner loop).

    Works on coordinates `c = u A (AᵀA)⁻¹` (`[rows, k]`), so no `[d, d]` projection is
    ever built: `P u = c Aᵀ`, and the mean (or deranged rows) of `P u` is that of `c`.
    """
    # At least float32: torch has no half-precision solve on the CPU (`lu_cpu`), and in
    # bfloat16 the Gram matrix AᵀA alone loses half the digits the result keeps.
    dtype = torch.promote_types(torch.promote_types(u.dtype, vectors.dtype), torch.float32)
    flat = u.reshape(-1, u.shape[-1]).to(dtype)
    A = vectors.to(device=u.device, dtype=dtype)
    coords = flat @ A
    if not orthonormal:
        coords = torch.linalg.solve(A.mT @ A, coords, left=False)  # c G = u A, G = AᵀA
    if mode == "zero":
        replacement = torch.zeros((), dtype=dtype, device=u.device)
    elif mode == "mean":
        replacement = coords.mean(0, keepdim=True)
    else:
        assert permutation is not None, "resample needs a derangement of the rows"
        replacement = coords[permutation]
    return (flat + (replacement - coords) @ A.mT).to(u.dtype).reshape(u.shape)


def checked_mode(mode: Any) -> AblationMode:
    """`mode` if it is one of `ABLATION_MODES`, else an `InputError`."""
    if mode not in ABLATION_MODES:
        raise InputError(
            f"mode must be one of {', '.join(map(repr, ABLATION_MODES))}; got {mode!r}"
        )
    return mode  # type: ignore[no-any-return]


def pooled_rows(u: Tensor, mode: str) -> int:
    """How many vectors "mean" or "resample" pools over (at least 2, else an `InputError`)."""
    rows = u.numel() // u.shape[-1]
    if rows < 2:
        raise InputError(
            f"{mode} ablation replaces each vector's component by one pooled over the "
            f"others, so it needs at least 2 vectors; u has shape {tuple(u.shape)}. "
            'Pass a batch (several positions or prompts), or use mode="zero"'
        )
    return rows


def checked_basis(basis: Any, orthonormal: bool, d_model: int | None) -> tuple[Tensor, bool]:
    """`basis` as a `[d, k]` matrix (and whether it is orthonormal), or a clear error."""
    if isinstance(basis, CausalBasis):
        basis, orthonormal = basis.vectors, True
    if not isinstance(basis, Tensor):
        raise InputTypeError(
            f"basis must be a [d_model, k] tensor, a [d_model] vector or a CausalBasis; "
            f"got {type(basis).__name__}"
        )
    if not basis.is_floating_point():
        raise InputTypeError(f"basis must be floating point, got {basis.dtype}")
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2:
        raise InputError(
            f"basis has shape {tuple(basis.shape)}; expected [d_model, k] (columns span the "
            "subspace) or a [d_model] vector"
        )
    d, k = basis.shape
    if d_model is not None and d != d_model:
        raise LensMismatchError(
            f"basis is {tuple(basis.shape)} (d_model={d}), but the activations have "
            f"d_model={d_model}: was the basis made for another model? Columns are the "
            "directions, so a [k, d_model] basis needs .T"
        )
    if k < 1 or k > d:
        raise InputError(
            f"basis is {tuple(basis.shape)}: a subspace of a {d}-dimensional space needs "
            f"1 to {d} columns, got {k}"
        )
    if not bool(torch.isfinite(basis).all()):
        raise InputError("basis holds NaN or infinite values")
    if not orthonormal:
        # In the basis's own precision (≥ float32): the solve below runs in it, so a basis
        # that is only numerically independent in float64 would still give garbage.
        check = basis.detach().to(torch.promote_types(basis.dtype, torch.float32))
        rank = int(torch.linalg.matrix_rank(check))
        if rank < k:
            raise InputError(
                f"basis is {tuple(basis.shape)} but has rank {rank}: its {k} columns are "
                f"linearly dependent, so the subspace is {rank}-dimensional. Drop the "
                "dependent columns, or orthonormalise them (torch.linalg.qr(basis).Q)"
            )
    return basis, orthonormal
