"""Prompt sets for causal experiments, tokenised and paired with clean and corrupted runs.

`greater_than` is the task of Hanna et al. (2023), "How does GPT-2 compute
greater-than?": after "The war lasted from the year 17YY to the year 17" a model should
put its probability on years after 17YY. For tokenizers that write each digit as a token
(SmolLM2, Llama) the next token is the tens digit, so the targets are the digits above
YY's tens digit and the anti-targets those below it (the equal digit is ambiguous and in
neither set). The corrupted prompt writes the start year as 1701, which says nothing
about the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.errors import InputError

GREATER_THAN_TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"
NOUNS = ("war", "expedition", "drought", "reign", "siege", "famine", "voyage", "dynasty")


@dataclass
class Task:
    """Clean and corrupted prompts of one length, with answer sets per prompt.

    `targets` / `anti_targets` are `[prompt, k]` token ids, −1 as padding; `chance` is
    the accuracy of a guesser that picks uniformly among a prompt's targets and
    anti-targets.
    """

    name: str
    prompts: list[str]
    clean: Int[Tensor, "prompt pos"]
    corrupted: Int[Tensor, "prompt pos"]
    targets: Int[Tensor, "prompt k"]
    anti_targets: Int[Tensor, "prompt k"]
    chance: float

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, prompts={len(self.prompts)}, positions={self.clean.shape[1]}, "
            f"chance accuracy {self.chance:.2f})"
        )

    def accuracy(self, logits: Float[Tensor, "prompt vocab"]) -> float:
        """Fraction of prompts whose most likely answer among targets ∪ anti-targets is
        a target, from `[prompt, vocab]` logits at the answer position."""
        logits = torch.as_tensor(logits).float()

        def best(ids: Tensor) -> Tensor:
            picked = logits.gather(-1, ids.clamp(min=0))
            return picked.masked_fill(ids < 0, -torch.inf).amax(-1)

        return float((best(self.targets) > best(self.anti_targets)).float().mean())


def _single_token_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"{text!r} is {len(ids)} tokens for this tokenizer; the task needs 1")
    return int(ids[0])


def greater_than(tokenizer: Any, n_prompts: int = 64, seed: int = 0) -> Task:
    """The greater-than task for a tokenizer that writes digits one by one.

    Start years 17YY have a tens digit t from 2 to 7 in equal numbers; a uniform guess
    among the 9 unambiguous digits is right (9 − t) / 9 of the time, 50% on
    average (`chance`).

    Examples:
        >>> task = greater_than(model.tokenizer, 32)
        >>> task
        Task('greater-than', prompts=32, positions=15, chance accuracy 0.51)
        >>> task.prompts[0], task.corrupted.shape
        ('The famine lasted from the year 1728 to the year 17', torch.Size([32, 15]))
        >>> logits = model(task.clean)[:, -1]
        >>> task.accuracy(logits), task.chance  # a trained model beats chance; this random one not
        (0.25, 0.51)
    """
    digits = [_single_token_id(tokenizer, str(d)) for d in range(10)]
    rng = np.random.default_rng(seed)
    prompts, corrupted, targets, anti, wins = [], [], [], [], []
    for index in range(n_prompts):
        tens = 2 + index % 6
        yy = f"{tens}{rng.integers(0, 10)}"
        noun = NOUNS[rng.integers(len(NOUNS))]
        prompts.append(GREATER_THAN_TEMPLATE.format(noun=noun, yy=yy))
        corrupted.append(GREATER_THAN_TEMPLATE.format(noun=noun, yy="01"))
        targets.append([digits[d] for d in range(tens + 1, 10)])
        anti.append([digits[d] for d in range(tens)])
        wins.append(len(targets[-1]) / (len(targets[-1]) + len(anti[-1])))
    clean_ids = _tokenize_same_length(tokenizer, prompts)
    corrupted_ids = _tokenize_same_length(tokenizer, corrupted)
    if clean_ids.shape != corrupted_ids.shape:
        raise InputError("clean and corrupted prompts tokenise to different lengths")
    return Task(
        name="greater-than",
        prompts=prompts,
        clean=clean_ids,
        corrupted=corrupted_ids,
        targets=_padded(targets),
        anti_targets=_padded(anti),
        chance=float(np.mean(wins)),
    )


def _tokenize_same_length(tokenizer: Any, texts: list[str]) -> Tensor:
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    lengths = {len(i) for i in ids}
    if len(lengths) != 1:
        raise InputError(
            f"the prompts tokenise to {sorted(lengths)} tokens; this task needs one length "
            "(a tokenizer that writes each digit as a token)"
        )
    return torch.tensor(ids)


def _padded(sets: list[list[int]]) -> Tensor:
    width = max(len(s) for s in sets)
    return torch.tensor([s + [-1] * (width - len(s)) for s in sets])
