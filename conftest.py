"""pytest at the repository root, for the doctest collection of the package.

Old module paths that moved (`hooklens._compat.moved` shims) are skipped: such a path
*is* the module at its new path, which is collected there, and pytest refuses a module
whose file is another.

Docstring examples run against a tiny random model that `doctest_namespace` provides
(`tests/tiny.py` builds it; the names are listed in `_doctest_objects`), each in a fresh
temporary working directory that holds `texts.jsonl` (300 short lines), offline
(`HF_HUB_OFFLINE=1`), on one torch thread, with the generators of `random`, numpy and
torch seeded. An example whose line needs the hub, the embedded SmolLM2, a GPU or
torchrun shows that line with `# doctest: +SKIP` and runs the rest on `model`. hooklens and
TransformerLens are imported inside the fixtures, not here: `--jaxtyping-packages=hooklens`
refuses to start when hooklens was imported before the conftests loaded.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parent / "hooklens"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if collection_path.suffix != ".py" or PACKAGE not in collection_path.resolve().parents:
        return None
    text = collection_path.read_text(encoding="utf-8")
    return True if "from hooklens._compat import moved\n" in text else None


DOCTEST_LAYERS = 4
DOCTEST_PROMPT = "The capital of France is"
# texts.jsonl in each example's working directory: 300 short lines of the model's words.
DOCTEST_SUBJECTS = ("cat sat", "dog ran", "king went", "queen went", "man sat", "woman ran")
DOCTEST_TEXTS = [
    f"The {DOCTEST_SUBJECTS[i % len(DOCTEST_SUBJECTS)]} in the year {1700 + i} ."
    for i in range(300)
]
# Examples of a tool that only some TransformerLens versions have: skipped without it.
DOCTEST_NEEDS = {
    "hooklens.lenses.interop.transformer_lens_translator": (
        "transformer_lens.tools.analysis",
        "logit_lens",
    ),
}


@pytest.fixture(scope="session")
def _doctest_model(tmp_path_factory) -> Any:
    """The examples' model: a 4-layer Llama-style TransformerBridge (d_model 32, raw
    weights) with a 96-word tokenizer of English words; built once, read-only."""
    import torch

    from tests import tiny

    tokenizer = tiny.word_tokenizer(tmp_path_factory.mktemp("tokenizer"), tiny.words_vocabulary())
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = tiny.make_bridge(tokenizer, "llama", n_layers=DOCTEST_LAYERS)
    model.requires_grad_(False)
    torch.manual_seed(0)
    return model


def _doctest_objects(model: Any) -> dict[str, Any]:
    """What every docstring example finds defined (fresh for each example, but `model`):

    - `model`: the tiny TransformerBridge (`_doctest_model`),
    - `tokens`: `model.to_tokens("The capital of France is")`, `[1, 6]` with BOS,
    - `logits`, `cache`: `model.run_with_cache(tokens)`,
    - `lens`: `TunedLens.from_model(model)` (fresh: reads as the logit lens),
    - `unembed`: `Unembed.from_model(model)`,
    - `torch`, `np`.
    """
    import numpy as np
    import torch

    from hooklens import TunedLens, Unembed

    tokens = model.to_tokens(DOCTEST_PROMPT)
    logits, cache = model.run_with_cache(tokens)
    return {
        "torch": torch,
        "np": np,
        "model": model,
        "tokens": tokens,
        "logits": logits,
        "cache": cache,
        "lens": TunedLens.from_model(model),
        "unembed": Unembed.from_model(model),
    }


@pytest.fixture(autouse=True)
def _doctest_tiny_model(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fill `doctest_namespace` for the package's docstring examples (nothing for tests).

    An example runs on one torch thread: at this size threads only cost (on a busy
    machine, 50 times over) and one thread sums floats in one order.
    """
    path = getattr(request.node, "path", None)
    if path is None or PACKAGE not in Path(path).resolve().parents:
        yield
        return
    import importlib

    import numpy as np
    import torch

    if request.node.name in DOCTEST_NEEDS:
        module, name = DOCTEST_NEEDS[request.node.name]
        if not hasattr(importlib.import_module(module), name):
            pytest.skip(f"the example needs {module}.{name}, which this TransformerLens lacks")
    monkeypatch, tmp_path = (
        request.getfixturevalue("monkeypatch"),
        request.getfixturevalue("tmp_path"),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "texts.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in DOCTEST_TEXTS)
    )
    # `datasets` caches what it reads from a file: here, not in the user's cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    if "datasets" in sys.modules:
        monkeypatch.setattr(
            sys.modules["datasets"].config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(_doctest_objects(request.getfixturevalue("_doctest_model")))
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
