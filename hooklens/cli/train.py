"""`hooklens train`: data → fast fit → KL fine-tune → saved lens, resumable.

The token stream is deterministic (same data, tokenizer and split every run), so a run
restarted with `--resume` after any interruption, SIGKILL included, reads the batches
it had not yet consumed and ends with the same lens as an uninterrupted run.

The run ends by keeping, per layer, the better of its start (fast fit or identity) and
its fine-tune on `--held-out-tokens` of the data's held-out split (`keep_better`), and
writes the lens with `history.json` (`{"steps": [...], "held_out": {"tokens", "layers":
[{layer, start_kl, tuned_kl, kept}]}}`) in one staged write.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from hooklens import models
from hooklens.artifacts import output_lock
from hooklens.cli import options
from hooklens.cli._train_run import RUN_FILE as RUN_FILE  # re-exported
from hooklens.cli._train_run import RUN_OUTPUTS as RUN_OUTPUTS  # re-exported
from hooklens.cli._train_run import check_output, save_run, start_output
from hooklens.core import distributed
from hooklens.core.precision import MATMUL_DTYPES, describe
from hooklens.errors import (
    DataError,
    HooklensError,
    InputError,
)
from hooklens.lenses.tuned import TunedLens
from hooklens.training.data import (
    batches,
    check_data_source,
    data_fingerprint,
    load_texts,
    pack,
    split_texts,
)
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens
from hooklens.training.optimizers import DEFAULT_LR, OPTIMIZERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model_and_data_arguments(
        parser,
        "train",
        "model name (TransformerLens or hub)",
        "hub dataset name, or local .jsonl/.json/.txt/.parquet file(s) (a glob works)",
    )
    options.add_model_class_argument(parser)
    parser.add_argument("--text-field", default="text", help="the field of each record to read")
    parser.add_argument("--output", required=True, help="directory for the lens and checkpoints")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per packed sequence (≥ 2)")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="sequences per step, over all processes"
    )
    parser.add_argument(
        "--fast-fit-tokens",
        type=int,
        default=25_600,
        help="tokens for the closed-form initial fit (0: start from the identity)",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="low-rank translators h + U(Vᵀh) + b, U, V of d_model × RANK (default: full)",
    )
    parser.add_argument(
        "--held-out-tokens",
        type=int,
        default=2048,
        help="held-out tokens on which the end of the run keeps, per layer, the better of "
        "the start and the fine-tune (0: keep the fine-tune unchecked)",
    )
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimiser steps")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=TrainConfig.optimizer,
        help="sgd is Nesterov; muon is torch's Muon for the matrices, Adam for the biases",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=argparse.SUPPRESS,  # absent: the optimizer's own, which the help lists
        help="default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + " (sgd: tuned-lens's scale)",
    )
    parser.add_argument("--momentum", type=float, default=TrainConfig.momentum, help="sgd momentum")
    parser.add_argument(
        "--weight-decay", type=float, default=TrainConfig.weight_decay, help="L2 (adamw: decoupled)"
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=TrainConfig.warmup_steps,
        help="steps of linear lr warm-up, before the linear decay to 0",
    )
    parser.add_argument(
        "--grad-accumulation",
        type=int,
        default=TrainConfig.grad_accumulation,
        help="batches summed into each step",
    )
    parser.add_argument(
        "--kl-samples",
        type=int,
        default=TrainConfig.kl_samples,
        help="0: the exact loss; N: the sampled KL (each row's --kl-top-k target tokens "
        "exactly, N tokens drawn per batch), ~40x fewer loss FLOPs, opt-in",
    )
    parser.add_argument(
        "--kl-top-k", type=int, default=TrainConfig.kl_top_k, help="for --kl-samples"
    )
    parser.add_argument(
        "--matmul-dtype",
        choices=MATMUL_DTYPES,
        default=TrainConfig.matmul_dtype,
        help="loss matmuls; auto: bf16 only where the device runs it natively fast, "
        "float16 on GPUs without bf16 (T4)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=TrainConfig.checkpoint_every,
        help="steps between checkpoints (one is also written at the end)",
    )
    parser.add_argument(
        "--seed", type=int, default=TrainConfig.seed, help="torch seed of the fine-tune"
    )
    options.add_device_argument(parser)
    parser.add_argument(
        "--fsdp", action="store_true", help="shard the model's blocks over torchrun ranks"
    )
    parser.add_argument(
        "--cpu-offload", action="store_true", help="with --fsdp: keep block shards on the CPU"
    )
    parser.add_argument("--wandb", metavar="PROJECT", help="log each step to this wandb project")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its checkpoint (same settings and data)",
    )
    resume.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the run in --output ({', '.join(RUN_OUTPUTS)}; other files stay)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse what TrainConfig does not check, before anything loads."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.seq_len < 2:
        raise InputError(
            f"--seq-len must be at least 2 (each token predicts the next), got {args.seq_len}"
        )
    if args.fast_fit_tokens < 0:
        raise InputError(
            f"--fast-fit-tokens must be 0 (no fit: start from the identity) or more, got "
            f"{args.fast_fit_tokens}"
        )
    if args.rank is not None and args.rank < 1:
        raise InputError(
            f"--rank must be at least 1 (or left out: full translators), got {args.rank}"
        )
    if args.held_out_tokens < 0:
        raise InputError(
            f"--held-out-tokens must be 0 (no check) or more, got {args.held_out_tokens}"
        )
    if args.cpu_offload and not args.fsdp:
        raise InputError("--cpu-offload offloads the --fsdp shards: pass --fsdp too")
    if args.wandb is not None and not _importable("wandb"):
        raise InputError("--wandb needs the wandb package: pip install wandb")


def _importable(name: str) -> bool:
    return name in sys.modules or importlib.util.find_spec(name) is not None


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        optimizer=args.optimizer,
        lr=getattr(args, "lr", None),
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_accumulation=args.grad_accumulation,
        matmul_dtype=args.matmul_dtype,
        kl_samples=args.kl_samples,
        kl_top_k=args.kl_top_k,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )


def _run_settings(args: argparse.Namespace, config: TrainConfig) -> dict:
    """What run.json records: the data settings, the fine-tune's config, the data hash."""
    keys = ("model", "model_class", "data", "text_field", "seq_len", "batch_size")
    return {key: getattr(args, key) for key in keys} | {
        "fast_fit_tokens": args.fast_fit_tokens,
        "rank": args.rank,
        "held_out_tokens": args.held_out_tokens,
        "world_size": distributed.world_size(),
        "config": asdict(config),
        "data_hash": data_fingerprint(args.data),  # None for a hub dataset
    }


def _token_stream(args: argparse.Namespace, tokenizer) -> Iterator[torch.Tensor]:
    """This process's batches of the train split (every rank its own chunks)."""
    texts = (row[args.text_field] for row in load_texts(args.data, streaming=True))
    chunks = pack(split_texts(texts, held_out=False), tokenizer, args.seq_len)
    first = next(chunks, None)
    if first is None:
        raise DataError(
            f"{args.data} gave no chunk of {args.seq_len} tokens (empty, or all its "
            "training text is shorter): give more text or a smaller --seq-len"
        )
    chunks = itertools.chain([first], chunks)
    return batches(distributed.shard(chunks), args.batch_size // distributed.world_size())


def _held_out_batches(args: argparse.Namespace, tokenizer) -> list[torch.Tensor] | None:
    """`--held-out-tokens` of the held-out split in whole `--seq-len` chunks (the same on
    every rank), or None (with a line on stderr) when it is 0 or the split has no chunk."""
    if args.held_out_tokens == 0:
        return None
    texts = (row[args.text_field] for row in load_texts(args.data, streaming=True))
    chunks = pack(split_texts(texts, held_out=True), tokenizer, args.seq_len)
    n_chunks = max(1, args.held_out_tokens // args.seq_len)
    found = list(batches(itertools.islice(chunks, n_chunks), args.batch_size))
    if not found:
        if distributed.is_primary():
            print(
                f"hooklens train: the held-out split of {args.data} has no chunk of "
                f"{args.seq_len} tokens, so the fine-tune is kept at every layer unchecked "
                "(give more text, or --held-out-tokens 0 to say so)",
                file=sys.stderr,
            )
        return None
    return found


class _CountedBatches:
    """The batches of the fine-tune, counting the tokens read and whether they ran out."""

    def __init__(self, batches: Iterator[torch.Tensor]):
        self._batches, self.tokens, self.exhausted = batches, 0, False

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self._batches:
            self.tokens += batch.numel()
            yield batch
        self.exhausted = True


def _data_accounting(args: argparse.Namespace, fit_tokens: int, train_tokens: int) -> str:
    """Where the training text went and what the run needs, in flag terms."""
    world = distributed.world_size()
    per_step = args.batch_size // world * args.seq_len * args.grad_accumulation
    needed = args.steps * per_step
    share = f" (this process's share, 1 of {world})" if world > 1 else ""
    return (
        f"--data {args.data} held {fit_tokens + train_tokens:,} tokens of training text in "
        f"--seq-len {args.seq_len} chunks{share}: {fit_tokens:,} for the fast fit "
        f"(--fast-fit-tokens {args.fast_fit_tokens}) and {train_tokens:,} for the fine-tune, "
        f"whose --steps {args.steps} need {needed:,} ({per_step:,} a step): give more text, "
        "fewer --steps, or a smaller --fast-fit-tokens (0 skips the fit)"
    )


def _left_after_fit(
    args: argparse.Namespace, fit_tokens: int, stream: Iterator[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """The batches after the fast fit's; a `DataError` in flag terms if the fit took
    them all (on any rank: every rank raises), so a run on too little text stops
    before the fit, not at its first step."""
    first = next(stream, None)
    if distributed.mean_over_ranks(float(first is None)) > 0:
        what = (
            "the fast fit would take all the training text and leave none for the fine-tune"
            if fit_tokens
            else "no training text is left for the fine-tune"
        )
        raise DataError(f"{what}: {_data_accounting(args, fit_tokens, 0)}")
    assert first is not None
    return itertools.chain([first], stream)


def _wandb_logger(project: str | None, args: argparse.Namespace):
    if project is None or not distributed.is_primary():
        return None
    try:
        import wandb
    except ImportError:
        raise InputError("--wandb needs the wandb package: pip install wandb") from None
    run = wandb.init(project=project, config=vars(args))
    return lambda record: run.log(record, step=record["step"])


def run(args: argparse.Namespace) -> int:
    """Check everything cheap (arguments, data) before the model loads, take the lock of
    --output, check the output under it, and write run.json only once the model and the
    first chunk of data are in hand."""
    options.resolve_model_and_data(args)
    _check_arguments(args)
    config = _train_config(args)
    check_data_source(args.data, args.text_field)
    args.model_class = models.resolve_model_class(args.model_class)  # recorded in run.json
    device = distributed.command_device(args.device)
    distributed.init_from_environment(device)
    world = distributed.world_size()
    if args.batch_size % world:
        raise InputError(
            f"--batch-size {args.batch_size} is not divisible by {world} processes: give a "
            f"multiple of {world}"
        )
    output = Path(args.output)
    settings = _run_settings(args, config)
    # Checked under the lock: a run that finished between our check and our start would
    # otherwise be replaced without --overwrite.
    with owned_output([output], "hooklens train"):
        check_output(args, output, settings)
        _train(args, config, device, output, settings)
    return 0


@contextmanager
def owned_output(paths: list[Path], command: str) -> Iterator[None]:
    """Own `paths` for this run (`hooklens.files.output_lock`); under torchrun rank 0
    owns them for all ranks. In a process group every rank learns whether it could, so
    none waits for the others in vain; before the group is joined the other ranks go on,
    and torchrun stops them when rank 0 fails."""
    grouped = distributed.active()
    primary = distributed.is_primary() if grouped else os.environ.get("RANK", "0") == "0"
    with ExitStack() as stack:
        refusal: HooklensError | None = None
        if primary:
            lock = output_lock(
                paths,
                command,
                advice="wait for that run to end, or choose another --output",
                on_stale=lambda message: print(f"{command}: {message}", file=sys.stderr),
            )
            try:
                stack.enter_context(lock)
            except HooklensError as error:
                refusal = error
        if grouped:
            refusal = distributed.broadcast_object(refusal)
        if refusal is not None:
            raise refusal
        yield


def _train(
    args: argparse.Namespace, config: TrainConfig, device: str, output: Path, settings: dict
) -> None:
    world = distributed.world_size()
    if distributed.is_primary():
        if args.resume and args.matmul_dtype == "auto":
            print("matmul dtype: the one auto chose when the run began (its checkpoint says)")
        else:
            print(describe(args.matmul_dtype, distributed.rank_device(device)))
    start = time.perf_counter()
    model = models.load(
        args.model, model_class=args.model_class, device=distributed.rank_device(device)
    )
    if args.fsdp:
        distributed.shard_blocks(model, cpu_offload=args.cpu_offload)
    stream = _token_stream(args, model.tokenizer)
    n_fit = args.fast_fit_tokens // (args.seq_len * args.batch_size)
    fit_batches = list(itertools.islice(stream, n_fit))  # consumed on resume too: same order
    fit_tokens = sum(batch.numel() for batch in fit_batches)
    # Before anything is written, and before the fit spends model time on the data.
    counted = _CountedBatches(_left_after_fit(args, fit_tokens, stream))
    start_output(args, output, settings)
    held_out = _held_out_batches(args, model.tokenizer)
    if args.resume:
        lens = TunedLens.from_model(model, rank=args.rank)  # weights from the checkpoint
    elif fit_batches:
        lens = fit_tuned_lens(model, fit_batches, rank=args.rank, progress=not args.no_progress)
    else:
        lens = TunedLens.from_model(model, rank=args.rank)
    try:
        history = train_lens(
            model,
            lens,
            counted,
            config,
            checkpoint_dir=output / "checkpoint",
            resume=args.resume,
            progress=not args.no_progress,
            on_step=_wandb_logger(args.wandb, args),
            held_out=held_out,
        )
    except DataError as error:
        if not counted.exhausted:
            raise
        raise DataError(f"{error}. {_data_accounting(args, fit_tokens, counted.tokens)}") from None
    if distributed.is_primary():
        save_run(output, lens, history, held_out)
        tokens = sum(record["tokens"] for record in history)
        print(
            f"trained {output / 'lens'}: {len(history)} steps, {tokens} tokens on {world} "
            f"process(es), final loss {history[-1]['loss']:.3f}, "
            f"{time.perf_counter() - start:.0f}s"
        )
    distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hooklens train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
