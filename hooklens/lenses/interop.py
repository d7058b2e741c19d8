"""Our lenses as the `lens=` translator of TransformerLens 4's `logit_lens` tool.

`transformer_lens.tools.analysis.logit_lens(model, input, lens=f)` (TransformerLens ≥ 4;
3.9 has no such tool) stacks the residual stream with `cache.accumulated_resid`, calls
`f(entry, index)` on each stack entry, and reads what `f` returns through the model's
own final norm and unembedding, in row chunks. So `f` must return a **hidden state**
(`[..., d_model]`), not logits, and `index` is the entry's place in the *whole* stack
(also when `layers=` keeps only some entries):

    incl_mid=False:  index ℓ < n → blocks.ℓ.hook_resid_pre,  index n → the final residual
    incl_mid=True:   index 2ℓ → resid_pre ℓ,  2ℓ + 1 → resid_mid ℓ,  2n → the final residual

with `n = n_layers` and the final residual `blocks.{n-1}.hook_resid_post` (the tool's
label `final_post`). A hooklens lens's row ℓ reads `lens.component` of block ℓ and row
`n` the final residual, so the translator maps each entry onto the row that reads the
same hook point:

    stack entry                 resid_pre lens   resid_mid lens   resid_post lens
    resid_pre ℓ, ℓ ≥ 1          row ℓ            refused          row ℓ - 1
    resid_pre 0 (embeddings)    row 0            refused          refused (*)
    resid_mid ℓ                 refused          row ℓ            refused
    final residual              row n            row n            row n

(*) A `JacobianLens` reads the embeddings with the identity at either component (it has
no Jacobian for them; its `resid_pre` row 0 says so), and so does the translator. A
`resid_post` lens's row `n - 1` (its translator on the final residual) has no stack
entry: the tool reads the final residual as the model does, like our row `n`.

Refused entries raise `InputError` naming the `layers=` (or `incl_mid=`) to pass. The
readout equals `PredictionTrajectory.from_lens_and_cache(lens, ..., residual_component=
lens.component)` row for row (`lens_row(index)` says which row); `lens.transform_hidden`
itself already is the protocol for a `resid_pre` lens and `incl_mid=False`, but a `Lens`
object is not: calling it returns logits (`Lens.forward` unembeds).
"""

from __future__ import annotations

import operator
from typing import Any

from jaxtyping import Float
from torch import Tensor

from hooklens._checks import validate_hidden
from hooklens.core import check_same_model
from hooklens.errors import InputError, InputTypeError
from hooklens.lenses.base import Lens
from hooklens.lenses.jacobian import JacobianLens


class TransformerLensTranslator:
    """A hooklens lens as `f(entry, index) -> entry` for TransformerLens's `logit_lens`
    (module docstring: the stack indices and the rows they map to).

    Build it with `transformer_lens_translator(lens)`; pass the same `incl_mid` to both.
    """

    def __init__(self, lens: Lens, *, incl_mid: bool):
        self.lens = lens
        self.incl_mid = incl_mid

    def __repr__(self) -> str:
        return f"TransformerLensTranslator({self.lens!r}, incl_mid={self.incl_mid})"

    def __call__(self, entry: Float[Tensor, "... d_model"], index: int) -> Tensor:
        """The stack entry at `index` translated by the lens row reading its hook point."""
        validate_hidden(entry, self.lens.unembed.d_model, what=f"logit_lens stack entry {index}")
        row = self.lens_row(index)
        if row is None:  # a Jacobian lens's embeddings: no Jacobian, the identity
            return entry
        return self.lens.transform_hidden(entry, row)

    def lens_row(self, index: int) -> int | None:
        """Our row (`0..n_layers`, as in a `PredictionTrajectory`) that reads the same
        hook point as stack entry `index` of `logit_lens`; `None` where the lens reads it
        with the identity without a row (a `resid_post` Jacobian lens's embeddings).

        Raises:
            InputError: the lens was not trained on that entry's hook point, or the
                index is outside the stack this `incl_mid` describes.
        """
        n_layers = self.lens.n_layers
        component, block = self._hook_point(operator.index(index))
        if component == "final":
            return n_layers
        lens_component = self.lens.component
        if component == lens_component:
            return block
        if component == "resid_pre" and lens_component == "resid_post":
            if block >= 1:
                return block - 1  # resid_post of block ℓ-1 is resid_pre of block ℓ
            if isinstance(self.lens, JacobianLens):
                return None
        raise InputError(self._refusal(index, component, block))

    def _hook_point(self, index: int) -> tuple[str, int]:
        """`(component, block)` of stack entry `index`; `("final", n_layers)` for the last."""
        n_layers = self.lens.n_layers
        last = 2 * n_layers if self.incl_mid else n_layers
        if not 0 <= index <= last:
            raise InputError(
                f"logit_lens passed stack entry {index}, but the stack of a {n_layers}-block "
                f"model with incl_mid={self.incl_mid} has entries 0..{last}: pass the same "
                "incl_mid to transformer_lens_translator as to logit_lens, and a lens made "
                "for the model it reads (transformer_lens_translator(lens, model=model) "
                "checks)"
            )
        if index == last:
            return "final", n_layers
        if not self.incl_mid:
            return "resid_pre", index
        return ("resid_mid" if index % 2 else "resid_pre"), index // 2

    def _refusal(self, index: int, component: str, block: int) -> str:
        return (
            f"logit_lens stack entry {index} is blocks.{block}.hook_{component}, which "
            f"this {type(self.lens).__name__} (component={self.lens.component!r}) has no "
            f"row for; pass layers={self._readable_entries()} to logit_lens to read the "
            "entries it was trained on"
            + (
                " (or incl_mid=False to both)"
                if self.incl_mid and self.lens.component != "resid_mid"
                else ""
            )
        )

    def _readable_entries(self) -> str:
        """The `layers=` argument selecting every entry the lens has a row for."""
        n_layers = self.lens.n_layers
        component = self.lens.component
        if not self.incl_mid:
            return f"range(1, {n_layers + 1})"  # only resid_post lenses get here
        if component == "resid_mid":
            return f"[*range(1, {2 * n_layers}, 2), {2 * n_layers}]"
        # A resid_post lens has no row for the embeddings (entry 0); a J-lens reads them.
        start = 2 if component == "resid_post" and not isinstance(self.lens, JacobianLens) else 0
        return f"range({start}, {2 * n_layers + 1}, 2)"


def transformer_lens_translator(
    lens: Lens, *, incl_mid: bool | None = None, model: Any = None
) -> TransformerLensTranslator:
    """`lens` as the `lens=` argument of TransformerLens 4's `logit_lens`, giving the
    readout of our `PredictionTrajectory` of the same lens (its own `lens.component`).

    Args:
        lens: any hooklens `Lens` (`LogitLens`, `TunedLens`, `JacobianLens`, ...).
        incl_mid: the `incl_mid` passed to `logit_lens` (the translator only sees stack
            indices, whose meaning depends on it). Default: `True` for a `resid_mid`
            lens (only that stack holds its entries), else `False`.
        model: the model `logit_lens` reads; when given, a lens made for another model
            (sizes, weight processing, unembedding) is refused here, since the tool hands
            the translator bare tensors.

    Raises:
        InputTypeError: `lens` is not a hooklens `Lens`.
        InputError: a `resid_mid` lens with `incl_mid=False` (that stack has no
            `resid_mid` entries).
        LensMismatchError: `model` is not the lens's model.

    Examples:
        On TransformerLens 4 (a fresh `TunedLens` is the logit lens: load or fit one):

        >>> from transformer_lens.tools.analysis import logit_lens
        >>> from hooklens import PredictionTrajectory, TunedLens, models
        >>> from hooklens.lenses import transformer_lens_translator
        >>> model = models.load("smollm2-135m", model_class="bridge")    # doctest: +SKIP
        >>> # here: the examples' tiny 4-layer bridge instead
        >>> lens = TunedLens.from_model(model)
        >>> tokens = model.to_tokens("The Eiffel Tower is in the city of")
        >>> logits, cache = model.run_with_cache(tokens)
        >>> result = logit_lens(model, cache=cache, positions=None, return_type="log_probs",
        ...                     lens=transformer_lens_translator(lens, model=model))
        >>> traj = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
        >>> row = transformer_lens_translator(lens).lens_row(3)
        >>> bool((result.values[3] - traj.layer_log_probs(row)).abs().max() < 1e-4)
        True
    """
    if not isinstance(lens, Lens):
        hint = (
            " (for TransformerLens's own JacobianLens use JacobianLens.from_transformer_lens("
            "tl_lens, model) first)"
            if type(lens).__name__ == "JacobianLens"
            else ""
        )
        raise InputTypeError(f"lens must be a hooklens Lens, got {type(lens).__name__}{hint}")
    if incl_mid is None:
        incl_mid = lens.component == "resid_mid"
    if lens.component == "resid_mid" and not incl_mid:
        raise InputError(
            "this lens reads resid_mid, and logit_lens stacks resid_mid entries only with "
            "incl_mid=True: pass incl_mid=True to both (or leave it out here)"
        )
    if model is not None:
        check_same_model(lens.adapter, model, "the model passed to transformer_lens_translator")
    return TransformerLensTranslator(lens, incl_mid=bool(incl_mid))
