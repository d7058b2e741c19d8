"""Cost of the patching sweep on SmolLM2-135M: ours vs one patched full forward per cell.

One greater-than prompt pair (17 tokens), patched layers `--layers` (default every 5th),
every position, the logit lens read at every layer. The naive loop runs the model once
per (layer, position) with a `patch` hook and reads every layer from that run, as a user
would with `run_with_hooks`; ours reuses the cached runs and starts at the patched layer.
Both are checked to give the same values.

    python benchmarks/patching_cost.py [--layers 0,5,10,15,20,25]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hooklens import LogitLens, ModelAdapter, models
from hooklens.causal.effects import answer_log_prob_diff
from hooklens.causal.interventions import patch
from hooklens.causal.patching import patching_sweep
from hooklens.causal.tasks import greater_than


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="0,5,10,15,20,25")
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    torch.set_grad_enabled(False)
    model = models.load("smollm2-135m")
    lens = LogitLens.from_model(model)
    task = greater_than(model.tokenizer, 1)
    clean, corrupted = task.clean[:1], task.corrupted[:1]
    sets = (task.targets[:1], task.anti_targets[:1])
    n_pos = clean.shape[1]

    began = time.perf_counter()
    sweep = patching_sweep(lens, model, clean, corrupted, *sets, layers=layers, progress=False)
    ours = time.perf_counter() - began

    began = time.perf_counter()
    names = ModelAdapter(model).residual_hook_names()
    _, cache = model.run_with_cache(clean, names_filter=names)
    naive = np.zeros((len(layers), n_pos, model.cfg.n_layers + 1))
    for i, layer in enumerate(layers):
        for position in range(n_pos):
            hook = patch(model, "resid_pre", layer, cache, positions=[position])
            naive[i, position] = answer_log_prob_diff(
                lens, model, corrupted, *sets, fwd_hooks=[hook]
            )[0]
    naive_seconds = time.perf_counter() - began
    error = float(np.abs(naive - sweep.values[0]).max())

    print(f"SmolLM2-135M, {n_pos} positions × {len(layers)} patched layers {layers}")
    print(f"{'':<10}{'model calls':>12}{'block fwds':>12}{'seconds':>9}")
    print(
        f"{'naive':<10}{sweep.naive_model_calls:>12}{sweep.naive_block_forwards:>12}"
        f"{naive_seconds:>9.1f}"
    )
    print(f"{'sweep':<10}{sweep.model_calls:>12}{sweep.block_forwards:>12}{ours:>9.1f}")
    print(
        f"ratios naive/sweep: calls {sweep.naive_model_calls / sweep.model_calls:.1f}×, "
        f"block forwards {sweep.naive_block_forwards / sweep.block_forwards:.2f}×, "
        f"time {naive_seconds / ours:.1f}×; max |difference| {error:.1e}"
    )


if __name__ == "__main__":
    main()
