"""What the exploration tests share: a tiny bridge whose tokenizer knows real words, the
text they read, and the trajectory a view must equal, built afresh."""

from __future__ import annotations

import pytest

from hooklens import PredictionTrajectory, next_token_targets
from hooklens.lenses import Lens
from tests import tiny

TEXT = "The capital of France is Paris . The capital of Germany is"


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """A tiny bridge whose tokenizer knows the words of `TEXT` (built once)."""
    folder = tmp_path_factory.mktemp("words")
    return tiny.make_bridge(tiny.word_tokenizer(folder, tiny.words_vocabulary()))


def fresh_trajectory(model, lens: Lens, text: str = TEXT) -> PredictionTrajectory:
    """`text`'s trajectory under `lens`, built without the exploration cache."""
    tokens = model.to_tokens(text)
    logits, cache = model.run_with_cache(tokens)
    targets = next_token_targets(tokens)
    return PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits, targets=targets)
