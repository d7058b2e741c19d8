"""`hooklens train`: data → fast fit → KL fine-tune → saved lens, resumable.

The token stream is deterministic (same data, tokenizer and split every run), so a run
restarted with `--resume` after any interruption, SIGKILL included, reads the batches
it had not yet consumed and ends with the same lens as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from hooklens import models
from hooklens.files import atomic_write_text
from hooklens.lenses.tuned import TunedLens
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, train_lens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--model-class", choices=["hooked", "bridge"], default="hooked")
    parser.add_argument("--data", default="wikipedia-summaries", help="hub name or local file(s)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--output", required=True, help="directory for the lens and checkpoints")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--fast-fit-tokens", type=int, default=25_600, help="closed-form init (0: identity)"
    )
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--optimizer", default=TrainConfig.optimizer)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--grad-accumulation", type=int, default=TrainConfig.grad_accumulation)
    parser.add_argument("--matmul-dtype", default=TrainConfig.matmul_dtype)
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    checkpoint_dir = output / "checkpoint"
    if (checkpoint_dir / CHECKPOINT_FILE).is_file() and not args.resume:
        raise FileExistsError(
            f"{checkpoint_dir} holds a checkpoint: pass --resume to continue it, or choose "
            "another --output"
        )
    config = TrainConfig(
        steps=args.steps,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_accumulation=args.grad_accumulation,
        matmul_dtype=args.matmul_dtype,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    start = time.perf_counter()
    model = models.load(args.model, model_class=args.model_class)
    texts = (row[args.text_field] for row in load_texts(args.data, streaming=True))
    chunks = pack(split_texts(texts, held_out=False), model.tokenizer, args.seq_len)
    stream = batches(chunks, args.batch_size)
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
        checkpoint_dir=checkpoint_dir,
        resume=args.resume,
        progress=not args.no_progress,
    )
    lens.save(output / "lens")
    atomic_write_text(output / "history.json", json.dumps(history, indent=1) + "\n")
    tokens = sum(record["tokens"] for record in history)
    print(
        f"trained {output / 'lens'}: {len(history)} steps, {tokens} tokens, "
        f"final loss {history[-1]['loss']:.3f}, {time.perf_counter() - start:.0f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hooklens train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
