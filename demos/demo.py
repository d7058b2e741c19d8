"""`make demo`: train a tuned lens for the embedded SmolLM2-135M and compare it with the
logit lens, offline, in under five minutes on two CPU cores.

1. Reads a paragraph with the logit lens (one `PredictionTrajectory` pass) and prints
   the top-1 next token per layer.
2. Fits a tuned lens in closed form on Wikipedia summaries (one streaming pass of the
   model: least squares from each layer's residual to the final one), then fine-tunes
   it for a few steps on KL(final ‖ lens) in the matmul dtype "auto" picks (bf16 where
   the CPU has it natively, float32 elsewhere), and keeps per layer the better of fast
   fit and fine-tune on 1,024 training tokens neither saw.
3. Evaluates logit lens, fast fit and fine-tuned lens on held-out summaries and prints
   KL(final ‖ lens) per layer.
4. Saves the lens (`demo-output/lens`, loads with `TunedLens.load`) and writes the
   self-contained HTML report comparing the lenses (`demo-output/report.html`).

The work is fitted to the machine: the defaults (25,600 fit tokens, 12 steps of
1,024 tokens, 2,048 held-out tokens) are for a CPU with float32 matmuls at ≥ 350 GFLOP/s;
a slower CPU fits and evaluates on proportionally fewer tokens, and takes as many
fine-tune steps as fit in about 80 s at its measured training speed
(on an AVX2-only CPU, where bf16 is emulated, that is float32 and a few steps). Give
any of the three flags to fix it.

    python demos/demo.py [--fit-tokens 25600] [--steps 12] [--eval-tokens 2048]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from hooklens import LogitLens, ModelAdapter, TunedLens, models, precision
from hooklens.cli.options import add_model_class_argument
from hooklens.evaluation import evaluate_lenses
from hooklens.report import trajectory_report
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.keep_better import lost_lines
from hooklens.training.loop import TrainConfig, batch_loss, train_lens
from hooklens.trajectory import PredictionTrajectory

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
    "France. It is named after the engineer Gustave Eiffel, whose company designed and "
    "built the tower from 1887 to 1889. The tower is the tallest structure in the city "
    "of"
)
SEQ_LEN, BATCH = 512, 2
# Float32 matmul speed at which the defaults run in full. Two AMX Xeon cores measure
# 200–250 GFLOP/s, yet their demo took 3¾ min one day and 5⅓ min another (memory and
# neighbours, not the matmul probe): the margin keeps it under 5 min on a slow day.
REFERENCE_GFLOPS = 350.0
FIT_TOKENS, MAX_STEPS, EVAL_TOKENS = 25_600, 12, 2_048
TUNE_SECONDS = 80.0  # fine-tuning budget at the measured training speed


def layer_table(model, text: str, position: int = -1) -> list[dict]:
    """One row per lens layer: top-1 token at `position`, entropy there, mean KL to final."""
    adapter = ModelAdapter(model)
    tokens = model.to_tokens(text)
    names = set(adapter.residual_hook_names())
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    trajectory = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(adapter), tokens, cache, logits
    )
    entropy = trajectory.entropy().stats[0]  # [layer, pos]
    forward_kl = trajectory.forward_kl().stats[0]
    top_ids, top_probs = trajectory.top_predictions()  # [batch, layer, pos, k]
    top_ids, top_probs = top_ids[0, :, position, 0], top_probs[0, :, position, 0]
    rows = []
    for layer in range(adapter.n_layers + 1):
        rows.append(
            {
                "layer": "output" if layer == adapter.n_layers else str(layer),
                "top1": adapter.tokenizer.decode([int(top_ids[layer])]),
                "p_top1": float(top_probs[layer]),
                "entropy": float(entropy[layer, position]),
                "kl_to_final": float(np.mean(forward_kl[layer])),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'layer':>6}  {'top-1 token':<16} {'p':>6} {'entropy':>8} {'KL→final':>9}"]
    for row in rows:
        lines.append(
            f"{row['layer']:>6}  {row['top1']!r:<16} {row['p_top1']:6.3f} "
            f"{row['entropy']:8.3f} {row['kl_to_final']:9.3f}"
        )
    return "\n".join(lines)


def format_comparison(results: dict) -> str:
    """Per-layer KL(final ‖ lens) of every evaluated lens, and their means over layers."""
    names = list(results["lenses"])
    columns = {name: results["lenses"][name]["kl_to_output"][:-1] for name in names}
    lines = [f"{'layer':>6} " + " ".join(f"{name:>14}" for name in names)]
    for layer in range(len(columns[names[0]])):
        lines.append(f"{layer:>6} " + " ".join(f"{columns[n][layer]:>14.3f}" for n in names))
    lines.append(f"{'mean':>6} " + " ".join(f"{np.mean(columns[n]):>14.3f}" for n in names))
    return "\n".join(lines)


def token_batches(model, *, held_out: bool, n_tokens: int, skip: int = 0) -> list[torch.Tensor]:
    texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    chunks = pack(split_texts(texts, held_out=held_out), model.tokenizer, SEQ_LEN)
    chunks = itertools.islice(chunks, skip, skip + max(1, n_tokens // SEQ_LEN))
    return list(batches(chunks, BATCH))


def _round_down(tokens: float, multiple: int, least: int) -> int:
    return max(least, int(tokens) // multiple * multiple)


def fit_to_device(args: argparse.Namespace, model, config: TrainConfig) -> str:
    """Fill in the budget flags not given, from this machine's measured speed."""
    gflops = precision.matmul_gflops(torch.float32)
    scale = min(1.0, gflops / REFERENCE_GFLOPS)
    if args.fit_tokens is None:
        args.fit_tokens = _round_down(FIT_TOKENS * scale, SEQ_LEN * BATCH, 4 * SEQ_LEN)
    if args.eval_tokens is None:
        args.eval_tokens = _round_down(EVAL_TOKENS * scale, SEQ_LEN, SEQ_LEN)
    if args.steps is None:
        # Training steps on a throwaway lens: a short one to warm up (first-call costs
        # would make the estimate pessimistic), then one on 256 tokens, timed.
        lens = TunedLens.from_model(model)
        ids = token_batches(model, held_out=False, n_tokens=SEQ_LEN)[0][:1]
        for probe in (ids[:, :32], ids[:, :256]):
            began = time.perf_counter()
            loss = batch_loss(model, lens, probe, config)[0]
            torch.autograd.grad(loss, list(lens.parameters()))
        tokens_per_s = probe.numel() / (time.perf_counter() - began)
        affordable = TUNE_SECONDS * tokens_per_s / (SEQ_LEN * BATCH)
        args.steps = max(1, min(MAX_STEPS, int(affordable)))
    return (
        f"float32 matmuls at {gflops:.0f} GFLOP/s; {precision.describe()}: "
        f"{args.fit_tokens} fit tokens, {args.steps} step{'s' * (args.steps != 1)}, "
        f"{args.eval_tokens} held-out tokens"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=PARAGRAPH)
    parser.add_argument("--position", type=int, default=-1, help="token position for top-1")
    add_model_class_argument(parser)
    parser.add_argument(
        "--fit-tokens",
        type=int,
        help=f"fast-fit tokens (default: {FIT_TOKENS}, fewer on a slow CPU)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help=f"fine-tune steps of {SEQ_LEN * BATCH} tokens (default: what fits in "
        f"{TUNE_SECONDS:.0f} s, at most {MAX_STEPS})",
    )
    parser.add_argument(
        "--eval-tokens",
        type=int,
        help=f"held-out tokens (default: {EVAL_TOKENS}, fewer on a slow CPU)",
    )
    parser.add_argument("--output", default="demo-output", help="lens and report go here")
    args = parser.parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    model = models.load(models.DEFAULT_MODEL, model_class=args.model_class)
    seconds = time.perf_counter() - began
    print(f"loaded {models.DEFAULT_MODEL} as {type(model).__name__} in {seconds:.1f}s")

    with torch.no_grad():
        rows = layer_table(model, args.text, args.position)
    tokens = model.to_str_tokens(args.text)
    print(
        f"\n1. logit lens: {len(tokens)} tokens; top-1 at position {args.position} "
        f"({tokens[args.position]!r})"
    )
    print("entropy in nats at that position; KL(final ‖ layer) in nats, mean over positions\n")
    print(format_table(rows))

    config = TrainConfig(steps=1, checkpoint_every=10**9)  # matmul dtype "auto"
    print(f"\nfitted to this machine: {fit_to_device(args, model, config)}")
    config = dataclasses.replace(config, steps=max(args.steps, 1))
    steps = f"{args.steps} KL step" + "s" * (args.steps != 1)
    print(f"\n2. fast fit on {args.fit_tokens} tokens, then {steps}")
    start = time.perf_counter()
    fit = token_batches(model, held_out=False, n_tokens=args.fit_tokens)
    with torch.no_grad():
        fast_fit = fit_tuned_lens(model, fit)
    fit_seconds = time.perf_counter() - start
    tuned = TunedLens.from_model(model)
    tuned.load_state_dict(fast_fit.state_dict())
    start = time.perf_counter()
    if args.steps:
        train = token_batches(
            model, held_out=False, n_tokens=args.steps * SEQ_LEN * BATCH, skip=len(fit) * BATCH
        )
        # Training text the fine-tune never saw: per layer, the lens keeps the better of
        # the fast fit and the fine-tune on it (never worse than its start).
        choice = token_batches(
            model, held_out=False, n_tokens=SEQ_LEN * BATCH, skip=(len(fit) + len(train)) * BATCH
        )
        history = train_lens(model, tuned, train, config, held_out=choice)
        lost = lost_lines(history.held_out or [])
        print(
            f"kept the fine-tune at {model.cfg.n_layers - len(lost)} of {model.cfg.n_layers} layers"
        )
        for line in lost:
            print(f"  {line}")
    tune_seconds = time.perf_counter() - start
    print(f"fast fit {fit_seconds:.0f}s, fine-tune {tune_seconds:.0f}s")

    start = time.perf_counter()
    lenses = {"logit lens": LogitLens.from_model(model), "fast fit": fast_fit, "tuned lens": tuned}
    held_out = token_batches(model, held_out=True, n_tokens=args.eval_tokens)
    results = evaluate_lenses(model, lenses, held_out)
    print(
        f"\n3. KL(final ‖ lens) per layer on {results['tokens']} held-out tokens, nats/token "
        f"({time.perf_counter() - start:.0f}s)\n"
    )
    print(format_comparison(results))

    output = Path(args.output)
    tuned.save(output / "lens")
    with torch.no_grad():
        path = trajectory_report(model, args.text, {"tuned lens": tuned}, output / "report.html")
    print(
        f"\n4. saved {output / 'lens'} (TunedLens.load) and wrote {path} "
        f"(open it in a browser); total {time.perf_counter() - began:.0f}s"
    )
    print(
        f"\nNext, explore any prompt with both lenses in a browser (pip install 'hooklens[app]'):\n"
        f"    hooklens serve --lens {output / 'lens'}"
    )


if __name__ == "__main__":
    main()
