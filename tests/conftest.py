"""Tiny random models built from configs, in every flavour a lens must read.

The builders live in `tests/tiny.py` (the root conftest builds the docstring examples'
model with them too); their names stay importable from here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests import tiny
from tests.notebook_report import NOTEBOOK_REPORT
from tests.tiny import (  # noqa: F401 (the tests import these from here)
    D_MODEL,
    N_LAYERS,
    NO_HOOKED_TRANSFORMER,
    VOCAB,
    make_bridge,
    make_hooked,
    skip_without_hooked_transformer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-notebooks",
        action="store_true",
        help="do not execute demos/*.ipynb (for quick local runs; refused under CI=true)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--skip-notebooks") and os.environ.get("CI"):
        raise pytest.UsageError("--skip-notebooks is for local runs: CI executes every notebook")
    config.stash[NOTEBOOK_REPORT] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--skip-notebooks"):
        skip = pytest.mark.skip(reason="--skip-notebooks")
        for item in items:
            if "notebook" in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """One line per executed notebook, so the CI log shows that each one ran."""
    if lines := config.stash.get(NOTEBOOK_REPORT, []):
        terminalreporter.section("notebooks executed")
        for line in lines:
            terminalreporter.write_line(line)


@contextlib.contextmanager
def outside_annotations() -> Iterator[None]:
    """Within this block jaxtyping's runtime check of hooklens is off.

    `make test` runs the suite under that check (`--jaxtyping-packages`): every shape
    and type annotation is checked on every call. A test that passes a wrong type on
    purpose, to see the library's own error (what was expected, what was found, what
    to do), wraps that call in this block, or is marked `outside_annotations` as a
    whole: there the checker would answer first.
    """
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture(autouse=True)
def _runtime_type_checks(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `outside_annotations` runs with the runtime check off."""
    if request.node.get_closest_marker("outside_annotations") is None:
        yield
    else:
        with outside_annotations():
            yield


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory):
    """A word-level tokenizer of `VOCAB` words "w0" ... , saved and reloaded like a hub one."""
    return tiny.word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def randomised(lens, seed: int = 0):
    """`lens` with every parameter drawn from N(0, 0.1²), so it differs from the logit
    lens at every layer; returned for chaining."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lens.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return lens


MODEL_KINDS = [
    "hooked-rms",
    "hooked-rms-processed",
    "hooked-ln",
    "hooked-ln-processed",
    "hooked-softcap",
    "bridge-llama",
    "bridge-llama-compat",
    "bridge-gpt2",
    "bridge-gpt2-compat",
    "bridge-gemma2",
]


def build_model(kind: str, tokenizer):
    if kind.startswith("hooked"):
        processing = kind.endswith("processed")
        if kind == "hooked-softcap":
            return make_hooked("RMS", output_logits_soft_cap=2.0)
        return make_hooked("LN" if "-ln" in kind else "RMS", processing=processing)
    architecture = kind.split("-")[1]
    return make_bridge(tokenizer, architecture, processing=kind.endswith("compat"))


class _ModelZoo(dict):
    """Tiny models by kind, each built on first use (a HookedTransformer kind skips the
    test that asks for it on TransformerLens 4.x)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, kind: str) -> torch.nn.Module:
        if kind not in MODEL_KINDS:
            raise KeyError(kind)
        self[kind] = build_model(kind, self.tokenizer)
        return self[kind]


def flip_in_zip_member(path, member_suffix: str, offset: int = 3, mask: int = 0x10) -> None:
    """XOR `mask` into byte `offset` of the data of the zip member (of a `torch.save`
    file) whose name ends with `member_suffix`: a tensor's bytes, or the pickle."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(Path(path).read_bytes())
    header = info.header_offset  # local header: 30 bytes, then the name and extra field
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    data[header + 30 + name_length + extra_length + offset] ^= mask
    Path(path).write_bytes(bytes(data))


@pytest.fixture
def tiny_models(monkeypatch, word_tokenizer) -> list[str]:
    """`hooklens.models.load` builds a tiny random bridge (what the CLI loads in tests);
    returns the names it was asked for."""
    from hooklens import models

    loaded: list[str] = []

    def load(name, **_):
        loaded.append(name)
        return make_bridge(word_tokenizer)

    monkeypatch.setattr(models, "load", load)
    return loaded


@pytest.fixture(scope="session")
def model_zoo(word_tokenizer):
    """Every tiny model kind, built once per session; tests must not modify them."""
    return _ModelZoo(word_tokenizer)


@pytest.fixture(params=MODEL_KINDS)
def any_model(request, model_zoo):
    return model_zoo[request.param]


@pytest.fixture(scope="session")
def hooked(model_zoo):
    return model_zoo["hooked-rms-processed"]


@pytest.fixture
def tokens():
    return torch.randint(4, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
