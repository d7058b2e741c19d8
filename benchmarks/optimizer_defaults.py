"""Which optimiser defaults converge on SmolLM2-135M? Short KL runs side by side.

Each configuration trains from the same start on the same batches (Wikipedia summaries,
train split) and is then evaluated on held-out text: mean KL(output ‖ lens) over the
30 layers, with the loss at the first, worst and last step. Starts: the identity
(zero translators) and the fast fit.

- `sgd lr 10`: torch's SGD at lr 1.0 with Nesterov momentum 0.9, what a prototype ran
  when it took the tuned-lens paper's "lr 1.0" literally;
- `sgd lr 1`: tuned-lens's actual default (torch lr 1.0 × (1 − momentum) = 0.1);
- `adam lr 1e-3`: hooklens's default.

    python benchmarks/optimizer_defaults.py [--steps 40] [--tokens-per-step 1024]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from hooklens import LogitLens, PredictionTrajectory, TunedLens, models
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens

CONFIGS = {
    "sgd lr 10 (torch lr 1.0)": dict(optimizer="sgd", lr=10.0, weight_decay=1e-3),
    "sgd lr 1 (tuned-lens default)": dict(optimizer="sgd", lr=1.0, weight_decay=1e-3),
    "adam lr 1e-3 (hooklens default)": dict(optimizer="adam", lr=1e-3),
}


def held_out_kl(lens, model, token_batches) -> float:
    per_layer = []
    with torch.no_grad():
        for tokens in token_batches:
            logits, cache = model.run_with_cache(tokens)
            trajectory = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
            per_layer.append(trajectory.forward_kl().stats[:, :-1].mean(axis=(0, 2)))
    return float(np.mean(per_layer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--fit-tokens", type=int, default=25_600)
    parser.add_argument("--eval-tokens", type=int, default=2_048)
    parser.add_argument("--matmul-dtype", default="auto")
    parser.add_argument("--starts", default="identity,fast fit", help="comma-separated")
    args = parser.parse_args()
    model = models.load("smollm2-135m")
    texts = load_texts("wikipedia-summaries")["text"]

    def token_batches(held_out: bool, n_tokens: int) -> list[torch.Tensor]:
        chunks = pack(split_texts(texts, held_out=held_out), model.tokenizer, args.seq_len)
        chunks = itertools.islice(chunks, max(1, n_tokens // args.seq_len))
        return list(batches(chunks, args.batch_size))

    per_step = args.seq_len * args.batch_size
    fit = token_batches(False, args.fit_tokens)
    train = token_batches(False, args.fit_tokens + args.steps * per_step)[len(fit) :]
    held_out = token_batches(True, args.eval_tokens)
    starts = {}
    with torch.no_grad():
        for start in args.starts.split(","):
            fitted = start == "fast fit"
            starts[start] = fit_tuned_lens(model, fit) if fitted else TunedLens.from_model(model)
    print(f"{args.steps} steps of {per_step} tokens, linear decay, grad clip 1.0")
    print(f"held-out mean KL over 30 layers, {args.eval_tokens} tokens, nats/token")
    print(f"logit lens: {held_out_kl(LogitLens.from_model(model), model, held_out):.2f}")
    if "fast fit" in starts:
        print(f"fast fit: {held_out_kl(starts['fast fit'], model, held_out):.2f}")
    print()
    print(
        f"{'start':<9} {'optimiser':<32} {'loss first':>10} {'max':>9} {'last':>9} "
        f"{'held-out':>9} {'seconds':>8}"
    )
    for (start_name, start), (name, options) in itertools.product(starts.items(), CONFIGS.items()):
        lens = TunedLens.from_model(model)
        lens.load_state_dict(start.state_dict())
        config = TrainConfig(
            steps=args.steps, matmul_dtype=args.matmul_dtype, checkpoint_every=10**9, **options
        )
        began = time.perf_counter()
        try:
            history = train_lens(model, lens, train, config, progress=False)
            losses = [record["loss"] for record in history]
            held = f"{held_out_kl(lens, model, held_out):9.2f}"
        except FloatingPointError as error:
            losses, held = [float("nan")] * 2, f"{'diverged':>9}"
            print(f"  ({error})")
        seconds = time.perf_counter() - began
        print(
            f"{start_name:<9} {name:<32} {losses[0] / 30:10.2f} {max(losses) / 30:9.2f} "
            f"{losses[-1] / 30:9.2f} {held} {seconds:8.0f}",
            flush=True,
        )
    print("\nloss columns: training loss / 30 (mean over layers), nats/token")


if __name__ == "__main__":
    main()
