"""Where a trajectory's rows of logits come from: a lens reading cached residuals, or
log-probabilities computed elsewhere; and `mask_input`, which hides the input's tokens.

A `PredictionTrajectory` has one row of next-token distributions per layer plus a last
"output" row (the model's own). It streams its statistics over row blocks × vocabulary
chunks × rows, and asks its source for one `[rows, chunk]` tile at a time:

- `LensSource`: row `l < n_layers` is the lens's readout of layer `l`'s residual (one
  unembedding matmul per tile); the output row is the model's logits.
- `LogProbSource`: rows of a `[..., layer + 1, pos, vocab]` tensor that exists already
  (log-probabilities, or logits: every row is normalised in the stream), the last layer
  row being the model's output — the layout of tuned-lens's
  `PredictionTrajectory.log_probs`. Tiles are gathered copies: the caller's tensor is
  never written, and never copied whole.

- `MaskedRows`: any source with every token of each input sequence given probability 0
  at the lens rows (`mask_input`); the ONE place that rule lives.

Every tile is a fresh float32 tensor (the accumulators of `hooklens.stats.streaming`
work in place) whose `-inf` entries are raised to the finite floor.

Probability 0, one rule: a streamed tile or token logit writes it as `FLOOR`, the
finite float32 minimum (`exp` of it is an exact 0 and every sum stays finite); a full
row handed to a user (`full_row`, behind `layer_log_probs`) writes it as `-inf`, its
logarithm. The output row (`is_output`) is the model's own distribution and is never
masked.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.errors import (
    InputError,
    InputTypeError,
    LensChangedError,
    LensMismatchError,
    NonFiniteActivationError,
)
from hooklens.lenses.base import Lens
from hooklens.stats.streaming import finite_floor

FLOOR = finite_floor(torch.float32)


@dataclass
class Block:
    """One row block of one row, prepared once and read chunk by chunk.

    `hidden` is the lens's normalised input to W_U (lens rows of a `LensSource`);
    `batch`/`position` index a `LogProbSource`'s grid.
    """

    layer: int
    rows: slice
    hidden: Tensor | None = None
    batch: Tensor | None = None
    position: Tensor | None = None


class RowSource(ABC):
    """The logits of every row (layers `0..n_layers-1`, then the output) of a trajectory,
    over `rows = prod(batch) * pos` flattened positions."""

    n_layers: int
    vocab_size: int
    lens: Lens | None = None  # the lens reading the rows, if any
    component: str | None = None  # the residual it reads

    def is_output(self, layer: int) -> bool:
        """Whether row `layer` is the model's own output (the last row), not a lens row."""
        return layer == self.n_layers

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where tiles are computed; ids passed to `token_logits` must be there."""

    @abstractmethod
    def block(self, layer: int, rows: slice) -> Block:
        """Prepare `rows` of row `layer` (`n_layers` = the output) for reading."""

    @abstractmethod
    def tile(self, block: Block, vocab: slice) -> Float[Tensor, "rows chunk"]:
        """Fresh float32 logits of the tokens `vocab`, `-inf` at the finite floor."""

    @abstractmethod
    def token_logits(self, block: Block, ids: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        """The float32 logit of one token per row (ids ≥ 0), as `tile` would give it."""

    @abstractmethod
    def full_row(self, layer: int) -> Float[Tensor, "rows vocab"]:
        """Every logit of row `layer` at once (for `layer_log_probs`; do not modify)."""

    @abstractmethod
    def select_positions(self, positions: slice) -> RowSource:
        """The same source restricted to `positions` of the last input axis (no copy)."""

    @abstractmethod
    def check_unchanged(self) -> None:
        """Raise `LensChangedError` if what the source reads changed since it was built."""

    @abstractmethod
    def describe(self) -> str:
        """What the trajectory's repr says about its source."""


def lens_state(lens: Lens) -> tuple[tuple[int, int], ...]:
    """Identity and version counter of every tensor a lens reads with: its parameters
    and the model's unembedding. Any in-place change (an optimiser step, `copy_`,
    `load_state_dict`) or replacement moves one of them."""
    unembed = lens.unembed
    tensors = [*lens.parameters(), *lens.buffers(), unembed.W_U]
    tensors += [t for t in (unembed.b_U,) if t is not None]
    tensors += list(unembed.final_norm.parameters())
    return tuple((id(t), t._version) for t in tensors)


class LensSource(RowSource):
    """Rows read by `lens` from `residuals` (one per layer, `[..., pos, d_model]`), then
    the model's `model_logits` (`[..., pos, vocab]`) as the output row."""

    lens: Lens
    component: str

    def __init__(
        self,
        lens: Lens,
        residuals: Sequence[Float[Tensor, "... pos d_model"]],
        model_logits: Float[Tensor, "... pos vocab"],
        ids_shape: tuple[int, ...],
        component: str,
        *,
        state: tuple[tuple[int, int], ...] | None = None,
    ):
        self.lens = lens
        self.component = component
        self.residuals = list(residuals)
        self.model_logits = model_logits
        self.n_layers = lens.n_layers
        self.vocab_size = lens.unembed.d_vocab
        self._ids_shape = ids_shape
        if state is None:
            self._validate()
        self._state = lens_state(lens) if state is None else state

    def _validate(self) -> None:
        shape = self._ids_shape
        if len(self.residuals) != self.lens.n_layers:
            raise LensMismatchError(
                f"{len(self.residuals)} residuals for a lens over {self.lens.n_layers} layers"
            )
        expected = (*shape, self.lens.unembed.d_model)
        for layer, h in enumerate(self.residuals):
            if not isinstance(h, Tensor) or tuple(h.shape) != expected:
                found = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise InputError(
                    f"the residual of layer {layer} is {found}, but input_ids "
                    f"{shape} need {expected}: are they from the same run?"
                )
        if not isinstance(self.model_logits, Tensor):
            raise InputTypeError(
                "model_logits must be a tensor [..., pos, vocab], got "
                f"{type(self.model_logits).__name__}"
            )
        logits_shape = (*shape, self.vocab_size)
        if tuple(self.model_logits.shape) != logits_shape:
            raise InputError(
                f"model_logits are {tuple(self.model_logits.shape)}, expected {logits_shape} "
                "(the logits of the same run, [..., pos, vocab])"
            )

    @property
    def device(self) -> torch.device:
        return self.lens.unembed.W_U.device

    def _flat_logits(self) -> Tensor:
        return self.model_logits.reshape(-1, self.vocab_size)

    def block(self, layer: int, rows: slice) -> Block:
        if self.is_output(layer):
            return Block(layer, rows)
        h = self.residuals[layer].reshape(-1, self.lens.unembed.d_model)[rows]
        if not bool(torch.isfinite(h).all()):
            raise NonFiniteActivationError(
                f"the {self.component} residual of layer {layer} holds NaN or "
                "infinite values; check the model's dtype or the hooks of that run"
            )
        hidden = self.lens.unembed.final_norm(self.lens.transform_hidden(h, layer))
        return Block(layer, rows, hidden=hidden)

    def tile(self, block: Block, vocab: slice) -> Float[Tensor, "rows chunk"]:
        if block.hidden is None:  # the output row: a copy, -inf raised to the floor
            return self._flat_logits()[block.rows, vocab].float().clamp_min(FLOOR)
        return self.lens.unembed.logits_of_normalized(block.hidden, vocab).float()

    def token_logits(self, block: Block, ids: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        if block.hidden is None:
            picked = self._flat_logits()[block.rows].gather(-1, ids[:, None])[:, 0]
            return picked.float().clamp_min(FLOOR)
        return self.lens.unembed.token_logits(block.hidden, ids).float()

    def full_row(self, layer: int) -> Float[Tensor, "rows vocab"]:
        if self.is_output(layer):
            return self._flat_logits().float()
        hidden = self.block(layer, slice(None)).hidden
        assert hidden is not None
        return self.lens.unembed.logits_of_normalized(hidden).float()

    def select_positions(self, positions: slice) -> LensSource:
        ids_shape = tuple(torch.empty(self._ids_shape, device="meta")[..., positions].shape)
        return LensSource(
            self.lens,
            [h[..., positions, :] for h in self.residuals],
            self.model_logits[..., positions, :],
            ids_shape,
            self.component,
            state=self._state,
        )

    def check_unchanged(self) -> None:
        if lens_state(self.lens) != self._state:
            raise LensChangedError(
                "the lens (or the model's unembedding) was changed in place after this "
                f"trajectory was built from it, so its statistics and {self.lens!r}'s new "
                "readouts no longer agree. Build a new trajectory after changing the lens; "
                "to compare before and after, keep copy.deepcopy(lens) from before."
            )

    def describe(self) -> str:
        return f"lens={self.lens!r}, component={self.component!r}"


class LogProbSource(RowSource):
    """Rows of a `[..., layer + 1, pos, vocab]` tensor of log-probabilities or logits
    (numpy arrays too), its last layer row the model's output.

    Checked once when built (one min-max pass per row, and a sum where a row lies in
    [0, 1]; no full-size temporaries): the shape against `ids_shape`, no NaN or +inf,
    and at every position that is not `padding` (`[*ids_shape]` bool, True = padding):
    some finite entry in every row (`-inf` = probability 0 is fine), and no row of
    probabilities by mistake. Without `padding` (no attention mask given), a position
    whose rows are all zero, padding that would read as a uniform distribution, is
    refused too.
    """

    def __init__(
        self,
        log_probs: Any,
        ids_shape: tuple[int, ...],
        *,
        padding: Tensor | None = None,
        version: int | None = None,
    ):
        self.log_probs = _as_float_tensor(log_probs)
        self._ids_shape = ids_shape
        if version is None:
            self._validate(padding)
        self.n_layers = int(self.log_probs.shape[-3]) - 1
        self.vocab_size = int(self.log_probs.shape[-1])
        n_pos = int(self.log_probs.shape[-2])
        # [batch, layer + 1, pos, vocab]: a view of the caller's tensor when it is
        # contiguous; tiles gather their rows from it.
        self._grid = self.log_probs.reshape(-1, self.n_layers + 1, n_pos, self.vocab_size)
        self._version = self.log_probs._version if version is None else version

    def _validate(self, padding: Tensor | None) -> None:
        lp, shape = self.log_probs, self._ids_shape
        axes = ", ".join([*map(str, shape[:-1]), "layer + 1", str(shape[-1]), "vocab"])
        expected = f"[..., layer + 1, pos, vocab] = [{axes}]"
        if lp.ndim != len(shape) + 2 or (*lp.shape[:-3], lp.shape[-2]) != shape:
            layer_first = lp.ndim == len(shape) + 2 and tuple(lp.shape[1:-1]) == shape
            hint = (
                ": the layer axis comes third from last (log_probs.movedim(0, -3)), as in "
                "tuned-lens's PredictionTrajectory.log_probs"
                if layer_first and len(shape) > 1
                else ": one row per layer and a last row for the model's output, for the "
                "positions of input_ids"
            )
            raise InputError(
                f"log_probs are {tuple(lp.shape)}, but input_ids {shape} need {expected}{hint}"
            )
        if lp.shape[-3] < 2:
            raise InputError(
                f"log_probs have {lp.shape[-3]} layer row(s); they need at least one layer "
                "and a last row for the model's output"
            )
        if lp.shape[-1] < 1:
            raise InputError("log_probs have an empty vocabulary axis")
        n_layers = lp.shape[-3] - 1
        real = (
            torch.ones(shape, dtype=torch.bool, device=lp.device)
            if padding is None
            else ~padding.to(lp.device)
        )
        all_zero = torch.ones(shape, dtype=torch.bool, device=lp.device)
        for layer in range(n_layers + 1):
            row = lp[..., layer, :, :]
            # One pass per row: NaN and +inf propagate to both; -inf max = no finite entry.
            low, top = torch.aminmax(row, dim=-1)
            name = "the output row" if layer == n_layers else f"layer {layer}"
            if bool(torch.isnan(top).any()):
                raise NonFiniteActivationError(
                    f"log_probs hold NaN at {name}: every statistic there would be NaN"
                )
            if bool(torch.isposinf(top).any()):
                raise NonFiniteActivationError(f"log_probs hold +inf at {name}")
            if bool((torch.isneginf(top) & real).any()):
                raise NonFiniteActivationError(
                    f"log_probs at {name} have a position where every entry is -inf: "
                    "no token has any probability there (if it is padding, pass "
                    "attention_mask with 0 there)"
                )
            zero = (low == 0) & (top == 0)
            all_zero &= zero
            _refuse_probabilities(row, low, top, zero | ~real, name)
        if padding is None and lp.shape[-1] > 1 and bool(all_zero.any()):
            # One vocabulary entry has no other log-probability than zero.
            where = tuple(int(i) for i in all_zero.nonzero()[0])
            raise InputError(
                f"log_probs are all zero at {int(all_zero.sum())} position(s) of input_ids "
                f"(the first at index {where}) in every row: that is padding, not "
                "log-probabilities, and read as logits it would count as a uniform "
                "distribution in every mean. Pass attention_mask with 0 at the padding and "
                "1 elsewhere, e.g. attention_mask=(log_probs != 0).any(-1).any(-2); if those "
                "rows really are uniform logits, pass attention_mask=torch.ones_like(input_ids)"
            )

    @property
    def device(self) -> torch.device:
        return self.log_probs.device

    def block(self, layer: int, rows: slice) -> Block:
        flat = torch.arange(rows.start, rows.stop, device=self.device)
        n_pos = self._grid.shape[-2]
        return Block(layer, rows, batch=flat // n_pos, position=flat % n_pos)

    def tile(self, block: Block, vocab: slice) -> Float[Tensor, "rows chunk"]:
        # Advanced indexing gathers a copy, so the in-place clamp never reaches the caller.
        picked = self._grid[block.batch, block.layer, block.position, vocab]
        return picked.float().clamp_min_(FLOOR)

    def token_logits(self, block: Block, ids: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        picked = self._grid[block.batch, block.layer, block.position, ids]
        return picked.float().clamp_min_(FLOOR)

    def full_row(self, layer: int) -> Float[Tensor, "rows vocab"]:
        return self._grid[:, layer].reshape(-1, self.vocab_size).float()

    def select_positions(self, positions: slice) -> LogProbSource:
        ids_shape = tuple(torch.empty(self._ids_shape, device="meta")[..., positions].shape)
        return LogProbSource(self.log_probs[..., positions, :], ids_shape, version=self._version)

    def check_unchanged(self) -> None:
        if self.log_probs._version != self._version:
            raise LensChangedError(
                "the log_probs tensor was changed in place after this trajectory was built "
                "from it, so its statistics no longer describe it: build a new one with "
                "PredictionTrajectory.from_log_probs (or pass log_probs.clone())"
            )

    def describe(self) -> str:
        return f"source=log_probs[{str(self.log_probs.dtype).removeprefix('torch.')}]"


class MaskedRows(RowSource):
    """`source` with every token of each input sequence at probability 0 in the lens
    rows (`mask_input`), to see what else the lens predicts; the output row is left
    as it is. Probability 0 is `FLOOR` in tiles and token logits, `-inf` in full rows.

    The mask is `[sequence, vocab]` (one row per input sequence, not per position);
    a row block picks its rows from it once and shares them over layers and chunks.
    """

    def __init__(self, source: RowSource, input_ids: Int[Tensor, "... pos"]):
        self.source = source
        self.input_ids = input_ids
        self.n_layers, self.vocab_size = source.n_layers, source.vocab_size
        self.lens, self.component = source.lens, source.component
        sequences = input_ids.reshape(-1, input_ids.shape[-1])
        mask = torch.zeros(sequences.shape[0], self.vocab_size, dtype=torch.bool)
        self._mask = mask.scatter_(1, sequences, True)
        self._n_pos = int(input_ids.shape[-1])
        self._block_mask: tuple[tuple[int, int], Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.source.device

    def _rows_mask(self, rows: slice) -> Tensor:
        """`[rows, vocab]`: the input tokens of each flat row's sequence (CPU)."""
        key = (rows.start, rows.stop)
        if self._block_mask is None or self._block_mask[0] != key:
            start, stop, _ = rows.indices(self._mask.shape[0] * self._n_pos)
            self._block_mask = key, self._mask[torch.arange(start, stop) // self._n_pos]
        return self._block_mask[1]

    def block(self, layer: int, rows: slice) -> Block:
        return self.source.block(layer, rows)

    def tile(self, block: Block, vocab: slice) -> Float[Tensor, "rows chunk"]:
        logits = self.source.tile(block, vocab)
        if not self.is_output(block.layer):
            logits.masked_fill_(self._rows_mask(block.rows)[:, vocab].to(logits.device), FLOOR)
        return logits

    def token_logits(self, block: Block, ids: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        logits = self.source.token_logits(block, ids)
        if self.is_output(block.layer):
            return logits
        hidden = self._rows_mask(block.rows).gather(1, ids.cpu()[:, None])[:, 0]
        return logits.masked_fill(hidden.to(logits.device), FLOOR)

    def full_row(self, layer: int) -> Float[Tensor, "rows vocab"]:
        logits = self.source.full_row(layer)
        if self.is_output(layer):
            return logits
        return logits.masked_fill(self._rows_mask(slice(None)).to(logits.device), -math.inf)

    def select_positions(self, positions: slice) -> MaskedRows:
        return MaskedRows(self.source.select_positions(positions), self.input_ids[..., positions])

    def check_unchanged(self) -> None:
        self.source.check_unchanged()

    def describe(self) -> str:
        return self.source.describe()


def _refuse_probabilities(
    row: Float[Tensor, "... pos vocab"],
    low: Float[Tensor, "... pos"],
    top: Float[Tensor, "... pos"],
    skip: Tensor,
    name: str,
) -> None:
    """Refuse a row of log_probs that holds probabilities: every entry in [0, 1], summing
    to 1. Checked at every position, not one: probabilities with a padding row of zeros
    first, or a single row of probabilities among log-probabilities, would otherwise be
    read as logits, a different and silently wrong distribution. Positions in `skip`
    (all-zero rows, padding) are no evidence either way.

    A logit row that happens to lie in [0, 1] and sum to 1 is refused too, but only a
    constructed one does; its `log_softmax(-1)` passes. One vocabulary entry reads the
    same either way (probability 1), so it is never refused.
    """
    if row.shape[-1] < 2:
        return
    # Sums accumulate in float32 at least; the tolerance covers the rounding of the
    # entries themselves (float16, bfloat16), far below what a logit row's sum differs by.
    tolerance = max(1e-3, 8 * torch.finfo(row.dtype).eps)
    candidates = (low >= 0) & (top <= 1) & ~skip
    if not bool(candidates.any()):
        return
    totals = row.sum(dim=-1).double()
    summing_to_one = candidates & ((totals - 1).abs() <= tolerance)
    if bool(summing_to_one.any()):
        where = tuple(int(i) for i in summing_to_one.nonzero()[0])
        raise InputError(
            f"log_probs look like probabilities, not log-probabilities or logits: at {name}, "
            f"{int(summing_to_one.sum())} position(s) hold only values in [0, 1] that sum to 1 "
            f"(the first at index {where} of [..., pos]; rows of zeros count as padding). "
            "Pass their logarithm, probs.log() (0 becomes -inf, probability 0), with "
            "attention_mask 0 at any padding; if these really are logits, pass "
            "logits.log_softmax(-1)"
        )


def _as_float_tensor(log_probs: Any) -> Tensor:
    if isinstance(log_probs, np.ndarray):
        log_probs = torch.from_numpy(log_probs)
    if not isinstance(log_probs, Tensor):
        raise InputTypeError(
            "log_probs must be a tensor or numpy array [..., layer + 1, pos, vocab], got "
            f"{type(log_probs).__name__}"
        )
    if not log_probs.is_floating_point():
        raise InputTypeError(
            f"log_probs must be floating point (log-probabilities or logits), got {log_probs.dtype}"
        )
    return log_probs.detach()
