"""Inverting the unembedding: a hidden state whose logits match a target distribution.

`Unembed.invert` calls `invert_unembed` here, which needs only what `UnembedLike` names
(the final norm, W_U, b_U and the logits of a hidden state), so this module imports no
`Unembed`. The objective is KL(p ‖ q(h)), p the
softmax of the target logits and q(h) the unembedding's distribution at hidden state h,
plus an optional prior term −w·log prior(norm(h)) evaluated on the *normalised* state (the
final norm makes the logits scale-invariant in h, so a prior on h itself would just
shrink it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens.errors import InputError

OptimizerName = Literal["lbfgs", "sgd"]
OPTIMIZERS = ("lbfgs", "sgd")
MOMENTUM = 0.9  # for "sgd": plain gradient descent crawls on this ill-conditioned objective


@runtime_checkable
class UnembedLike(Protocol):
    """What inversion reads of an unembedding (`hooklens.core.unembed.Unembed` is one)."""

    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"] | None

    @property
    def d_model(self) -> int: ...

    @property
    def d_vocab(self) -> int: ...

    def normalize(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's final norm."""
        ...

    def __call__(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits over the whole vocabulary."""
        ...


@dataclass
class InversionOutput:
    """What `Unembed.invert` found.

    Attributes:
        preimage: `[..., d_model]` the hidden state, before the final norm: `unembed(preimage)`
            gives the matched logits. (tuned-lens returns the state after the final norm;
            that is `unembed.normalize(preimage)`.)
        grad_norm: norm of the objective's gradient at the preimage.
        kl: mean KL(target ‖ unembed(preimage)) over the leading axes, nats.
        loss: the objective: `kl` plus the prior term.
        nfev: how many times the objective was evaluated.
    """

    preimage: Float[Tensor, "... d_model"]
    grad_norm: Tensor
    kl: Tensor
    loss: Tensor
    nfev: int


def optimizer_name(optimizer: str | Enum) -> str:
    """`"lbfgs"` or `"sgd"` from a string in any case or an Enum member."""
    name = str(optimizer.value if isinstance(optimizer, Enum) else optimizer).lower()
    if name not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return name


def least_squares_start(
    unembed: UnembedLike, logits: Float[Tensor, "... vocab"]
) -> Float[Tensor, "... d_model"]:
    """A starting hidden state: the least-squares solution of `h W_U = logits − mean`.

    Softmax ignores a constant shift of the logits, hence the centring. The final norm
    is ignored; when TransformerLens folded its gain into `W_U` (the default processing)
    this start is exact up to scale for RMSNorm models.
    """
    W_U = unembed.W_U.detach().float()
    centred = logits - logits.mean(-1, keepdim=True)
    if unembed.b_U is not None:
        b_U = unembed.b_U.detach().float()
        centred = centred - (b_U - b_U.mean())
    flat = centred.reshape(-1, centred.shape[-1])
    solution = torch.linalg.lstsq(W_U.T, flat.T).solution.T  # [rows, d_model]
    return solution.reshape(*logits.shape[:-1], W_U.shape[0])


def invert_unembed(
    unembed: UnembedLike,
    logits: Float[Tensor, "... vocab"],
    *,
    h0: Float[Tensor, "... d_model"] | None = None,
    max_iter: int = 1000,
    optimizer: OptimizerName | str | Enum = "lbfgs",
    prior_weight: float = 0.0,
    prior: torch.distributions.Distribution | None = None,
    step_size: float = 1.0,
    tol: float = 1e-3,
    weight: Tensor | None = None,
) -> InversionOutput:
    """Find a hidden state whose logits match `logits`, by minimising KL.

    `Unembed.invert` calls it: `unembed.invert(logits, ...)` is
    `invert_unembed(unembed, logits, ...)`.

    Minimises KL(softmax(logits) ‖ softmax(unembed(h))) over `h`, plus
    `prior_weight × −log prior(normalize(h))` when a prior is given.

    Args:
        logits: `[..., d_vocab]` target logits; every leading index is inverted
            independently (the objective is their mean).
        h0: `[..., d_model]` start; default: the least-squares solution of
            `h W_U = logits − mean(logits)`.
        max_iter: most evaluations of the objective.
        optimizer: `"lbfgs"` (strong-Wolfe line search) or `"sgd"` (with Nesterov
            momentum 0.9); a string in any case or an Enum whose value is one of them.
        prior_weight: weight of the prior term (0: none).
        prior: a `torch.distributions.Distribution` over normalised hidden states.
        step_size: L-BFGS's initial step or SGD's learning rate.
        tol: stop once the loss is below it (or the gradient norm below `tol` × 1e-3:
            a stationary point, for targets no hidden state reaches).
        weight: multiplies the target probabilities in the KL (e.g. `[d_vocab]` to
            weight tokens).

    Returns:
        `InversionOutput(preimage, grad_norm, kl, loss, nfev)`; `preimage` is the
        hidden state *before* the final norm.

    Examples:
        >>> out = invert_unembed(unembed, logits[0, -1])  # = unembed.invert(logits[0, -1])
        >>> bool(out.kl < 1e-3), out.preimage.shape
        (True, torch.Size([32]))
    """
    name = optimizer_name(optimizer)
    if logits.shape[-1] != unembed.d_vocab:
        raise InputError(
            f"logits must end in the vocabulary ({unembed.d_vocab}), "
            f"got shape {tuple(logits.shape)}"
        )
    if prior_weight and prior is None:
        raise InputError("prior_weight > 0 needs a prior (a torch.distributions.Distribution)")
    if max_iter < 1:
        raise InputError(f"max_iter must be at least 1, got {max_iter}")
    target_logits = logits.detach().float()
    if not torch.isfinite(target_logits).all():
        raise InputError("the target logits hold NaN or infinite values")
    log_p = target_logits.log_softmax(-1)
    p = log_p.exp() if weight is None else log_p.exp() * weight

    shape = (*target_logits.shape[:-1], unembed.d_model)
    if h0 is None:
        h0 = least_squares_start(unembed, target_logits)
    elif tuple(h0.shape) != shape:
        # Broadcasting would silently invert something else.
        raise InputError(f"h0 must have shape {shape}, got {tuple(h0.shape)}")
    h = torch.nn.Parameter(h0.detach().float().clone())

    def objective() -> tuple[Tensor, Tensor]:
        log_q = unembed(h).float().log_softmax(-1)
        kl = (p * (log_p - log_q)).sum(-1).mean()
        loss = kl
        if prior_weight:
            assert prior is not None
            loss = kl - prior_weight * prior.log_prob(unembed.normalize(h)).mean()
        return loss, kl

    nfev = 0
    last: dict[str, Tensor] = {}

    def closure() -> Tensor:
        nonlocal nfev
        nfev += 1
        with torch.enable_grad():
            loss, kl = objective()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the inversion objective became {loss.item()}")
            # autograd.grad, not backward(): the model's own weights must not collect .grad
            (h.grad,) = torch.autograd.grad(loss, [h])
        last.update(loss=loss.detach(), kl=kl.detach())
        return loss.detach()

    def converged() -> bool:
        assert h.grad is not None
        # A stationary point short of `tol` (an unreachable target) also stops.
        return bool(last["loss"] < tol or h.grad.norm() < tol * 1e-3)

    closure()  # the starting point
    if name == "sgd":
        sgd = torch.optim.SGD([h], lr=step_size, momentum=MOMENTUM, nesterov=MOMENTUM > 0)
        while not converged() and nfev < max_iter:
            sgd.step()  # uses h.grad from the last evaluation
            closure()
    else:
        lbfgs = torch.optim.LBFGS(
            [h],
            lr=step_size,
            max_iter=min(20, max_iter),
            line_search_fn="strong_wolfe",
            tolerance_grad=tol * 1e-4,
            tolerance_change=torch.finfo(torch.float32).eps,
        )
        while not converged() and nfev < max_iter:
            previous = last["loss"]
            lbfgs.step(closure)
            closure()  # loss and gradient where L-BFGS stopped
            if previous - last["loss"] <= 1e-9 * max(1.0, abs(float(previous))):
                break  # no progress left in float32
    assert h.grad is not None
    grad_norm = h.grad.norm()
    return InversionOutput(
        preimage=h.detach(),
        grad_norm=grad_norm.detach(),
        kl=last["kl"],
        loss=last["loss"],
        nfev=nfev,
    )
