"""The closed-form fits on the device equal the same fits on the CPU: the tuned lens's
fast fit (float32 moments summed in float64, a float64 solve) and the J-lens fit
(Jacobians by autograd, averaged over prompts), both float32 models.

The tolerance: fitting the float32 model and its float64 twin on the CPU differs by
~3e-6 of the largest entry (fast fit) and ~2e-7 (J-lens), so 1e-4 of it leaves room
for another summation order and nothing for a wrong device or dtype."""

from __future__ import annotations

import pytest
import torch

from hooklens import JacobianLens
from hooklens.training.fast_fit import fit_tuned_lens
from tests.devices.test_device_discipline import _tokens

pytestmark = pytest.mark.cuda

PROMPTS = ["w5 w6 w7 w8 w9 w10 w11", "w10 w11 w12 w13 w14 w15", "w20 w30 w40 w50 w60 w70 w80"]


def _equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4 * scale, rtol=1e-4)


def test_the_fast_fit_on_the_device_equals_the_cpus(on_device, on_cpu, device):
    batches = [_tokens(4, 16, seed) for seed in range(8)]  # 512 tokens: a well-posed solve
    on_gpu = fit_tuned_lens(on_device, batches, progress=False)
    reference = fit_tuned_lens(on_cpu, batches, progress=False)
    assert next(on_gpu.parameters()).device.type == device.type
    for name, expected in reference.state_dict().items():
        _equal(on_gpu.state_dict()[name], expected)


def test_the_jacobian_lens_fit_on_the_device_equals_the_cpus(on_device, on_cpu, tmp_path):
    settings = dict(max_seq_len=8, skip_first_positions=1, dim_batch=8, progress=False)
    on_gpu = JacobianLens.fit(on_device, PROMPTS, checkpoint=tmp_path / "fit.pt", **settings)
    reference = JacobianLens.fit(on_cpu, PROMPTS, **settings)
    assert on_gpu.n_prompts == reference.n_prompts == len(PROMPTS)
    assert on_gpu.fitted_layers == reference.fitted_layers and reference.fitted_layers
    for layer in reference.fitted_layers:
        _equal(on_gpu.jacobian(layer), reference.jacobian(layer))
    # its checkpoint loads as the same lens
    loaded = JacobianLens.load(tmp_path / "fit.pt", model=on_device)
    for layer in reference.fitted_layers:
        _equal(loaded.jacobian(layer), reference.jacobian(layer))
