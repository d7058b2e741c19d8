"""Held-out KL(output ‖ lens) per layer on SmolLM2-135M for four ways to get a lens,
with the compute each used, in one run:

- logit lens (no training);
- fast fit: closed-form least squares on `--fit-tokens` (one pass of the model);
- fast fit + KL fine-tune: then `--steps` Adam steps on KL(output ‖ lens);
- KL from the identity: the same steps from zero translators (tuned-lens's recipe,
  with our default optimiser).

Training text is the Wikipedia summaries' train split, evaluation its held-out split.
Fine-tuning uses the matmul dtype "auto" picks (bf16 where it is native).
shared/MEASURED.md's prototype: 3.00 (fast fit, 25.6k tokens, 48 s), 2.33 (+255 s
fine-tune), 5.30 (229 s from identity), logit lens 18.7.

    python benchmarks/lens_quality.py [--fit-tokens 25600] [--steps 32] [--eval-tokens 4096]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from hooklens import LogitLens, TunedLens, models, precision
from hooklens.evaluation import evaluate_lenses
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens

SHOWN_LAYERS = (0, 5, 9, 14, 18, 24, 29)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-tokens", type=int, default=25_600)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=4_096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--all-layers", action="store_true")
    args = parser.parse_args()
    model = models.load("smollm2-135m")
    texts = load_texts("wikipedia-summaries")["text"]

    def token_batches(held_out: bool, n_tokens: int, skip: int = 0) -> list[torch.Tensor]:
        chunks = pack(split_texts(texts, held_out=held_out), model.tokenizer, args.seq_len)
        chunks = itertools.islice(chunks, skip, skip + max(1, n_tokens // args.seq_len))
        return list(batches(chunks, args.batch_size))

    per_step = args.seq_len * args.batch_size
    fit = token_batches(False, args.fit_tokens)
    train = token_batches(False, args.steps * per_step, skip=len(fit) * args.batch_size)
    held_out = token_batches(True, args.eval_tokens)
    config = TrainConfig(steps=args.steps, checkpoint_every=10**9)
    compute: dict[str, str] = {"logit lens": "-"}

    began = time.perf_counter()
    with torch.no_grad():
        fast_fit = fit_tuned_lens(model, fit, progress=False)
    fit_seconds = time.perf_counter() - began
    compute["fast fit"] = f"{args.fit_tokens} tokens, {fit_seconds:.0f} s"

    fine_tuned = TunedLens.from_model(model)
    fine_tuned.load_state_dict(fast_fit.state_dict())
    began = time.perf_counter()
    train_lens(model, fine_tuned, train, config, progress=False)
    tune_seconds = time.perf_counter() - began
    compute["fast fit + KL fine-tune"] = (
        f"{args.fit_tokens} + {args.steps * per_step} tokens, "
        f"{fit_seconds:.0f} + {tune_seconds:.0f} s"
    )

    from_identity = TunedLens.from_model(model)
    began = time.perf_counter()
    train_lens(model, from_identity, train, config, progress=False)
    compute["KL from identity"] = (
        f"{args.steps * per_step} tokens, {time.perf_counter() - began:.0f} s"
    )

    lenses = {
        "logit lens": LogitLens.from_model(model),
        "fast fit": fast_fit,
        "fast fit + KL fine-tune": fine_tuned,
        "KL from identity": from_identity,
    }
    results = evaluate_lenses(model, lenses, held_out)
    kl = {name: np.array(r["kl_to_output"][:-1]) for name, r in results["lenses"].items()}
    print(f"KL(output ‖ lens), nats/token, {results['tokens']} held-out tokens")
    print(
        f"fine-tuning: Adam lr {config.lr}, {args.steps} steps of {per_step} tokens, "
        f"{precision.describe()}\n"
    )
    names = list(lenses)
    print("| layer | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    layers = range(len(kl["logit lens"])) if args.all_layers else SHOWN_LAYERS
    for layer in layers:
        print(f"| {layer} | " + " | ".join(f"{kl[n][layer]:.2f}" for n in names) + " |")
    print("| **mean of 30** | " + " | ".join(f"**{kl[n].mean():.2f}**" for n in names) + " |")
    print("| compute | " + " | ".join(compute[n] for n in names) + " |")
    for name in names[1:]:
        below = bool((kl[name] < kl["logit lens"]).all())
        print(f"{name}: below the logit lens at every layer: {below}")


if __name__ == "__main__":
    main()
