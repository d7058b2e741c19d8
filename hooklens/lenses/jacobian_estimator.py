"""Internal. The exact Jacobian-lens estimator (TransformerLens's and the reference's),
resumable and data-parallel under torchrun: a function of the model and the prompts that
knows no lens class (`JacobianLens.fit` calls it; `hooklens fit-jlens` is in `hooklens.cli`).

For each prompt: one forward pass with the prompt replicated `dim_batch` times, then
`ceil(d_model / dim_batch)` backward passes, each planting one-hot cotangents for
`dim_batch` output dimensions at every valid position of the final block's output. By
causality the gradient at source position t is the sum over targets t' ≥ t. Rows are
averaged over valid source positions (the first `skip_first_positions` and the last
position excluded) and prompts count equally:

    J_ℓ = (1 / n_done) Σ_prompts mean_{valid t} Σ_{t' ≥ t} ∂h_final[t'] / ∂h_ℓ[t]

Unlike TransformerLens's `fit`, the forward stops after the last block
(`stop_at_layer`): the final norm and the `[d_model, d_vocab]` unembedding, which the
estimator never uses, are not run `dim_batch` times per prompt.

Under torchrun (`torchrun --nproc_per_node N -m hooklens fit-jlens ...`, or the API once
the caller has initialised the process group) every rank passes the same, whole list of
prompts; the fit goes through it in rounds of `checkpoint_every` prompts (boundaries at
multiples of `checkpoint_every`, the same on every rank), each rank taking every N-th
prompt of a round. After every round the ranks sum their sums and prompt counts, rank 0
writes the checkpoint, and every rank ends with the same mean: that of one process on
the same prompts, up to the order of the float32 additions. The checkpoint (writing it,
checking it, what a resume must repeat) is `hooklens.lenses._jacobian_fit_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens._checks import check_id_range, non_negative_int, positive_int, token_id_tensor
from hooklens.artifacts.provenance import PROVENANCE_KEY, current_provenance
from hooklens.core import ModelAdapter, distributed
from hooklens.errors import InputError, InputTypeError
from hooklens.lenses._jacobian_fit_checkpoint import (
    check_resumable,
    model_record,
    prompt_digests,
    read_checkpoint,
    require_the_same_prompts_on_every_rank,
    write_checkpoint,
)
from hooklens.lenses._jacobian_fit_checkpoint import checkpoint_path as checkpoint_path


def prompt_tokens(model: Any, prompt: str | Any, max_seq_len: int) -> Int[Tensor, "1 pos"]:
    """A prompt (text, or token ids) as `[1, pos]` ids cut to `max_seq_len` (not to the
    model's context: `fit_jacobians` refuses a prompt longer than that)."""
    if isinstance(prompt, str):
        tokens = model.to_tokens(prompt, truncate=False)
    else:
        tokens = token_id_tensor(prompt, "prompt")
        tokens = tokens if tokens.ndim == 2 else tokens[None]
    return tokens[:, :max_seq_len]


def block_outputs_graph(
    model: Any, tokens: Int[Tensor, "1 pos"], source_layers: Sequence[int], *, dim_batch: int
) -> tuple[Float[Tensor, "dim_batch pos d_model"], list[Float[Tensor, "dim_batch pos d_model"]]]:
    """The last block's output and the `source_layers` blocks' outputs of one forward
    pass over `tokens` replicated `dim_batch` times, in one autograd graph that starts at
    the earliest source (the parameters must be frozen): what the backward passes of an
    estimator differentiate."""
    adapter = ModelAdapter(model)
    n_layers = adapter.n_layers
    target_layer = n_layers - 1
    root = adapter.hook_name("resid_post", min(source_layers))
    captured: dict[str, Tensor] = {}

    def capture_as(name: str):
        # By the name we asked for: a bridge calls its hooks by their canonical names.
        def capture(activation: Tensor, hook: Any) -> Tensor:
            if name == root and not activation.requires_grad:
                activation.requires_grad_(True)  # the graph starts here, not at the weights
            captured[name] = activation
            return activation

        return capture

    names = [adapter.hook_name("resid_post", layer) for layer in {*source_layers, target_layer}]
    replicated = tokens.expand(dim_batch, -1).to(adapter.device)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, capture_as(n)) for n in names]):
        model(replicated, stop_at_layer=n_layers)  # no final norm, no unembedding
    target = captured[adapter.hook_name("resid_post", target_layer)]
    return target, [captured[adapter.hook_name("resid_post", layer)] for layer in source_layers]


def prompt_jacobians(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    source_layers: Sequence[int],
    *,
    dim_batch: int,
    skip_first_positions: int,
) -> dict[int, Float[Tensor, "d_model d_model"]]:
    """`{layer: J}` of one prompt (the model's parameters must be frozen): every row,
    one-hot cotangents for `dim_batch` output dimensions per backward pass."""
    identity = torch.eye(ModelAdapter(model).d_model)
    return projected_prompt_jacobians(
        model,
        tokens,
        source_layers,
        identity,
        dim_batch=dim_batch,
        skip_first_positions=skip_first_positions,
    )


def projected_prompt_jacobians(
    model: Any,
    tokens: Int[Tensor, "1 pos"],
    source_layers: Sequence[int],
    directions: Float[Tensor, "d_model k"],
    *,
    dim_batch: int,
    skip_first_positions: int,
) -> dict[int, Float[Tensor, "k d_model"]]:
    """`{layer: Qᵀ J_p}`: the prompt's Jacobians seen through the columns of `directions`.

    One forward (`block_outputs_graph`), then backward passes planting cotangents at
    every valid position of the last block's output, rows averaged over the valid source
    positions; each backward carries `dim_batch` columns of `Q`, so it costs one forward
    and `ceil(k / dim_batch)` backwards. `Q = I` is
    `prompt_jacobians`; `hooklens.training.jacobian_sketch` uses fewer columns. The
    model's parameters must be frozen.
    """
    adapter = ModelAdapter(model)
    d_model = adapter.d_model
    if directions.ndim != 2 or directions.shape[0] != d_model:
        raise InputError(
            f"directions must be [d_model={d_model}, k], got {tuple(directions.shape)}"
        )
    n_directions = directions.shape[1]
    target, sources = block_outputs_graph(model, tokens, source_layers, dim_batch=dim_batch)
    probes = directions.T.to(device=target.device, dtype=target.dtype)  # [k, d_model]
    positions = torch.arange(skip_first_positions, tokens.shape[1] - 1, device=target.device)
    measured = {layer: torch.zeros(n_directions, d_model) for layer in source_layers}
    cotangent = torch.zeros_like(target)
    starts = range(0, n_directions, dim_batch)
    for index, start in enumerate(starts):
        n_rows = min(dim_batch, n_directions - start)
        cotangent.zero_()
        # Row r of the batch carries probe start + r at every valid target position.
        cotangent[:n_rows, positions] = probes[start : start + n_rows, None, :]
        grads = torch.autograd.grad(
            target, sources, grad_outputs=cotangent, retain_graph=index < len(starts) - 1
        )
        for layer, grad in zip(source_layers, grads, strict=True):
            mean = grad[:n_rows, positions.to(grad.device)].float().mean(dim=1)
            measured[layer][start : start + n_rows] = mean.cpu()
    return measured


def fit_jacobians(
    model: Any,
    prompts: Sequence[Any],
    *,
    source_layers: Sequence[int] | None = None,
    max_seq_len: int = 128,
    skip_first_positions: int = 16,
    dim_batch: int = 8,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
) -> tuple[dict[int, Tensor], int]:
    """`({layer: mean J}, n_prompts)` over `prompts` (see the module docstring).

    `prompts` is a list of texts or of token ids (a single string is refused, not read
    as one prompt per character); each is cut to its first `max_seq_len` tokens, and one
    still longer than the model's context (`n_ctx`) is refused (`InputError`, before any
    work), never cut silently. The estimator averages source positions
    `skip_first_positions .. pos - 2`, so `max_seq_len` must be at least
    `skip_first_positions + 2`; prompts shorter than that are skipped.

    With `checkpoint`, the running sums are written there (atomically, every
    `checkpoint_every` prompts and at the end) in the reference's fit-checkpoint format
    (`jacobian_sum`, `n_done`, `next_idx`, `source_layers`, `target_layer`,
    `skip_first`, which TransformerLens's and our `JacobianLens.load` read as a lens),
    with one entry of ours beside them (`hooklens_fit`: the model's name, sizes and
    unembedding hash, `max_seq_len`, and a hash of the token ids of the `next_idx`
    prompts gone through). A checkpoint already there is resumed, by any number of
    processes: it must have been made with the same model, layers,
    `skip_first_positions` and `max_seq_len`, and `prompts` must begin with the
    prompts it went through (more may follow), else `RunStateError` says what changed.
    The checkpoint also records `hooklens_fit_sha256`, a checksum over its sums, count
    and settings: a resume verifies it and that the count is that of the prompts gone
    through, and refuses (`RunStateError`, naming the file) a checkpoint damaged or
    edited since. A checkpoint of hooklens before the checksum is resumed with a
    warning (its count still checked against the prompts; the zip archive's CRC-32
    still covers its bytes); a reference checkpoint, without our entries, as before.
    No checkpoint is written before a prompt has been summed. `dim_batch` may change:
    it only groups the backward passes (the same matrices up to float32 rounding).

    Under torchrun (the process group initialised, e.g. by
    `hooklens.training.distributed.init_from_environment()`), every rank passes the
    same, whole `prompts`: each computes every N-th prompt of each round, the sums are
    added over ranks after every round, only rank 0 writes the checkpoint and shows the
    progress bar, and every rank returns the same mean. A rank that fails mid-fit
    leaves the others waiting in the next reduction: torchrun then stops them all, and
    the checkpoint holds the rounds completed before.

    Examples:
        >>> texts = ["The cat sat on the mat", "The dog ran to the store"]
        >>> jacobians, n = fit_jacobians(model, texts, checkpoint="fit.pt",
        ...                              skip_first_positions=1)  # short prompts here
        >>> n, sorted(jacobians), jacobians[0].shape
        (2, [0, 1, 2], torch.Size([32, 32]))
        >>> # interrupted? the same call (any world size, any dim_batch) continues it;
        >>> # more prompts after those it went through continue it too
        >>> _, n = fit_jacobians(model, texts + ["Hello world"], checkpoint="fit.pt",
        ...                      skip_first_positions=1)
        >>> n
        3
    """
    adapter = ModelAdapter(model)
    n_layers, d_model = adapter.n_layers, adapter.d_model
    layers = _source_layers(source_layers, n_layers)
    dim_batch = positive_int(dim_batch, "dim_batch", at_most=d_model)
    max_seq_len, skip_first_positions = check_fit_lengths(max_seq_len, skip_first_positions)
    positive_int(checkpoint_every, "checkpoint_every")
    _check_prompt_list(prompts)
    # Tokenized up front (cheap beside the backward passes): the prompts are checked
    # and fingerprinted before any expensive work, the same way on every rank.
    tokens = [prompt_tokens(model, prompt, max_seq_len).cpu() for prompt in prompts]
    if not tokens:
        raise InputError("prompts is empty: pass at least one text (or token ids) to fit on")
    n_ctx = getattr(adapter.cfg, "n_ctx", None)
    for index, ids in enumerate(tokens):
        check_id_range(ids, f"prompts[{index}]", adapter.d_vocab, allow_missing=False)
        if n_ctx and ids.shape[1] > n_ctx:
            raise InputError(
                f"prompts[{index}] is {ids.shape[1]} tokens after the cut to max_seq_len="
                f"{max_seq_len}, more than the model's context (n_ctx={n_ctx}): pass "
                f"max_seq_len={n_ctx} or less (hooklens fit-jlens: --max-seq-len), so that "
                "every prompt is cut to what the model reads"
            )
    digests = prompt_digests(tokens)
    require_the_same_prompts_on_every_rank(digests)
    settings = {"max_seq_len": max_seq_len, "skip_first_positions": skip_first_positions}
    record = {
        "model": model_record(model),
        "max_seq_len": max_seq_len,
        PROVENANCE_KEY: current_provenance(model, settings={**settings, "source_layers": layers}),
    }
    running, next_idx = _RunningSums(layers, d_model), 0
    path = Path(checkpoint) if checkpoint is not None else None
    entries, saved_sums = read_checkpoint(path) if path is not None else (None, None)
    if entries is not None:
        check_resumable(
            entries, path, layers=layers, skip_first_positions=skip_first_positions,
            record=record, digests=digests, n_layers=n_layers, d_model=d_model,
            lengths=[ids.shape[1] for ids in tokens],
        )  # fmt: skip
        next_idx = int(entries["next_idx"])
        if saved_sums is not None:  # rank 0 alone adds the sums it was made with
            running.resume(saved_sums, int(entries["n_done"]))

    def save() -> None:
        # Nothing summed yet (short prompts only, so far): no checkpoint, so that a fit
        # that ends with nothing fitted leaves nothing for the corrected retry to refuse.
        if path is None:
            return
        if running.n_done == 0:  # the same on every rank: the count is reduced
            return
        if distributed.is_primary():  # it holds the whole fit's sums after a reduction
            write_checkpoint(
                path, sums=running.sums, n_done=running.n_done, next_idx=next_idx,
                layers=layers, n_layers=n_layers, skip_first_positions=skip_first_positions,
                record=record, digests=digests,
            )  # fmt: skip
        distributed.barrier()  # no rank reads a half-written checkpoint

    options = {"dim_batch": dim_batch, "skip_first_positions": skip_first_positions}
    world = distributed.world_size()
    show = progress and distributed.is_primary()
    with _frozen(model):
        bar = tqdm(total=len(tokens), initial=next_idx, desc="fit J-lens", disable=not show)
        for start, stop in _rounds(next_idx, len(tokens), checkpoint_every):
            running.start_round()
            for index in distributed.shard(range(start, stop)):
                if tokens[index].shape[1] > skip_first_positions + 1:
                    # The per-prompt estimator: this one line could call another.
                    per_prompt = prompt_jacobians(model, tokens[index], layers, **options)
                    running.add(per_prompt)
                _advance(bar, min(index + world, stop))  # the other ranks go alongside
            running.reduce_over_ranks()  # every rank reaches it, whatever it skipped
            next_idx = stop
            save()
            _advance(bar, stop)
        bar.close()
    if running.n_done == 0:
        raise InputError(
            f"no prompt has more than skip_first_positions + 1 = {skip_first_positions + 1} "
            "tokens, so nothing was fitted: give longer prompts or a smaller "
            "skip_first_positions"
        )
    return running.means(), running.n_done


def _source_layers(source_layers: Sequence[int] | None, n_layers: int) -> list[int]:
    layers = sorted(range(n_layers - 1) if source_layers is None else map(int, source_layers))
    if not layers or any(not 0 <= layer < n_layers - 1 for layer in layers):
        raise InputError(
            f"source_layers must lie in 0..{n_layers - 2} (the last block's output is the "
            f"final residual), got {layers}"
        )
    return layers


def check_fit_lengths(
    max_seq_len: Any,
    skip_first_positions: Any,
    *,
    names: tuple[str, str] = ("max_seq_len", "skip_first_positions"),
) -> tuple[int, int]:
    """`(max_seq_len, skip_first_positions)`, refused unless a prompt of `max_seq_len`
    tokens leaves a source position to average: the estimator reads positions
    `skip_first_positions .. pos - 2` (the last position has no later target)."""
    max_seq_len = positive_int(max_seq_len, names[0])
    skip = non_negative_int(
        skip_first_positions, names[1], meaning="leading positions left out of the mean"
    )
    if max_seq_len < skip + 2:
        raise InputError(
            f"{names[1]}={skip} leaves no position to fit on in prompts of at most "
            f"{names[0]}={max_seq_len} tokens: the estimator averages positions {skip} to "
            f"length - 2, so {names[0]} must be at least {names[1]} + 2 = {skip + 2}. Lower "
            f"{names[1]} or raise {names[0]}"
        )
    return max_seq_len, skip


def _check_prompt_list(prompts: Any) -> None:
    if isinstance(prompts, (str, bytes)):
        raise InputTypeError(
            f"prompts should be a list of texts (or of token ids), got a single "
            f"{type(prompts).__name__} of {len(prompts)} characters, which would fit one "
            "prompt per character: pass [text] to fit on one prompt"
        )


def _rounds(start: int, stop: int, every: int) -> Iterator[tuple[int, int]]:
    """`[a, b)` spans of prompt indices from `start` to `stop`, cut at the multiples of
    `every` (wherever a fit resumed, so the same on every rank and in every run); one
    empty span where nothing is left, so that a finished checkpoint still reduces."""
    if start >= stop:
        yield start, start
    while start < stop:
        end = min((start // every + 1) * every, stop)
        yield start, end
        start = end


def _advance(bar: Any, to: int) -> None:
    if not bar.disable and to > bar.n:
        bar.update(to - bar.n)


@contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """No gradients for the parameters during the fit (the graph starts at the
    activations); their flags restored after it, even when it fails."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


class _RunningSums:
    """`Σ_prompts J_ℓ` and the number of prompts summed, in float32 on the CPU.

    Under torchrun rank 0 holds the sums of the whole fit (those of a resumed checkpoint
    included), every other rank only what it added since the last reduction: so each
    reduction counts every prompt, and the checkpoint's sums, exactly once.
    """

    def __init__(self, layers: Sequence[int], d_model: int) -> None:
        self.sums = {layer: torch.zeros(d_model, d_model) for layer in layers}
        self.n_done = 0

    def resume(self, sums: dict[int, Tensor], n_done: int) -> None:
        self.sums = {layer: sums[layer].float().clone() for layer in self.sums}
        self.n_done = n_done

    def add(self, per_prompt: dict[int, Float[Tensor, "d_model d_model"]]) -> None:
        for layer, total in self.sums.items():
            total += per_prompt[layer]
        self.n_done += 1

    def start_round(self) -> None:
        """Drop, on the ranks but 0, the whole-fit sums the last reduction gave them."""
        if not distributed.is_primary():
            for total in self.sums.values():
                total.zero_()
            self.n_done = 0

    def reduce_over_ranks(self) -> None:
        """Every rank then holds the sums of the whole fit (a no-op for one process)."""
        for total in self.sums.values():
            distributed.all_reduce_cpu_sum_(total)
        count = torch.tensor([self.n_done], dtype=torch.int64)
        self.n_done = int(distributed.all_reduce_cpu_sum_(count).item())

    def means(self) -> dict[int, Tensor]:
        return {layer: total / self.n_done for layer, total in self.sums.items()}
