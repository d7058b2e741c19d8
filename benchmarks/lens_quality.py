"""Held-out KL(output ‖ lens) per layer on SmolLM2-135M for four ways to get a lens,
with the compute each used, in one run:

- logit lens (no training);
- fast fit: closed-form least squares on `--fit-tokens` (one pass of the model);
- fast fit + KL fine-tune: then `--steps` steps of `--optimizer` (default: hooklens's)
  on KL(output ‖ lens);
- KL from the identity: the same steps from zero translators (tuned-lens's recipe,
  with our default optimiser; `--no-identity` leaves it out);
- with `--kl-samples N`: fast fit + sampled-KL fine-tune (`hooklens.core.sampled_kl`,
  N tokens drawn per batch) for the wall time the exact fine-tune took: as many
  steps as fit in it at the sampled loss's measured seconds per step, on the training
  text that follows.

Training text is the Wikipedia summaries' train split, evaluation its held-out split.
Fine-tuning uses the matmul dtype "auto" picks (bf16 where it is native).
shared/MEASURED.md's prototype: 3.00 (fast fit, 25.6k tokens, 48 s), 2.33 (+255 s
fine-tune), 5.30 (229 s from identity), logit lens 18.7.

    python benchmarks/lens_quality.py [--fit-tokens 25600] [--steps 32] [--eval-tokens 4096]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import numpy as np
import torch

from hooklens import LogitLens, TunedLens, models, precision
from hooklens.evaluation import evaluate_lenses
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens
from hooklens.training.optimizers import OPTIMIZERS

SHOWN_LAYERS = (0, 5, 9, 14, 18, 24, 29)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-tokens", type=int, default=25_600)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=4_096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--all-layers", action="store_true")
    parser.add_argument("--no-identity", action="store_true", help="skip KL from identity")
    parser.add_argument("--kl-samples", type=int, default=0, help="also the sampled KL")
    parser.add_argument("--optimizer", default=TrainConfig.optimizer, choices=OPTIMIZERS)
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
    config = TrainConfig(steps=args.steps, optimizer=args.optimizer, checkpoint_every=10**9)
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

    lenses = {
        "logit lens": LogitLens.from_model(model),
        "fast fit": fast_fit,
        "fast fit + KL fine-tune": fine_tuned,
    }
    if not args.no_identity:
        from_identity = TunedLens.from_model(model)
        began = time.perf_counter()
        train_lens(model, from_identity, train, config, progress=False)
        compute["KL from identity"] = (
            f"{args.steps * per_step} tokens, {time.perf_counter() - began:.0f} s"
        )
        lenses["KL from identity"] = from_identity

    if args.kl_samples:
        sampled_config = dataclasses.replace(config, steps=2, kl_samples=args.kl_samples)
        probe = TunedLens.from_model(model)
        probe.load_state_dict(fast_fit.state_dict())
        began = time.perf_counter()
        train_lens(model, probe, train[:2], sampled_config, progress=False)
        per_sampled_step = (time.perf_counter() - began) / 2
        steps = max(1, int(tune_seconds / per_sampled_step))
        skip = (len(fit) + len(train)) * args.batch_size
        sampled_train = token_batches(False, steps * per_step, skip=skip)
        steps = min(steps, len(sampled_train))
        sampled = TunedLens.from_model(model)
        sampled.load_state_dict(fast_fit.state_dict())
        began = time.perf_counter()
        train_lens(
            model,
            sampled,
            sampled_train,
            dataclasses.replace(sampled_config, steps=steps),
            progress=False,
        )
        name = f"fast fit + sampled KL ({args.kl_samples})"
        compute[name] = (
            f"{args.fit_tokens} + {steps * per_step} tokens, "
            f"{fit_seconds:.0f} + {time.perf_counter() - began:.0f} s ({steps} steps)"
        )
        lenses[name] = sampled
    results = evaluate_lenses(model, lenses, held_out)
    kl = {name: np.array(r["kl_to_output"][:-1]) for name, r in results["lenses"].items()}
    print(f"KL(output ‖ lens), nats/token, {results['tokens']} held-out tokens")
    print(
        f"fine-tuning: {config.optimizer} lr {config.lr}, {args.steps} steps of {per_step} tokens, "
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
