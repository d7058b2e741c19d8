"""Tuned-lens training throughput on SmolLM2-135M, measured side by side in one run.

- straightforward: per layer, full-vocabulary `log_softmax` and KL with autograd
  (backward layer by layer to bound memory), float32;
- ours, float32: `hooklens.training.loop.batch_loss` (chunked KL, custom backward);
- ours, bfloat16 matmuls: the same with `matmul_dtype="bfloat16"`.

Each runs `--steps` Adam steps on `[batch, seq]` random-text batches after one warm-up
step; tokens/s counts the tokens of the batch (every layer is trained on each).

    python benchmarks/train_throughput.py [--batch 2] [--seq 512] [--steps 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from hooklens import TunedLens, models
from hooklens.training.loop import TrainConfig, batch_loss


def straightforward_step(model, lens, tokens) -> float:
    adapter = lens.adapter
    names = set(adapter.residual_hook_names())
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        target = torch.log_softmax(logits, -1)
    total = 0.0
    for layer in range(lens.n_layers):
        log_p = torch.log_softmax(lens(cache[adapter.hook_name("resid_pre", layer)], layer), -1)
        loss = (target.exp() * (target - log_p)).sum(-1).mean()
        loss.backward()
        total += loss.item()
    return total


def run(name, step_fn, lens, steps) -> float:
    optimizer = torch.optim.Adam(lens.parameters(), lr=1e-3)

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        step_fn()
        optimizer.step()

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    model = models.load("smollm2-135m")
    model.requires_grad_(False)
    tokens = torch.randint(
        100, 40_000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    n_tokens = tokens.numel()
    results = {}
    lens = TunedLens.from_model(model)
    results["straightforward (float32)"] = run(
        "straightforward", lambda: straightforward_step(model, lens, tokens), lens, args.steps
    )
    for dtype in ("float32", "bfloat16"):
        lens = TunedLens.from_model(model)
        config = TrainConfig(matmul_dtype=dtype)
        results[f"ours ({dtype} matmuls)"] = run(
            dtype,
            lambda c=config, lens=lens: batch_loss(model, lens, tokens, c)[0].backward(),
            lens,
            args.steps,
        )
    base = results["straightforward (float32)"]
    print(f"SmolLM2-135M, {n_tokens} tokens per step ({args.batch} × {args.seq}), 30 layers")
    print(f"{'implementation':<28}{'s/step':>8}{'tokens/s':>10}{'speed-up':>10}")
    for name, seconds in results.items():
        print(f"{name:<28}{seconds:>8.1f}{n_tokens / seconds:>10.0f}{base / seconds:>10.2f}")


if __name__ == "__main__":
    main()
