"""Every file format hooklens writes, damaged: each single-bit flip and each truncation
either loads exactly what was saved or is refused with `LensFileError` / `RunStateError`
naming the file. Never other numbers, never a raw torch, zip, json or safetensors error.

The flips are a seeded sample: half anywhere in the file, half in its first and last
bytes, where the headers, the pickle and the zip directory of a `.pt` file live (a flip
there changes what a reader believes about the rest). The truncations include the empty
file and the file one byte short.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from hooklens import JacobianLens, LensFileError, RunStateError, TunedLens
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, train_lens
from tests.artifacts.test_save_load import _trained, _write_tuned_lens_artifact
from tests.conftest import VOCAB

FLIPS = 64  # per file; half of them in the first and last EDGE bytes
EDGE = 512
TRUNCATIONS = 10  # per file, besides the empty file and the file one byte short
PROMPTS = [" ".join(f"w{4 + (7 * i + 3 * j) % 6}" for j in range(10)) for i in range(3)]


@dataclass
class Format:
    """Files on disk, how a user loads them, and what they held when written."""

    files: list[Path]
    load: Callable[[], Any]
    same: Callable[[Any], bool]


def _equal_tensors(a: dict[Any, torch.Tensor], b: dict[Any, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def _tuned_state(lens: TunedLens) -> tuple[Any, dict[str, torch.Tensor]]:
    return lens.config, lens.state_dict()


def _same_tuned(expected: TunedLens) -> Callable[[TunedLens], bool]:
    config, state = _tuned_state(expected)
    return lambda lens: lens.config == config and _equal_tensors(lens.state_dict(), state)


def _jacobian_state(lens: JacobianLens) -> tuple[Any, ...]:
    matrices = {layer: lens.jacobian(layer) for layer in lens.fitted_layers}
    return lens.n_layers, lens.n_prompts, lens.component, lens.metadata, matrices


def _same_jacobian(expected: JacobianLens) -> Callable[[JacobianLens], bool]:
    n_layers, n_prompts, component, metadata, matrices = _jacobian_state(expected)

    def same(lens: JacobianLens) -> bool:
        got = _jacobian_state(lens)
        return got[:4] == (n_layers, n_prompts, component, metadata) and _equal_tensors(
            got[4], matrices
        )

    return same


def tuned_directory(model, root: Path) -> Format:
    lens = _trained(model)
    lens.save(root / "lens")
    return Format(
        [root / "lens" / "config.json", root / "lens" / "params.safetensors"],
        lambda: TunedLens.load(root / "lens", model=model),
        _same_tuned(lens),
    )


def tuned_lens_params_pt(model, root: Path) -> Format:
    """tuned-lens's layout (`params.pt`, a pickled state dict) as its package writes it:
    hooklens reads it, so a damaged one must not load as other numbers either."""
    lens = _trained(model)
    _write_tuned_lens_artifact(root / "lens", lens, prefixed=False)
    expected = TunedLens.load(root / "lens", model=model)
    return Format(
        [root / "lens" / "params.pt"],
        lambda: TunedLens.load(root / "lens", model=model),
        _same_tuned(expected),
    )


def _jacobian_lens(bridge) -> JacobianLens:
    generator = torch.Generator().manual_seed(0)
    d_model, n_layers = bridge.cfg.d_model, bridge.cfg.n_layers
    matrices = {
        layer: torch.eye(d_model) + 0.05 * torch.randn(d_model, d_model, generator=generator)
        for layer in range(n_layers - 1)
    }
    return JacobianLens.from_model(bridge, matrices, n_prompts=7, metadata={"corpus": "fuzz"})


def jacobian_pt(bridge, root: Path) -> Format:
    _jacobian_lens(bridge).save(root / "jlens.pt")
    expected = JacobianLens.load(root / "jlens.pt", model=bridge)  # as stored: float16
    return Format(
        [root / "jlens.pt"],
        lambda: JacobianLens.load(root / "jlens.pt", model=bridge),
        _same_jacobian(expected),
    )


def jacobian_directory(bridge, root: Path) -> Format:
    lens = _jacobian_lens(bridge)
    lens.save(root / "jlens")
    return Format(
        [root / "jlens" / "config.json", root / "jlens" / "params.safetensors"],
        lambda: JacobianLens.load(root / "jlens", model=bridge),
        _same_jacobian(lens),
    )


def _fit(bridge, checkpoint: Path) -> JacobianLens:
    return JacobianLens.fit(
        bridge,
        PROMPTS,
        max_seq_len=10,
        skip_first_positions=2,
        source_layers=[0],
        checkpoint=checkpoint,
        checkpoint_every=2,
        progress=False,
    )


def fit_checkpoint(bridge, root: Path) -> Format:
    """A finished fit's checkpoint, resumed: the same call reads it and fits nothing more."""
    checkpoint = root / "fit.pt"
    lens = _fit(bridge, checkpoint)
    return Format([checkpoint], lambda: _fit(bridge, checkpoint), _same_jacobian(lens))


def fit_checkpoint_as_lens(bridge, root: Path) -> Format:
    """The same checkpoint read as a lens (the mean of its sums so far)."""
    checkpoint = root / "fit.pt"
    _fit(bridge, checkpoint)
    expected = JacobianLens.load(checkpoint, model=bridge)
    return Format(
        [checkpoint],
        lambda: JacobianLens.load(checkpoint, model=bridge),
        _same_jacobian(expected),
    )


def _train(model, checkpoint_dir: Path, resume: bool = False) -> tuple[TunedLens, Any]:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(4, VOCAB, (1, 8), generator=generator) for _ in range(2)]
    lens = TunedLens.from_model(model)
    config = TrainConfig(steps=2, lr=1e-2, checkpoint_every=1, matmul_dtype="float32")
    history = train_lens(
        model, lens, batches, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=False
    )
    return lens, history


def training_checkpoint(model, root: Path) -> Format:
    """A finished run's checkpoint, resumed: the run's lens and history come back."""
    lens, history = _train(model, root / "checkpoint")
    same_lens = _same_tuned(lens)
    return Format(
        [root / "checkpoint" / CHECKPOINT_FILE],
        lambda: _train(model, root / "checkpoint", resume=True),
        lambda resumed: same_lens(resumed[0]) and resumed[1] == history,
    )


FORMATS: dict[str, tuple[str, Callable[[Any, Path], Format]]] = {
    "tuned-directory": ("hooked-rms-processed", tuned_directory),
    "tuned-lens-params.pt": ("hooked-rms-processed", tuned_lens_params_pt),
    "jacobian-pt": ("bridge-llama", jacobian_pt),
    "jacobian-directory": ("bridge-llama", jacobian_directory),
    "fit-checkpoint": ("bridge-llama", fit_checkpoint),
    "fit-checkpoint-as-lens": ("bridge-llama", fit_checkpoint_as_lens),
    "training-checkpoint": ("bridge-llama", training_checkpoint),
}


def damaged_copies(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Seeded single-bit flips and truncations of `data`, each described."""
    size = len(data)
    edges = [*range(min(EDGE, size)), *range(max(size - EDGE, 0), size)]
    positions = rng.sample(range(size), min(FLIPS // 2, size))
    positions += rng.sample(edges, min(FLIPS - len(positions), len(edges)))
    copies = []
    for position in positions:
        bit = rng.randrange(8)
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        copies.append((f"bit {bit} of byte {position} flipped", bytes(flipped)))
    lengths = {0, size - 1, *rng.sample(range(1, size - 1), min(TRUNCATIONS, size - 2))}
    copies += [(f"truncated to {n} of {size} bytes", data[:n]) for n in sorted(lengths)]
    return copies


@pytest.mark.parametrize("name", list(FORMATS))
def test_damaged_files_load_as_saved_or_are_refused_by_name(name, model_zoo, tmp_path):
    kind, build = FORMATS[name]
    if kind.startswith("hooked"):
        from tests.conftest import skip_without_hooked_transformer

        skip_without_hooked_transformer()
    fmt = build(model_zoo[kind], tmp_path)
    rng = random.Random(f"{name}-23")
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    for path in fmt.files:
        original = path.read_bytes()
        for description, damaged in damaged_copies(original, rng):
            path.write_bytes(damaged)
            case = f"{path.name}: {description}"
            try:
                loaded = fmt.load()
            except (LensFileError, RunStateError) as error:
                if str(path) not in str(error):
                    wrong.append(f"{case}: refused without naming the file: {error}")
                outcomes["refused"] += 1
            except Exception as error:  # any other error is a finding
                wrong.append(f"{case}: raised {type(error).__name__}: {error}")
            else:
                if fmt.same(loaded):
                    outcomes["loaded as saved"] += 1
                else:
                    wrong.append(f"{case}: loaded other numbers")
            finally:
                path.write_bytes(original)
    assert not wrong, f"{len(wrong)} of {sum(outcomes.values()) + len(wrong)}:\n" + "\n".join(
        wrong[:30]
    )
    assert outcomes["refused"] > 0, outcomes
