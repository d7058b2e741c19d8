"""The GPU check (`make gpu-check`, `scripts/gpu-check.sh`): every test in this folder is
marked `cuda` and runs on the `device` fixture's device: the GPU when torch sees one,
else it skips. `HOOKLENS_TEST_DEVICE` names a device to run them on instead
(`HOOKLENS_TEST_DEVICE=cpu` checks their logic on a machine without a GPU).

The models are `tests/tiny.py`'s tiny Llama bridge (it runs under TransformerLens 3.9
and 4.x alike), built on the device; references are the same weights on the CPU, in
float64 where a statistic is compared and float32 where a fit is.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny import make_bridge

DEVICE_VARIABLE = "HOOKLENS_TEST_DEVICE"


def chosen_device() -> torch.device | None:
    """`HOOKLENS_TEST_DEVICE` if set, else CUDA if torch sees a GPU, else None."""
    requested = os.environ.get(DEVICE_VARIABLE, "").strip()
    if requested:
        return torch.device(requested)
    return torch.device("cuda") if torch.cuda.is_available() else None


@pytest.fixture(scope="session")
def device() -> torch.device:
    found = chosen_device()
    if found is None:
        pytest.skip(f"no CUDA device ({DEVICE_VARIABLE}=cpu runs these tests on the CPU)")
    if found.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"{DEVICE_VARIABLE}={found} but torch sees no CUDA device")
    return found


@pytest.fixture(scope="session")
def half_dtype(device) -> torch.dtype:
    """bf16, or float16 on a GPU without bf16 tensor cores (before Ampere: T4, V100)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return torch.float16
    return torch.bfloat16


@pytest.fixture(scope="module")
def on_device(word_tokenizer, device):
    """The tiny Llama bridge on the device, float32 (its own copy: tests may train on it)."""
    return make_bridge(word_tokenizer, "llama", device=device)


@pytest.fixture(scope="module")
def on_cpu(word_tokenizer):
    """The same bridge on the CPU, float32: what the device's fits must equal."""
    return make_bridge(word_tokenizer, "llama")
