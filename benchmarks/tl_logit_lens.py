"""TransformerLens 4's `logit_lens` reading through our tuned lens, beside our trajectory.

On SmolLM2-135M (raw TransformerBridge) and one `--tokens`-token text of the offline
corpus, a `TunedLens` fitted in closed form (`fit_tuned_lens`, `--fit-tokens`) reads the
same cache two ways, alternating, `--repeats` times (the machine may be shared: the best
of each counts):

- TransformerLens: `logit_lens(model, cache=..., lens=transformer_lens_translator(lens),
  positions=slice(None, -1), targets=next tokens, return_type="log_probs")`, which gives
  the target log-prob (cross-entropy), its rank and the entropy per layer and position;
  and the same with a second call for the top-5 tokens (`top_k=5`), since the tool takes
  one selector per call.
- hooklens: `PredictionTrajectory.from_lens_and_cache(..., targets=next_token_targets)`,
  one pass for cross-entropy, rank, entropy, forward KL to the model and the top-5.

Prints each one's seconds, the time ratios, and the largest cross-entropy and entropy
differences between the two readouts. Needs the TransformerLens 4 venv.

    .venv-tl4/bin/python benchmarks/tl_logit_lens.py [--tokens 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hooklens import models
from hooklens.lenses import transformer_lens_translator
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.trajectory import PredictionTrajectory, next_token_targets


def _texts() -> Any:
    return split_texts(
        (row["text"] for row in load_texts("wikipedia-summaries", streaming=True)),
        held_out=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--fit-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from transformer_lens.tools.analysis import logit_lens

    model = models.load("smollm2-135m", model_class="bridge", processing=False)
    chunks = pack(_texts(), model.tokenizer, args.tokens)
    ids = next(chunks)[None]  # the first chunk is read, the next ones fit the lens
    fit = list(batches(itertools.islice(chunks, max(1, args.fit_tokens // args.tokens)), 2))
    with torch.no_grad():
        lens = fit_tuned_lens(model, fit, progress=False)
        logits, cache = model.run_with_cache(ids)
    translator = transformer_lens_translator(lens, model=model)
    scored = slice(None, -1)  # the last position has no next token

    def tool(**selector: Any) -> Any:
        return logit_lens(model, cache=cache, positions=scored, lens=translator, **selector)

    def tool_targets() -> Any:
        return tool(targets=ids[:, 1:], return_type="log_probs")

    def tool_targets_and_top5() -> Any:
        return tool_targets(), tool(top_k=5)

    def ours() -> PredictionTrajectory:
        return PredictionTrajectory.from_lens_and_cache(
            lens, ids, cache, logits, targets=next_token_targets(ids)
        )

    readers: dict[str, Callable[[], Any]] = {
        "TransformerLens (targets)": tool_targets,
        "TransformerLens (+ top-5)": tool_targets_and_top5,
        "hooklens trajectory": ours,
    }
    times: dict[str, list[float]] = {name: [] for name in readers}
    results: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, read in readers.items():
            began = time.perf_counter()
            with torch.no_grad():
                results[name] = read()
            times[name].append(time.perf_counter() - began)

    theirs, traj = results["TransformerLens (targets)"], results["hooklens trajectory"]
    cross_entropy = -theirs.values[..., 0].double().numpy().swapaxes(0, 1)
    ce_gap = np.abs(cross_entropy - traj.cross_entropy().stats[..., scored]).max()
    entropy = theirs.readout.entropy.numpy().swapaxes(0, 1)
    entropy_gap = np.abs(entropy - traj.entropy().stats[..., scored]).max()
    print(
        f"SmolLM2-135M bridge, {ids.shape[-1]} tokens × {model.cfg.n_layers + 1} rows, "
        f"tuned lens fitted on {sum(b.numel() for b in fit)} tokens, "
        f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    for name, values in times.items():
        print(f"{name:>26}: {min(values):7.2f} s (best of {len(values)})")
    ours_best = min(times["hooklens trajectory"])
    for name in ("TransformerLens (targets)", "TransformerLens (+ top-5)"):
        print(f"hooklens / {name} time: {ours_best / min(times[name]):.2f}×")
    print(f"largest difference: cross-entropy {ce_gap:.2e} nats, entropy {entropy_gap:.2e} nats")


if __name__ == "__main__":
    main()
