"""Train a tuned lens on KL(final ‖ lens), summed over layers: the loop, top to bottom.

Each step runs the frozen model once per micro-batch (residual hooks only), takes the
model's own log-probabilities as the target of every layer, and sums the layers'
chunked KL losses. A checkpoint (lens, optimiser, scheduler, step, data position, RNG)
is written atomically every `checkpoint_every` steps; `resume=True` continues from it
and ends with the same lens as an uninterrupted run (`hooklens.training.checkpoint`).

With `held_out` batches, the run ends by keeping, per layer, the better of its start and
its fine-tune on them (`hooklens.training.keep_better`); the checkpoints hold the start
beside the fine-tune, so a resumed run makes the same choice, once, at its end.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.artifacts.provenance import PROVENANCE_KEY, current_provenance
from hooklens.core import ModelAdapter, distributed
from hooklens.core.chunked_kl import (
    kl_to_target,
    target_distribution,
    target_projection,
    weight_chunks,
)
from hooklens.core.precision import MATMUL_DTYPES, matmul_dtype, retain_freed_memory
from hooklens.core.sampled_kl import SampledColumns, sample_columns, sampled_kl_to_target
from hooklens.errors import (
    DataError,
    InputError,
    InputTypeError,
    LensMismatchError,
    RunStateError,
    warn,
)
from hooklens.lenses.base import Lens
from hooklens.lenses.tuned import TunedLens
from hooklens.training.checkpoint import CHECKPOINT_FILE as CHECKPOINT_FILE  # re-exported
from hooklens.training.checkpoint import CHECKSUM_KEY as CHECKSUM_KEY  # re-exported
from hooklens.training.checkpoint import (
    BatchDigest,
    claim_checkpoint_dir,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    skip_consumed,
    start_of,
)
from hooklens.training.keep_better import LayerChoice, keep_better
from hooklens.training.optimizers import (
    DEFAULT_LR,
    OPTIMIZERS,
    build_optimizer,
    build_schedule,
)

# As checkpoints name them.
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainConfig:
    """Optimisation settings (defaults: Adam 1e-3, stable on SmolLM2 on every CPU; Muon
    does better where bf16 is native: the training guide)."""

    steps: int = 250
    optimizer: str = "adam"  # "adam", "adamw", "sgd" (Nesterov) or "muon" (optimizers.py)
    lr: float | None = None  # None: the optimizer's own (optimizers.DEFAULT_LR)
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    grad_accumulation: int = 1
    vocab_chunk: int = 8192
    # Unembedding matmuls of the loss: "auto" measures the device (hooklens/precision.py)
    # and takes bf16 only where it is native and fast (~2× faster steps with AMX; ~100×
    # slower where it is emulated), float16 on GPUs with float16 tensor cores and no
    # bf16 (T4, V100); "float32" is exact. Evaluation stays float32.
    matmul_dtype: str = "auto"
    # 0: the exact loss. Else the sampled KL's gradient (hooklens/core/sampled_kl.py):
    # each row's kl_top_k target tokens exactly and kl_samples drawn tokens per batch,
    # ~40× fewer loss FLOPs per layer; opt-in, measured in the training guide.
    kl_samples: int = 0
    kl_top_k: int = 32
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise InputError(
                f"matmul_dtype must be one of {', '.join(MATMUL_DTYPES)}, got {self.matmul_dtype!r}"
            )
        at_least_one = {
            "steps": "optimiser steps to take",
            "grad_accumulation": "micro-batches per step",
            "checkpoint_every": "steps between checkpoints",
            "vocab_chunk": "vocabulary rows per loss chunk",
            "kl_top_k": "exact target tokens per row of the sampled KL",
        }
        for name, meaning in at_least_one.items():
            if getattr(self, name) < 1:
                raise InputError(
                    f"{name} ({meaning}) must be at least 1, got {getattr(self, name)}"
                )
        if self.warmup_steps < 0:
            raise InputError(f"warmup_steps must be 0 (none) or more, got {self.warmup_steps}")
        if self.kl_samples < 0:
            raise InputError(
                f"kl_samples must be 0 (the exact loss) or a number of tokens to draw per "
                f"batch, got {self.kl_samples}"
            )
        for name in ("lr", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InputError(f"{name} must be a finite number ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.max_grad_norm > 0:
            raise InputError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """`"lr: 0.001 in the checkpoint, 0.01 now"` for each field `saved` sets otherwise."""
        return [
            f"{field.name}: {saved[field.name]!r} in the checkpoint, "
            f"{getattr(self, field.name)!r} now"
            for field in fields(self)
            if field.name in saved and saved[field.name] != getattr(self, field.name)
        ]


class _BatchTargets(NamedTuple):
    hidden: list[Tensor]  # per layer, [tokens, d_model]
    target: Tensor  # the model's output probabilities, [tokens, vocab]
    neg_entropy: Tensor  # Σ q log q per token
    projection: Tensor | None  # q W_Uᵀ, shared by every layer (None with a softcap)
    columns: SampledColumns | None = None  # the sampled KL's, shared by every layer


def _batch_targets(
    model: Any,
    lens: TunedLens,
    tokens: Tensor,
    w_chunks: list[Tensor],
    config: TrainConfig | None = None,
) -> _BatchTargets:
    """One frozen forward pass: every layer's residual and the shared target."""
    adapter = lens.adapter
    names = set(adapter.residual_hook_names(lens.component))
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens.to(adapter.device), names_filter=lambda name: name in names
        )
        target, neg_entropy = target_distribution(logits.float().reshape(-1, logits.shape[-1]))
        projection = None
        if not lens.unembed.logit_softcap:
            projection = target_projection(lens.unembed, target, w_chunks=w_chunks)
        columns = None
        if config is not None and config.kl_samples:
            columns = sample_columns(
                lens.unembed,
                target,
                top_k=config.kl_top_k,
                samples=config.kl_samples,
                dtype=w_chunks[0].dtype,
                target_projection=projection,
                target_neg_entropy=neg_entropy,
            )
    hidden = [
        cache[adapter.hook_name(lens.component, layer)].reshape(-1, adapter.d_model)
        for layer in range(lens.n_layers)
    ]
    return _BatchTargets(hidden, target, neg_entropy, projection, columns)


def _dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    dtype = matmul_dtype(config.matmul_dtype, device)
    # Every rank must compute the same loss: "auto" follows rank 0's measurement.
    return distributed.broadcast_object(dtype)


class LensKL(torch.nn.Module):
    """The training objective as a module, so that DDP can wrap it: Σ_layers mean KL."""

    def __init__(self, lens: TunedLens, config: TrainConfig, dtype: torch.dtype | None = None):
        """`dtype`: of the loss matmuls; default: what `config.matmul_dtype` gives here."""
        super().__init__()
        self.lens, self.config = lens, config
        # A plain list, not a buffer: the frozen model's weights stay out of state_dict.
        W_U = lens.unembed.W_U
        self.matmul_dtype = dtype or _dtype(config, W_U.device)
        self.w_chunks = weight_chunks(W_U, config.vocab_chunk, self.matmul_dtype)

    def targets(self, model: Any, tokens: Tensor) -> _BatchTargets:
        return _batch_targets(model, self.lens, tokens, self.w_chunks, self.config)

    def forward(self, batch: _BatchTargets) -> tuple[Tensor, Tensor]:
        if batch.columns is not None:
            per_layer = [
                sampled_kl_to_target(
                    self.lens.unembed, self.lens.transform_hidden(hidden, layer), batch.columns
                )
                for layer, hidden in enumerate(batch.hidden)
            ]
            losses = torch.stack(per_layer)
            return losses.sum(), losses.detach()
        per_layer = [
            kl_to_target(
                self.lens.unembed,
                self.lens.transform_hidden(hidden, layer),
                batch.target,
                batch.neg_entropy,
                batch.projection,
                w_chunks=self.w_chunks,
            )
            for layer, hidden in enumerate(batch.hidden)
        ]
        losses = torch.stack(per_layer)
        return losses.sum(), losses.detach()


def batch_loss(
    model: Any, lens: TunedLens, tokens: Tensor, config: TrainConfig
) -> tuple[Tensor, Tensor]:
    """`(Σ_layers mean KL, per-layer KL)` of one batch; differentiable in the lens."""
    objective = LensKL(lens, config)
    return objective(objective.targets(model, tokens))


class StepRecord(TypedDict):
    """One optimizer step of `train_lens`: its number, mean loss, learning rate and the
    tokens seen so far (all ranks together)."""

    step: int
    loss: float
    lr: float
    tokens: int


class TrainHistory(list[StepRecord]):
    """What `train_lens` returns: one `StepRecord` per step (a list), and `held_out`,
    the per-layer choice between start and fine-tune (`keep_better`), or None when the
    run was given no `held_out` batches."""

    held_out: list[LayerChoice] | None = None


def train_lens(
    model: Any,
    lens: TunedLens,
    token_batches: Iterable[Tensor],
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[StepRecord], None] | None = None,
    held_out: Iterable[Tensor] | None = None,
) -> TrainHistory:
    """Train `lens` in place; returns one `{step, loss, lr, tokens}` record per step.

    With `held_out` batches (text the run does not train on), the run ends by keeping,
    per layer, the translator of its start (the lens as passed in) or of the fine-tune,
    whichever has the lower KL on them, so that no layer ends worse than it began on
    that text; `history.held_out` records both KLs and the choice (`keep_better`).

    With `checkpoint_dir`, a checkpoint is written there every `config.checkpoint_every`
    steps and at the end. An existing checkpoint there is continued with `resume=True`
    (same config, same batches: anything else raises `RunStateError` naming what
    differs) or replaced with `overwrite=True`; otherwise `OutputExistsError`.

    `on_step` receives each record as it is made (to log it, e.g. to wandb). Under
    torchrun (`hooklens.training.distributed.init_from_environment()` called first),
    each process passes its own shard of the batches: DDP averages the gradients and
    rank 0 writes the checkpoints.

    `token_batches` must yield the same batches in the same order on every call (as
    `hooklens.training.data.pack` does): a resume reads again those already consumed
    and refuses them if they hash otherwise than those the checkpoint trained on.
    """
    _check_trainable(lens)
    config = config or TrainConfig()
    retain_freed_memory()  # 2× faster chunked loss on glibc (hooklens/allocator.py)
    adapter = ModelAdapter(model)
    if lens.adapter.model is not adapter.model:
        raise LensMismatchError(
            "the lens was built for another model object: build it with "
            "TunedLens.from_model(model) for the model you train on"
        )
    claim_checkpoint_dir(checkpoint_dir, resume=resume, overwrite=overwrite)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)  # the model is frozen; only the translators learn
    try:
        return _train(
            model, lens, token_batches, config, checkpoint_dir, resume, progress, on_step, held_out
        )
    finally:
        for param, requires_grad in frozen:
            param.requires_grad_(requires_grad)


def _check_trainable(lens: Any) -> None:
    """Refuse a lens with nothing to train before anything starts (torch would say only
    "optimizer got an empty parameter list", after the checkpoint directory is claimed)."""
    if isinstance(lens, TunedLens) and any(p.requires_grad for p in lens.parameters()):
        return
    name = type(lens).__name__
    if not isinstance(lens, Lens):
        raise InputTypeError(
            f"lens must be a TunedLens to train, got {name}: build one with "
            "TunedLens.from_model(model)"
        )
    what = (
        "its parameters are all frozen (requires_grad=False): call lens.requires_grad_(True)"
        if isinstance(lens, TunedLens)
        else f"a {name} has no parameters to train: pass a TunedLens "
        "(TunedLens.from_model(model)), which learns one translator per layer"
    )
    raise InputError(f"train_lens got a lens with nothing to train: {what}")


def _train(
    model: Any,
    lens: TunedLens,
    token_batches: Iterable[Tensor],
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike | None,
    resume: bool,
    progress: bool,
    on_step: Callable[[StepRecord], None] | None,
    held_out: Iterable[Tensor] | None = None,
) -> TrainHistory:
    torch.manual_seed(config.seed)
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = load_checkpoint(directory, config.differences) if resume else None
    # A resume computes in the dtype the run began with, whatever "auto" measures now:
    # its timing probe may choose otherwise in another process.
    dtype = _DTYPES.get(state.get("matmul_dtype", "")) if state is not None else None
    lens_kl = LensKL(lens, config, dtype)
    objective: torch.nn.Module = lens_kl
    ddp = None
    if distributed.active():  # averages gradients over ranks; starts from rank 0's lens
        objective = ddp = torch.nn.parallel.DistributedDataParallel(objective)
    params = [p for p in lens.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config)
    scheduler = build_schedule(optimizer, config)
    step, consumed, history = 0, 0, []
    # The start the end of the run compares with (a copy: the lens trains in place).
    start = None if state is not None else {k: v.clone() for k, v in lens.state_dict().items()}
    batches = iter(token_batches)
    digest = BatchDigest()
    if state is not None:
        step, consumed, history = state["step"], state["consumed"], state["history"]
        complete = skip_consumed(batches, consumed, digest)
        # Every rank must agree before any raises, or the others would wait forever.
        if distributed.mean_over_ranks(float(complete)) < 1:
            raise RunStateError(
                f"the batches end before the {consumed} the checkpoint had consumed: resume "
                "with the data the run started with"
            )
        saved = state.get("batch_digests")  # absent from older checkpoints
        if saved is not None and saved != digest.over_ranks():
            raise RunStateError(
                f"the first {consumed} batches differ from those the checkpoint in {directory} "
                "trained on (the data, tokenizer, sequence length or batch size changed): "
                "resume with the same batches in the same order, or start a new run"
            )
        path = Path(str(directory)) / CHECKPOINT_FILE
        restore_checkpoint(path, state, lens, optimizer, scheduler)
        start = start_of(state, path, lens)
    show = progress and distributed.is_primary()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not show)
    while step < config.steps:
        optimizer.zero_grad(set_to_none=True)
        total, tokens_seen, began = 0.0, 0, time.perf_counter()
        for micro in range(config.grad_accumulation):
            try:
                tokens = next(batches)
            except StopIteration:
                needed = config.steps * config.grad_accumulation
                raise DataError(
                    f"the data ran out at step {step} of {config.steps}: token_batches gave "
                    f"{consumed} batches and the steps need {needed} (steps × "
                    "grad_accumulation): give more text or fewer steps"
                ) from None
            consumed += 1
            digest.add(tokens)
            targets = lens_kl.targets(model, tokens)
            last = micro == config.grad_accumulation - 1
            # DDP all-reduces gradients on the last micro-batch's backward only.
            with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
                loss, _ = objective(targets)
                (loss / config.grad_accumulation).backward()
            total += loss.item() / config.grad_accumulation
            tokens_seen += tokens.numel()
        total = distributed.mean_over_ranks(total)
        tokens_seen *= distributed.world_size()
        if not math.isfinite(total):
            raise FloatingPointError(f"the loss became {total} at step {step}; lower the lr")
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        step += 1
        history.append({"step": step, "loss": total, "lr": lr, "tokens": tokens_seen})
        if on_step is not None:
            on_step(history[-1])
        bar.update(1)
        speed = tokens_seen / (time.perf_counter() - began)
        bar.set_postfix(loss=f"{total:.3f}", tokens_per_s=f"{speed:.0f}")
        if directory is not None and (step % config.checkpoint_every == 0 or step == config.steps):
            state = {
                "config": asdict(config),
                "lens": lens.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "step": step,
                "consumed": consumed,
                "history": history,
                "world_size": distributed.world_size(),
                "matmul_dtype": str(lens_kl.matmul_dtype).removeprefix("torch."),
                "batch_digests": digest.over_ranks(),  # a collective: every rank calls it
                PROVENANCE_KEY: current_provenance(model, settings=asdict(config)),
            }
            if start is not None:
                state["start"] = start
            if distributed.is_primary():  # every rank holds the same state after the step
                save_checkpoint(directory, state)
            distributed.barrier()
    bar.close()
    tokens = sum(record.get("tokens", 0) for record in history)
    lens.fit_settings = {"method": "train", **asdict(config), "tokens": tokens}
    result = TrainHistory(history)
    if held_out is not None:
        if start is None:
            warn(
                f"the checkpoint in {directory} records no start (made by an older "
                "hooklens): the fine-tune is kept at every layer, unchecked on held-out text"
            )
        else:
            result.held_out = keep_better(
                model, lens, start, held_out, vocab_chunk=config.vocab_chunk
            )
    return result
