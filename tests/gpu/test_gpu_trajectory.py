"""Trajectories on the device (float32, and bf16 or float16) equal the textbook
statistics of the same model and lenses computed in float64 on the CPU, within what the
dtype allows: entropy, forward KL, cross-entropy and rank, for the logit lens, a tuned
lens and a J-lens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooklens import PredictionTrajectory, next_token_targets, stats
from tests.devices.test_device_discipline import _lenses, _tokens
from tests.tiny import make_bridge
from tests.trajectory.test_trajectory_parity import _log_probs64

pytestmark = pytest.mark.cuda

LENSES = ["logit", "tuned", "jacobian"]  # the order of `_lenses`
# (atol, rtol) against float64. float32 rounds each of a few hundred sums at ~1e-7
# (seen here: 2e-5 nats at most). A half-precision model rounds its weights and every
# activation, at 2⁻⁹ (bf16) or 2⁻¹² (float16) of logits up to ~30: seen on a CPU, up to
# 0.33 nats (bf16) and 0.03 (float16).
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (0.6, 0.05), torch.float16: (0.08, 0.01)}
# Other tokens whose float64 log-probability lies this close to the target's may swap
# ranks with it (seen: bf16 moves a rank by 2 at most).
RANK_TIES = {torch.float32: 1e-4, torch.bfloat16: 0.6, torch.float16: 0.08}


def _sharp_bridge(tokenizer, device="cpu", dtype=torch.float32):
    """The tiny Llama bridge with its unembedding ×64 (exact in every dtype): its
    predictions have entropies of 0 to 2 nats, not the ln 96 of a fresh init, so that
    ranks and KL have something to get wrong."""
    model = make_bridge(tokenizer, "llama", device=device, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("lm_head."):
                param.mul_(64)
    return model


@pytest.fixture(scope="module")
def reference(word_tokenizer):
    """`{lens: float64 log-probs [batch, layer + 1, pos, vocab]}`, on the CPU."""
    model = _sharp_bridge(word_tokenizer, dtype=torch.float64)
    tokens = _tokens(2, 7)
    logits, cache = model.run_with_cache(tokens)
    return {
        name: _log_probs64(lens, cache, logits)
        for name, lens in zip(LENSES, _lenses(model), strict=True)
    }


@pytest.fixture(scope="module", params=["float32", "half"])
def dtype(request, half_dtype):
    return torch.float32 if request.param == "float32" else half_dtype


@pytest.fixture(scope="module")
def trajectories(word_tokenizer, device, dtype):
    model = _sharp_bridge(word_tokenizer, device, dtype)
    tokens = _tokens(2, 7).to(device)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    assert logits.device.type == device.type and logits.dtype == dtype
    return {
        name: PredictionTrajectory.from_lens_and_cache(
            lens, tokens, cache, logits, targets=next_token_targets(tokens)
        )
        for name, lens in zip(LENSES, _lenses(model), strict=True)
    }


def _close(got: np.ndarray, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCE[dtype]
    expected_array = expected.numpy()
    assert got.shape == expected_array.shape
    np.testing.assert_allclose(got, expected_array, atol=atol, rtol=rtol, equal_nan=True)


@pytest.mark.parametrize("lens", LENSES)
def test_statistics_on_the_device_equal_float64_on_the_cpu(trajectories, reference, lens, dtype):
    trajectory, log_probs = trajectories[lens], reference[lens]
    targets = next_token_targets(_tokens(2, 7))[:, None, :].expand(log_probs.shape[:-1])
    no_target = targets < 0
    output = log_probs[:, -1:].expand_as(log_probs)
    _close(trajectory.entropy().stats, stats.entropy(log_probs), dtype)
    _close(trajectory.forward_kl().stats, stats.kl_divergence(output, log_probs), dtype)
    cross_entropy = stats.cross_entropy(log_probs, targets)
    _close(trajectory.cross_entropy().stats, cross_entropy, dtype)
    # rank: equal, but where other tokens lie within rounding of the target
    got = trajectory.rank().stats
    expected = stats.rank(log_probs, targets).double().masked_fill(no_target, float("nan"))
    target_log_prob = (-cross_entropy)[..., None]
    near = ((log_probs - target_log_prob).abs() < RANK_TIES[dtype]).sum(-1) - 1
    assert np.array_equal(np.isnan(got), expected.isnan().numpy())
    slack = near.masked_fill(no_target, 0).numpy()
    assert (np.nan_to_num(np.abs(got - expected.numpy())) <= slack).all()
    # the half-precision model is not the float64 one: the check has something to see
    if dtype != torch.float32:
        assert not np.allclose(trajectory.entropy().stats, stats.entropy(log_probs), atol=1e-6)
