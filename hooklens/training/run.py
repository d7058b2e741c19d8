"""`hooklens train`: data → fast fit → KL fine-tune → saved lens, resumable.

The token stream is deterministic (same data, tokenizer and split every run), so a run
restarted with `--resume` after any interruption, SIGKILL included, reads the batches
it had not yet consumed and ends with the same lens as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from hooklens import models
from hooklens.files import atomic_write_text
from hooklens.lenses.tuned import TunedLens
from hooklens.precision import MATMUL_DTYPES, describe
from hooklens.training import distributed
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, train_lens

RUN_FILE = "run.json"  # the data settings a --resume must repeat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    models.add_model_class_argument(parser)
    parser.add_argument("--data", default="wikipedia-summaries", help="hub name or local file(s)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--output", required=True, help="directory for the lens and checkpoints")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument(
        "--batch-size", type=int, default=4, help="sequences per step, over all processes"
    )
    parser.add_argument(
        "--fast-fit-tokens", type=int, default=25_600, help="closed-form init (0: identity)"
    )
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--optimizer", default=TrainConfig.optimizer)
    parser.add_argument(
        "--lr", type=float, default=TrainConfig.lr, help="for sgd: tuned-lens's scale (1.0)"
    )
    parser.add_argument("--momentum", type=float, default=TrainConfig.momentum)
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--grad-accumulation", type=int, default=TrainConfig.grad_accumulation)
    parser.add_argument(
        "--matmul-dtype",
        choices=MATMUL_DTYPES,
        default=TrainConfig.matmul_dtype,
        help="loss matmuls; auto: bf16 only where the device runs it natively fast",
    )
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--device", help="default: cuda (one GPU per torchrun rank) if present")
    parser.add_argument(
        "--fsdp", action="store_true", help="shard the model's blocks over torchrun ranks"
    )
    parser.add_argument(
        "--cpu-offload", action="store_true", help="with --fsdp: keep block shards on the CPU"
    )
    parser.add_argument("--wandb", metavar="PROJECT", help="log each step to this wandb project")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    parser.add_argument("--no-progress", action="store_true")


def _data_settings(args: argparse.Namespace) -> dict:
    keys = ("model", "model_class", "data", "text_field", "seq_len", "batch_size")
    return {key: getattr(args, key) for key in keys} | {
        "fast_fit_tokens": args.fast_fit_tokens,
        "world_size": distributed.world_size(),
    }


def _prepare_output(args: argparse.Namespace, output: Path) -> None:
    """Refuse to touch an existing run unless asked; check a resume repeats its settings."""
    settings = _data_settings(args)
    if args.resume:
        if not (output / "checkpoint" / CHECKPOINT_FILE).is_file():
            raise FileNotFoundError(f"no checkpoint to resume in {output / 'checkpoint'}")
        saved = json.loads((output / RUN_FILE).read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            listing = ", ".join(
                f"{k}: {old!r} then, {new!r} now" for k, (old, new) in changed.items()
            )
            raise ValueError(f"--resume must repeat the run's settings ({listing})")
        return
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            raise FileExistsError(
                f"{output} is not empty: pass --resume to continue its run, --overwrite to "
                "replace it, or choose another --output"
            )
        if distributed.is_primary():
            shutil.rmtree(output / "checkpoint", ignore_errors=True)
    distributed.barrier()
    if distributed.is_primary():
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / RUN_FILE, json.dumps(settings, indent=1) + "\n")


def _token_stream(args: argparse.Namespace, tokenizer) -> Iterator[torch.Tensor]:
    """This process's batches of the train split (every rank its own chunks)."""
    texts = (row[args.text_field] for row in load_texts(args.data, streaming=True))
    chunks = pack(split_texts(texts, held_out=False), tokenizer, args.seq_len)
    first = next(chunks, None)
    if first is None:
        raise ValueError(
            f"{args.data} gave no chunk of {args.seq_len} tokens (empty, or all its "
            "training text is shorter): give more text or a smaller --seq-len"
        )
    chunks = itertools.chain([first], chunks)
    return batches(distributed.shard(chunks), args.batch_size // distributed.world_size())


def _wandb_logger(project: str | None, args: argparse.Namespace):
    if project is None or not distributed.is_primary():
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install wandb") from None
    run = wandb.init(project=project, config=vars(args))
    return lambda record: run.log(record, step=record["step"])


def _rank_device(device: str) -> str:
    """Under torchrun each rank takes the GPU of its local rank."""
    if device == "cuda" and distributed.world_size() > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def run(args: argparse.Namespace) -> int:
    args.model_class = models.resolve_model_class(args.model_class)  # recorded in run.json
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    distributed.init_from_environment(device)
    world = distributed.world_size()
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by {world} processes")
    config = TrainConfig(
        steps=args.steps,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_accumulation=args.grad_accumulation,
        matmul_dtype=args.matmul_dtype,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    if distributed.is_primary():
        print(describe(args.matmul_dtype, _rank_device(device)))
    output = Path(args.output)
    _prepare_output(args, output)
    start = time.perf_counter()
    model = models.load(args.model, model_class=args.model_class, device=_rank_device(device))
    if args.fsdp:
        distributed.shard_blocks(model, cpu_offload=args.cpu_offload)
    stream = _token_stream(args, model.tokenizer)
    n_fit = args.fast_fit_tokens // (args.seq_len * args.batch_size)
    fit_batches = list(itertools.islice(stream, n_fit))  # consumed on resume too: same order
    if args.resume:
        lens = TunedLens.from_model(model)  # its weights come from the checkpoint
    elif fit_batches:
        lens = fit_tuned_lens(model, fit_batches, progress=not args.no_progress)
    else:
        lens = TunedLens.from_model(model)
    history = train_lens(
        model,
        lens,
        stream,
        config,
        checkpoint_dir=output / "checkpoint",
        resume=args.resume,
        progress=not args.no_progress,
        on_step=_wandb_logger(args.wandb, args),
    )
    if distributed.is_primary():
        lens.save(output / "lens")
        atomic_write_text(output / "history.json", json.dumps(history, indent=1) + "\n")
        tokens = sum(record["tokens"] for record in history)
        print(
            f"trained {output / 'lens'}: {len(history)} steps, {tokens} tokens on {world} "
            f"process(es), final loss {history[-1]['loss']:.3f}, "
            f"{time.perf_counter() - start:.0f}s"
        )
    distributed.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hooklens train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
