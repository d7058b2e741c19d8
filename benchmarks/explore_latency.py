"""How long the explorer makes a user wait, on the embedded SmolLM2-135M.

A new prompt of about 20 tokens (one model run and one lens pass, then both figures)
against a view-only change (another statistic, window or pin: figures from the cache),
for the logit lens and for a second lens, median of `--rounds` different prompts. The
ratio is what the cache saves. Run it alone: two torch processes on two cores slow each
other several times over.

    python benchmarks/explore_latency.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hooklens import TunedLens, models
from hooklens.exploration import ExploreSession, View

PROMPTS = [
    "The Eiffel Tower is in the city of Paris, which is also the capital of the country of",
    "When the war ended in the year 1918, the soldiers of the army returned to their homes in",
    "She opened the old wooden box and found a letter from her grandmother, written in the",
    "The river flows from the mountains in the north to the sea in the south, passing through",
    "In the morning the market square fills with traders selling bread, cheese, fruit and",
]


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = models.load("smollm2-135m")
    session = ExploreSession(model, {"tuned": TunedLens.from_model(model)})
    session.figure("warm up", "logit", View())  # first-call costs (allocator, kernels)
    steps: dict[str, list[float]] = {"new prompt": [], "second lens": [], "view change": []}
    for text in PROMPTS[: args.rounds]:
        n = session.tokens(text).shape[-1]

        def draw(lens: str, view: View, text: str = text) -> None:
            session.figure(text, lens, view)
            session.token_view(text, lens, view)

        steps["new prompt"].append(_seconds(lambda: draw("logit", View())))
        steps["second lens"].append(_seconds(lambda: draw("tuned", View())))
        steps["view change"].append(
            _seconds(lambda: draw("logit", View("forward_kl", window=(2, 12), position=5)))
        )
    print(f"SmolLM2-135M, {n} tokens, {torch.get_num_threads()} threads, median of {args.rounds}")
    first = statistics.median(steps["new prompt"])
    for step, times in steps.items():
        median = statistics.median(times)
        print(f"{step:<12} {median:6.2f} s   {first / median:6.1f}x faster than a new prompt")


if __name__ == "__main__":
    main()
