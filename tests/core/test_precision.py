"""`"auto"` picks the matmul dtype by what the device measurably does, and an explicit
bf16 on a CPU that emulates it warns once."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from hooklens import TunedLens, Unembed
from hooklens.core import precision
from hooklens.core.chunked_kl import (
    ChunkedKL,
    kl_to_target,
    target_distribution,
    target_projection,
    weight_chunks,
)
from hooklens.training.loop import LensKL, TrainConfig
from tests.conftest import D_MODEL


@pytest.fixture
def probe(monkeypatch):
    """Stub the CPU probe: `probe(ratio)` makes bf16 `ratio` times float32's speed."""
    precision._warn_slow.cache_clear()

    def set_ratio(ratio: float) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: ratio)

    yield set_ratio
    precision._warn_slow.cache_clear()


def test_auto_is_float32_where_the_probe_finds_bf16_slower(probe):
    probe(0.01)  # an AVX2-only CPU: bf16 emulated, ~100× slower
    assert precision.matmul_dtype("auto") == torch.float32
    assert precision.matmul_dtype() == torch.float32
    probe(1.2)  # faster, but not clearly: float32 keeps its exactness
    assert precision.matmul_dtype("auto") == torch.float32


def test_auto_is_bf16_where_the_probe_finds_it_clearly_faster(probe):
    probe(4.0)  # AMX
    assert precision.matmul_dtype("auto") == torch.bfloat16
    assert "bfloat16" in precision.describe()


def test_explicit_slow_bf16_warns_once_with_the_measured_ratio(probe):
    probe(0.01)
    with pytest.warns(RuntimeWarning, match=r"100\.0× slower than float32"):
        assert precision.matmul_dtype("bfloat16") == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.matmul_dtype(torch.bfloat16) == torch.bfloat16  # no second warning


def test_explicit_fast_bf16_and_float32_do_not_warn(probe):
    probe(4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.matmul_dtype("bfloat16") == torch.bfloat16
        assert precision.matmul_dtype("float32") == torch.float32


def test_cuda_follows_its_bf16_support(monkeypatch, probe):
    probe(0.01)  # the CPU's probe says nothing about a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.matmul_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (6, 1))  # P100
    assert precision.matmul_dtype("auto", torch.device("cuda")) == torch.float32
    assert "no float16 tensor cores" in precision.describe("auto", "cuda")


def test_cuda_without_bf16_takes_float16_where_it_has_tensor_cores(monkeypatch, probe):
    probe(4.0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))  # T4
    assert precision.matmul_dtype("auto", "cuda:0") == torch.float16
    assert "CUDA 7.5, no bf16, float16 tensor cores" in precision.describe("auto", "cuda:0")
    assert "→ float16" in precision.describe("auto", "cuda:0")


def test_unknown_dtypes_are_refused():
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        precision.matmul_dtype("float8")
    with pytest.raises(ValueError, match="matmul_dtype"):
        TrainConfig(matmul_dtype="fp8")


def test_the_real_probe_is_quick_cached_and_positive():
    precision.cpu_bf16_speedup.cache_clear()
    began = time.perf_counter()
    ratio = precision.cpu_bf16_speedup()
    assert time.perf_counter() - began < 2.0  # sub-second on every CPU seen, emulated too
    assert 0 < ratio < float("inf")
    assert precision.cpu_bf16_speedup() == ratio
    assert precision.cpu_bf16_speedup.cache_info().hits >= 1


@pytest.mark.parametrize(("ratio", "expected"), [(0.01, torch.float32), (4.0, torch.bfloat16)])
def test_training_default_follows_the_probe(hooked, probe, ratio, expected):
    probe(ratio)
    assert TrainConfig().matmul_dtype == "auto"
    objective = LensKL(TunedLens.from_model(hooked), TrainConfig())
    assert {w.dtype for w in objective.w_chunks} == {expected}


def test_bf16_loss_is_close_to_the_float64_loss_on_small_shapes(model_zoo):
    """The bf16 code path (tested small, so that no test depends on bf16 being fast)."""
    unembed = Unembed.from_model(model_zoo["bridge-llama"])
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, D_MODEL, generator=generator, requires_grad=True)
    target = torch.log_softmax(3 * torch.randn(6, unembed.d_vocab, generator=generator), -1)
    neg_entropy = (target.exp() * target).sum(-1)
    loss = kl_to_target(unembed, hidden, target.exp(), neg_entropy, chunk=40, dtype=torch.bfloat16)
    (grad,) = torch.autograd.grad(loss, hidden)

    exact = hidden.detach().double().requires_grad_(True)
    normed = unembed.final_norm(exact.float()).double()
    log_p = torch.log_softmax(normed @ unembed.W_U.double(), -1)
    expected = (target.double().exp() * (target.double() - log_p)).sum(-1).mean()
    (expected_grad,) = torch.autograd.grad(expected, exact)
    # bf16 keeps 8 bits of mantissa: logits of size ~3 are off by ~0.01.
    torch.testing.assert_close(loss.double(), expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(grad.double(), expected_grad, atol=0.02, rtol=0.1)


def _chunked_kl_errors(W: torch.Tensor, normed: torch.Tensor, q_logits: torch.Tensor, dtype):
    """(relative error of the loss, of its gradient) of `ChunkedKL` in `dtype` against
    float64 autograd through the full softmax."""
    q = torch.softmax(q_logits.double(), -1)
    exact = normed.double().requires_grad_(True)
    log_p = torch.log_softmax(exact @ W.double(), -1)
    expected = (q * (q.log() - log_p)).sum(-1).mean()
    (expected_grad,) = torch.autograd.grad(expected, exact)

    chunks = weight_chunks(W, 4096, dtype)
    target, neg_entropy = target_distribution(q_logits.float().clone())
    projection = target_projection(Unembed(torch.nn.Identity(), W), target, w_chunks=chunks)
    hidden = normed.clone().requires_grad_(True)
    loss = ChunkedKL.apply(hidden, target, neg_entropy, projection, chunks, None, None)
    (grad,) = torch.autograd.grad(loss, hidden)
    assert torch.isfinite(grad).all()
    loss_error = abs(loss.double() - expected).item() / expected.item()
    grad_error = ((grad.double() - expected_grad).norm() / expected_grad.norm()).item()
    return loss_error, grad_error


def test_float16_chunked_kl_is_closer_to_float64_than_bf16():
    """`auto`'s float16 on GPUs without bf16 must meet the tolerance bf16 meets: checked
    here on the CPU's float16 matmuls (float32 accumulation, float16 outputs)."""
    generator = torch.Generator().manual_seed(0)
    W = 0.5 * torch.randn(48, 16384, generator=generator)
    normed = 1.5 * torch.randn(32, 48, generator=generator)
    q_logits = (normed + 0.5 * torch.randn(32, 48, generator=generator)) @ W
    bf16 = _chunked_kl_errors(W, normed, q_logits, torch.bfloat16)
    fp16 = _chunked_kl_errors(W, normed, q_logits, torch.float16)
    assert fp16[0] <= bf16[0] and fp16[1] <= bf16[1], (fp16, bf16)
    assert fp16[1] < 5e-3  # 11 bits of mantissa; bf16's 8 give ~2.5e-2 here


def test_float16_gradient_survives_a_flat_readout_and_a_large_dimension():
    """A folded norm gain makes one W_U dimension large (40 here) for every token; a
    flat readout then sums 4,096 weights near one times 40 per chunk, 163,840 > float16's
    65,504. `WeightChunks.operand_scale` scales the weights down by a power of two."""
    generator = torch.Generator().manual_seed(1)
    W = 0.05 * torch.randn(16, 16384, generator=generator)
    W[0] = 40.0
    normed = 0.01 * torch.randn(8, 16, generator=generator)
    normed[:, 0] = 0.0  # no logit moves along the large dimension: a flat readout
    q_logits = 3 * torch.randn(8, 16384, generator=generator)
    assert weight_chunks(W, 4096, torch.float16).operand_scale < 1
    fp16 = _chunked_kl_errors(W, normed, q_logits, torch.float16)  # finite: checked there
    bf16 = _chunked_kl_errors(W, normed, q_logits, torch.bfloat16)
    assert fp16[0] <= bf16[0] and fp16[1] <= bf16[1], (fp16, bf16)
