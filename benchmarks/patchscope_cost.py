"""What a Patchscope costs on the embedded SmolLM2-135M: hooklens's batched reading
against one patched forward per (layer, position) cell, side by side in one run.

30 source layers × 32 source positions read through the token-identity prompt. The
batched reading runs the source once, the target prompt once (its residuals cached),
then, per layer, the blocks from that layer on for copies of the prompt (32 positions
per call), and unembeds the placeholder only. The reference patches one state into one
prompt run with a hook per cell, as the paper's code and a hand-written loop do. Both
readings are checked to agree. Run it alone: two torch processes on two cores slow each
other several times over.

    python benchmarks/patchscope_cost.py [--positions 32] [--reference-cells 96]

The reference's time for every cell is extrapolated from `--reference-cells` cells
(evenly spread over layers), said as such in the output.
"""

from __future__ import annotations

import argparse
import time

import torch

from hooklens import models
from hooklens.causal import patchscope_log_probs, token_identity_prompt
from hooklens.core import ModelAdapter

SOURCE = (
    "The Eiffel Tower is in the city of Paris, which is also the capital of the country of "
    "France. It was built for the world fair of 1889 and is now the most visited monument"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--reference-cells", type=int, default=96)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = models.load("smollm2-135m")
    adapter = ModelAdapter(model)
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda module, inputs: calls.__setitem__("n", calls["n"] + 1))
    ids = model.to_tokens(SOURCE)[:, : args.positions]
    prompt = token_identity_prompt(model)
    n_cells = adapter.n_layers * ids.shape[-1]
    print(
        f"SmolLM2-135M: {adapter.n_layers} layers x {ids.shape[-1]} positions = {n_cells} "
        f"cells, target prompt {prompt.ids.shape[-1]} tokens, {torch.get_num_threads()} "
        f"threads, CPU {torch.backends.cpu.get_cpu_capability()}, model in "
        f"{next(model.parameters()).dtype}"
    )
    patchscope_log_probs(model, ids[:, :2], prompt, progress=False)  # warm-up
    calls["n"] = 0
    start = time.perf_counter()
    batched = patchscope_log_probs(model, ids, prompt, progress=False)
    batched_seconds = time.perf_counter() - start
    batched_calls = calls["n"]

    _, cache = model.run_with_cache(ids)
    cells = [
        (layer, position) for layer in range(adapter.n_layers) for position in range(ids.shape[-1])
    ][:: max(1, n_cells // args.reference_cells)]
    calls["n"] = 0
    worst = 0.0
    start = time.perf_counter()
    for layer, position in cells:
        name = adapter.hook_name("resid_pre", layer)
        state = cache[name][0, position]

        def overwrite(value, hook=None, state=state):
            value = value.clone()
            value[0, prompt.placeholder] = state
            return value

        logits = model.run_with_hooks(prompt.ids, fwd_hooks=[(name, overwrite)])
        expected = torch.log_softmax(logits[0, prompt.placeholder], dim=-1)
        worst = max(worst, float((expected - batched[layer, position]).abs().max()))
    per_cell = (time.perf_counter() - start) / len(cells)
    reference_seconds = per_cell * n_cells
    print(f"largest difference between the two readings: {worst:.2e} (log-prob)")
    print(f"{'':<34} {'model calls':>11} {'seconds':>9}")
    print(f"{'hooklens (batched, mid-network)':<34} {batched_calls:>11} {batched_seconds:>9.1f}")
    print(
        f"{'one patched forward per cell':<34} {n_cells:>11} {reference_seconds:>9.1f}"
        f"   (timed on {len(cells)} cells, x {n_cells / len(cells):.0f})"
    )
    print(f"ratio: {reference_seconds / batched_seconds:.1f}x fewer seconds")


if __name__ == "__main__":
    main()
