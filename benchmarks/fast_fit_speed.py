"""Fast-fit throughput on SmolLM2-135M: with and without the model's head.

The fast fit reads residuals only. A HookedTransformer can stop after its last block
(`stop_at_layer=n_layers`), skipping the final norm and the [tokens, 49,152] logits; this
times `fit_tuned_lens` both ways on the same batches, alternating, and checks that the
two lenses are identical. Also prints the bare forward for scale.

    python benchmarks/fast_fit_speed.py [--batches 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from hooklens import models
from hooklens.core.precision import retain_freed_memory
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches of 2 × 512 tokens")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_grad_enabled(False)
    model = models.load("smollm2-135m")
    texts = load_texts("wikipedia-summaries")["text"]
    chunks = pack(split_texts(texts, held_out=False), model.tokenizer, seq_len=512)
    data = list(itertools.islice(batches(chunks, 2), args.batches))
    n_tokens = sum(b.numel() for b in data)

    run_with_cache = model.run_with_cache

    def with_head(*a, **kw):  # what the fit did before: the whole forward, logits included
        kw.pop("stop_at_layer", None)
        return run_with_cache(*a, **kw)

    times: dict[str, list[float]] = {"with head": [], "without head (ours)": []}
    lenses = {}
    for _ in range(args.repeats):
        for name in times:
            model.run_with_cache = with_head if name == "with head" else run_with_cache
            began = time.perf_counter()
            lenses[name] = fit_tuned_lens(model, data, progress=False)
            times[name].append(time.perf_counter() - began)
    model.run_with_cache = run_with_cache
    began = time.perf_counter()
    for tokens in data:
        model(tokens)
    forward = time.perf_counter() - began

    same = all(
        torch.equal(a, b)
        for a, b in zip(*(lens.state_dict().values() for lens in lenses.values()), strict=True)
    )
    print(f"{n_tokens:,} tokens, best of {args.repeats}; lenses identical: {same}")
    print(f"{'plain forward (logits)':>22}: {n_tokens / forward:6.0f} tok/s")
    best = {name: min(ts) for name, ts in times.items()}
    for name, seconds in best.items():
        print(f"{'fit ' + name:>22}: {n_tokens / seconds:6.0f} tok/s ({seconds:.1f} s)")
    ratio = best["with head"] / best["without head (ours)"]
    print(f"speed-up without the head: {ratio:.2f}×")


if __name__ == "__main__":
    main()
