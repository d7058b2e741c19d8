"""The optimiser and learning-rate schedule a `TrainConfig` names.

`"adam"`, `"adamw"`, `"sgd"` (Nesterov, with tuned-lens's learning-rate convention) and
`"muon"`: `torch.optim.Muon` for the translators' matrices (a full `d × d` weight, or a
low-rank lens's `U` and `V`), with Moonshot's learning-rate adjustment (its update's
RMS matches AdamW's; its own default lr is 1e-2), and Adam for what is not a matrix
(the biases), which Muon does not take. torch's Muon orthogonalises in bf16 whatever the
device, so it is for GPUs and CPUs with native bf16 (34 s an update of SmolLM2's
translators where bf16 is emulated). `MuonWithAdam` holds the two behind one
`torch.optim.Optimizer`, so the schedule and the checkpoint see one optimiser. The
measured comparison is in the training guide (`benchmarks/optimizer_muon.py`).

Examples:
    >>> from hooklens.training.loop import TrainConfig
    >>> optimizer = build_optimizer(list(lens.parameters()), TrainConfig(optimizer="muon"))
    >>> [type(part).__name__ for part in optimizer.parts]
    ['Muon', 'Adam']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from hooklens.errors import RunStateError

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
# The learning rate of each when none is given: each one's best on SmolLM2 from the fast
# fit (benchmarks/optimizer_muon.py, training guide); sgd's is tuned-lens's scale.
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1.0, "muon": 1e-2}


@runtime_checkable
class OptimizerSettings(Protocol):
    """What of a `TrainConfig` the optimiser and its schedule read."""

    optimizer: str
    lr: float | None  # None: DEFAULT_LR[optimizer]
    momentum: float
    weight_decay: float
    steps: int
    warmup_steps: int


class MuonWithAdam(torch.optim.Optimizer):
    """`torch.optim.Muon` for the 2-D parameters, `torch.optim.Adam` for the others,
    stepped, zeroed, scheduled and checkpointed as one optimiser.

    `param_groups` is the parts' own groups, so a schedule that sets `lr` on them sets
    it on the part that uses it.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float):
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        self.parts: list[torch.optim.Optimizer] = []
        if matrices:
            self.parts.append(
                torch.optim.Muon(
                    matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"
                )
            )
        if others:
            self.parts.append(torch.optim.Adam(others, lr=lr, weight_decay=weight_decay))
        super().__init__(params, {"lr": lr})
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict.get("parts")
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise RunStateError(
                "this optimiser state is not a MuonWithAdam's with these parts: was the "
                "checkpoint written with another --optimizer?"
            )
        for part, state in zip(self.parts, parts, strict=True):
            part.load_state_dict(state)
        # Loading replaces each part's group dicts: share the new ones with the schedule.
        self.param_groups = [group for part in self.parts for group in part.param_groups]


def build_optimizer(
    params: list[torch.nn.Parameter], config: OptimizerSettings
) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` names, over `params`."""
    lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    if config.optimizer == "sgd":
        # tuned-lens's convention: torch's heavy-ball update moves 1 / (1 − momentum)
        # times the lr in steady state, so the lr given here is divided back down. Its
        # "lr 1.0" is torch lr 0.1; torch lr 1.0 is ten times that, and on SmolLM2 it
        # throws the fast fit away first (loss 2.7 → 6.9; benchmarks/optimizer_defaults.py).
        return torch.optim.SGD(
            params,
            lr=lr * (1 - config.momentum),
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "muon":
        return MuonWithAdam(params, lr=lr, weight_decay=config.weight_decay)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, weight_decay=config.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, config: OptimizerSettings):
    """Linear warm-up, then linear decay to zero at the last step."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        remaining = config.steps - config.warmup_steps
        return max(0.0, 1 - (step - config.warmup_steps) / max(remaining, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
