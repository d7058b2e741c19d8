"""Property: for random tiny models and random inputs, good or bad, every call either
returns what a float64 reference computes or raises a `HooklensError`.

Never a raw torch / TransformerLens exception, and never a silently different number.
The test's own `_is_valid` says which inputs must work; it is written from the
documented contract, not from the implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import Tensor

from hooklens import HooklensError, LogitLens, TunedLens, get_residual
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from tests.conftest import VOCAB, make_bridge

KINDS = ["hooked-rms-processed", "hooked-softcap", "bridge-llama"]
ATOL = 1e-4


@dataclass
class Case:
    """One drawn call and what the contract says about it."""

    ids: Any
    targets: Any
    mask: Any
    layer: Any
    topk: Any
    units: Any
    positions: Any
    cache_from: str  # "own", "other-weights", "deeper"
    logits_from: str  # "own", "other-run"
    entry: str  # "cache", "model", "log_probs", "residual"


def _other_models(kind: str, tokenizer) -> dict[str, torch.nn.Module]:
    """Models a user might confuse with `kind`'s: same sizes other weights, one more block."""
    if kind.startswith("hooked"):
        from tests.conftest import make_hooked

        settings_ = {"output_logits_soft_cap": 2.0} if kind == "hooked-softcap" else {}
        processing = kind.endswith("processed")
        return {
            "other-weights": make_hooked("RMS", processing=processing, seed=9, **settings_),
            "deeper": make_hooked("RMS", processing=processing, n_layers=4, **settings_),
        }
    return {"other-weights": make_bridge(tokenizer, "llama", seed=9)}


_OTHERS: dict[str, dict[str, torch.nn.Module]] = {}


ID_FAULTS = ["negative", "too-big", "float", "bool", "ragged", "text", "empty", "too-long"]
TARGET_FAULTS = ["scalar", "below", "above", "bool-targets", "shape"]
OTHER_FAULTS = ["other-weights", "deeper", "other-run", "topk", "layer"]


@st.composite
def cases(draw, n_layers: int, n_ctx: int, has_deeper: bool) -> Case:
    """One call with at most one fault (half of them with none), so that a wrong answer
    points at the input that caused it."""
    faults = [*ID_FAULTS, *TARGET_FAULTS, *OTHER_FAULTS]
    if not has_deeper:
        faults.remove("deeper")
    fault = draw(st.sampled_from(["none"] * len(faults) + faults))
    batch = draw(st.integers(1, 2))
    pos = draw(st.integers(1, 6))
    row = st.lists(st.integers(4, VOCAB - 1), min_size=pos, max_size=pos)
    ids: Any = torch.tensor(draw(st.lists(row, min_size=batch, max_size=batch)))
    mask = None
    if fault == "none" and draw(st.booleans()):
        ids = ids[0]  # one sequence without a batch axis
    elif fault == "negative":
        ids[-1, -1] = -1
    elif fault == "too-big":
        ids[0, 0] = VOCAB + draw(st.integers(0, 5))
    elif fault == "float":
        ids = ids.float()
    elif fault == "bool":
        ids = ids > 50
    elif fault == "ragged":
        first = ids[0].tolist()
        ids = [first, [*first, 7]]
    elif fault == "text":
        ids = "w5 w6 w7"
    elif fault == "empty":
        ids = torch.zeros(batch, 0, dtype=torch.long)
    elif fault == "too-long":
        ids = torch.full((1, n_ctx + 1), 5)
    elif batch == 2 and pos >= 2 and draw(st.booleans()):
        mask = torch.ones_like(ids)
        cut = draw(st.integers(1, pos - 1))
        mask[1, cut:] = 0
        ids[1, cut:] = 3  # the tokenizer's pad token
    targets: Any = None
    if isinstance(ids, torch.Tensor) and fault not in ID_FAULTS:
        shape = ids.shape
        if fault == "scalar":
            targets = -5
        elif fault == "below":
            targets = torch.full(shape, -2)
        elif fault == "above":
            targets = torch.full(shape, VOCAB)
        elif fault == "bool-targets":
            targets = torch.ones(shape, dtype=torch.bool)
        elif fault == "shape":
            targets = torch.zeros((*shape[:-1], shape[-1] + 1), dtype=torch.long)
        else:
            kind = draw(st.sampled_from(["none", "next", "random"]))
            if kind == "next":
                targets = next_token_targets(ids, mask)
            elif kind == "random" and mask is None:
                seed = draw(st.integers(0, 99))
                generator = torch.Generator().manual_seed(seed)
                targets = torch.randint(-1, VOCAB, shape, generator=generator)
    if fault == "layer":
        layer = draw(st.sampled_from([True, 1.0, "1", None, n_layers + 1, -(n_layers + 2)]))
    else:
        layer = draw(
            st.one_of(
                st.integers(-(n_layers + 1), n_layers),
                st.integers(0, n_layers).map(np.int64),
                st.integers(0, n_layers).map(torch.tensor),
            )
        )
    topk = draw(st.integers(1, VOCAB))
    if fault == "topk":
        topk = draw(st.sampled_from([0, -1, VOCAB + 1, 2.5]))
    return Case(
        ids=ids,
        targets=targets,
        mask=mask,
        layer=layer,
        topk=topk,
        units=draw(st.sampled_from(["nats", "bits", "nats", "bits", "probs", "furlongs"])),
        positions=slice(draw(st.integers(0, 3)), None, draw(st.sampled_from([None, 1, 2, 0, -1]))),
        cache_from=fault if fault in ("other-weights", "deeper") else "own",
        logits_from="other-run" if fault == "other-run" else "own",
        entry=draw(st.sampled_from(["cache", "cache", "model", "log_probs", "residual"])),
    )


def _ids_valid(ids: Any, n_ctx: int) -> bool:
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        return False
    return ids.ndim >= 1 and 0 < ids.shape[-1] <= n_ctx and bool(((ids >= 0) & (ids < VOCAB)).all())


def _layer_valid(layer: Any, n_layers: int) -> bool:
    if isinstance(layer, (bool, float, str)) or layer is None:
        return False
    return -(n_layers + 1) <= int(layer) <= n_layers


def _targets_valid(targets: Any, ids: torch.Tensor) -> bool:
    if targets is None:
        return True
    if not isinstance(targets, torch.Tensor) or targets.dtype == torch.bool:
        return False
    return targets.shape == ids.shape and bool(((targets >= -1) & (targets < VOCAB)).all())


def _reference_log_probs(lens, cache, logits: torch.Tensor) -> torch.Tensor:
    """`[..., layer + 1, pos, vocab]` float64: the unembedding of each layer, then softmax."""
    unembed = lens.unembed
    rows = []
    with torch.no_grad():
        for layer in range(lens.n_layers):
            h = get_residual(cache, layer)
            normed = unembed.final_norm(lens.transform_hidden(h, layer)).double()
            z = normed @ unembed.W_U.double()
            if unembed.b_U is not None:
                z = z + unembed.b_U.double()
            if unembed.logit_softcap:
                z = torch.tanh(z / unembed.logit_softcap) * unembed.logit_softcap
            rows.append(z)
        rows.append(logits.double())
    return torch.log_softmax(torch.stack(rows, dim=-3), dim=-1)


def _expected_stats(lens, cache, logits, case: Case, ids: torch.Tensor) -> dict[str, np.ndarray]:
    log_probs = _reference_log_probs(lens, cache, logits)  # [..., L+1, pos, V]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    stats = {"entropy": entropy}
    if case.targets is not None:
        t = case.targets.unsqueeze(-2).expand(log_probs.shape[:-1])
        picked = log_probs.gather(-1, t.clamp_min(0)[..., None])[..., 0]
        stats["cross_entropy"] = torch.where(t >= 0, -picked, math.nan)
    scale = 1 / math.log(2) if case.units == "bits" else 1.0
    out = {}
    for name, value in stats.items():
        value = value * scale
        if case.mask is not None:
            padded = (case.mask == 0).unsqueeze(-2).expand(value.shape)
            value = value.masked_fill(padded, math.nan)
        out[name] = value.numpy()
    return out


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert (np.isnan(got) == np.isnan(expected)).all(), "NaN where the reference has none"
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(expected), atol=ATOL, rtol=ATOL)


def _run(case: Case, model, others, lens) -> None:
    """Make the call the case describes and check its result against the reference."""
    n_layers, n_ctx = lens.n_layers, model.cfg.n_ctx
    ids_ok = _ids_valid(case.ids, n_ctx)
    run_ids = case.ids if ids_ok else torch.randint(4, VOCAB, (1, 3))
    run_ids = run_ids if run_ids.ndim > 1 else run_ids[None]
    source = model if case.cache_from == "own" else others[case.cache_from]
    with torch.no_grad():
        logits, cache = source.run_with_cache(run_ids)
        if case.logits_from == "other-run":
            logits = source((run_ids + 1) % VOCAB)
    if case.ids is not None and ids_ok and case.ids.ndim == 1:
        logits, cache = logits[0], cache.remove_batch_dim()
    cache_ok = case.cache_from == "own"

    if case.entry == "residual":  # any model's cache, read with its own model
        n_rows = source.cfg.n_layers
        if not _layer_valid(case.layer, n_rows):
            with pytest.raises(HooklensError):
                get_residual(cache, case.layer)
            return
        row = int(case.layer) % (n_rows + 1)
        name = f"blocks.{row}.hook_resid_pre" if row < n_rows else None
        got = get_residual(cache, case.layer)
        expected = get_residual(cache, row)
        assert got is expected or torch.equal(got, expected)
        if name is not None and name in cache.cache_dict:
            assert torch.equal(got, cache[name])
        return

    if case.entry == "log_probs":
        valid = cache_ok and _layer_valid(case.layer, n_layers)
        if not valid:
            with pytest.raises(HooklensError):
                lens.log_probs(cache, case.layer)
            return
        got = lens.log_probs(cache, case.layer).double()
        row = int(case.layer) % (n_layers + 1)
        # The last row: the lens reads the final residual exactly as the model does.
        expected = _reference_log_probs(lens, cache, logits)[..., row, :, :]
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=ATOL, rtol=ATOL)
        return

    topk_ok = isinstance(case.topk, int) and 1 <= case.topk <= VOCAB
    units_ok = case.units in ("nats", "bits")
    step_ok = case.positions.step is None or case.positions.step >= 1
    if case.entry == "model":
        ids_in = case.ids
        valid = (
            ids_ok and topk_ok and (case.targets is None or _targets_valid(case.targets, ids_in))
        )
        call = lambda: PredictionTrajectory.from_lens_and_model(  # noqa: E731
            lens, model, ids_in, targets=case.targets, topk=case.topk, attention_mask=case.mask
        )
        if isinstance(ids_in, str):  # text is allowed here: it is tokenized, if it can be
            valid = topk_ok and case.targets is None and model.tokenizer is not None
            if valid:
                traj = call()
                assert traj.num_tokens == model.to_tokens(ids_in).shape[-1]
                return
    else:
        valid = (
            ids_ok
            and cache_ok
            and case.logits_from == "own"
            and topk_ok
            and _targets_valid(case.targets, case.ids)
        )
        call = lambda: PredictionTrajectory.from_lens_and_cache(  # noqa: E731
            lens,
            case.ids,
            cache,
            logits,
            targets=case.targets,
            topk=case.topk,
            attention_mask=case.mask,
        )
    event(f"{case.entry}: {'valid' if valid else 'refused'}")
    if not valid:
        with pytest.raises(HooklensError):
            call()
        return
    traj = call()
    if case.entry == "model":
        extra = {} if case.mask is None else {"attention_mask": case.mask}
        with torch.no_grad():
            logits, cache = model.run_with_cache(run_ids, **extra)
        if case.ids.ndim == 1:
            logits, cache = logits[0], cache.remove_batch_dim()
    expected = _expected_stats(lens, cache, logits, case, case.ids)
    if not units_ok:
        with pytest.raises(HooklensError):
            traj.entropy(units=case.units)
        return
    _close(traj.entropy(units=case.units).stats, expected["entropy"])
    if case.targets is not None:
        _close(traj.cross_entropy(units=case.units).stats, expected["cross_entropy"])
    n_pos = case.ids.shape[-1]
    if not step_ok or not range(n_pos)[case.positions]:
        with pytest.raises(HooklensError):
            traj.slice_sequence(case.positions)
        return
    piece = traj.slice_sequence(case.positions)
    _close(
        piece.entropy(units=case.units).stats,
        expected["entropy"][..., case.positions],
    )


@pytest.mark.outside_annotations
@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_every_call_returns_the_float64_answer_or_a_hooklens_error(model_zoo, kind, data):
    model = model_zoo[kind]
    if kind not in _OTHERS:
        _OTHERS[kind] = _other_models(kind, model_zoo.tokenizer)
    others = _OTHERS[kind]
    n_layers = model.cfg.n_layers
    case = data.draw(cases(n_layers, model.cfg.n_ctx, has_deeper="deeper" in others))
    lens_kind = data.draw(st.sampled_from(["logit", "tuned"]))
    lens = LogitLens.from_model(model) if lens_kind == "logit" else _tuned(model)
    _run(case, model, others, lens)  # a raw torch / TransformerLens error fails it too


_TUNED: dict[int, TunedLens] = {}


def _tuned(model) -> TunedLens:
    if id(model) not in _TUNED:
        lens = TunedLens.from_model(model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in lens.parameters():
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        _TUNED[id(model)] = lens
    return _TUNED[id(model)]


# --- PredictionTrajectory.from_log_probs ---------------------------------------------------
#
# Tensors computed elsewhere: log-probabilities, logits or (by mistake) probabilities, in
# four dtypes, with random padding (zeros, -inf or junk; masked or not), NaN, infinities,
# whole rows of -inf, wrong ranks, the layer axis first, lists, integer tensors, bad ids
# and bad masks. The contract (the docstring of `from_log_probs`), written out below as
# `_log_probs_refused`, says which must be refused; everything else must give the float64
# statistics of the tensor as given.

LP_KINDS = ["log_probs", "logits", "probs"]
LP_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LP_PADS = ["zero", "-inf", "junk"]
LP_FAULTS = [
    "nan",
    "+inf",
    "-inf row",
    "no layer axis",
    "extra axis",
    "layer axis first",
    "list",
    "integer",
    "one row",
    "empty vocab",
    "ids too long",
    "ids out of range",
    "mask shape",
    "mask values",
]


@dataclass
class LogProbCase:
    log_probs: Any  # what is passed
    ids: Any
    mask: Any
    targets: Any
    topk: int
    units: str


@st.composite
def log_prob_cases(draw) -> LogProbCase:
    """One call: a tensor of some kind and dtype, maybe padded, with at most one fault."""
    fault = draw(st.sampled_from(["none"] * len(LP_FAULTS) + LP_FAULTS))
    batch = draw(st.sampled_from([(), (1,), (2,), (2, 2)]))
    rows, pos = draw(st.integers(2, 4)), draw(st.integers(1, 5))
    vocab = draw(st.sampled_from([1, 2, 3, 7, 12]))
    kind, dtype = draw(st.sampled_from(LP_KINDS)), draw(st.sampled_from(LP_DTYPES))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    logits = scale * torch.randn(*batch, rows, pos, vocab, generator=generator, dtype=torch.float64)
    if kind == "log_probs":
        x = logits.log_softmax(-1)
    elif kind == "probs":
        x = logits.softmax(-1)
    else:
        x = logits
    ids = torch.randint(0, vocab, (*batch, pos), generator=generator)
    # Padding: whole positions (every row), filled with zeros, -inf or junk logits.
    mask = None
    if batch and pos >= 2 and draw(st.booleans()):
        padded = torch.rand(*batch, pos, generator=generator) < 0.4
        pad = draw(st.sampled_from(LP_PADS))
        fill = {"zero": 0.0, "-inf": -math.inf}.get(pad)
        where = padded[..., None, :, None].expand(x.shape)
        x = x.masked_fill(where, fill) if fill is not None else torch.where(where, 3 * x, x)
        if draw(st.booleans()):
            mask = (~padded).long()
    x = x.to(dtype)
    flat = x.view(-1)  # faults on one drawn entry or row
    if fault == "nan":
        flat[draw(st.integers(0, flat.numel() - 1))] = math.nan
    elif fault == "+inf":
        flat[draw(st.integers(0, flat.numel() - 1))] = math.inf
    elif fault == "-inf row":
        x.view(-1, vocab)[draw(st.integers(0, x.numel() // vocab - 1))] = -math.inf
    elif fault == "ids out of range":
        ids.view(-1)[-1] = vocab + draw(st.integers(0, 3))
    elif fault == "mask shape":
        mask = torch.ones(*batch, pos + 1, dtype=torch.long)
    elif fault == "mask values":
        mask = torch.full((*batch, pos), 2)
    given: Any = {
        "no layer axis": lambda: x[..., 0, :, :],
        "extra axis": lambda: x[None],
        "layer axis first": lambda: x.movedim(-3, 0),
        "list": lambda: list(x.unbind(-3)),
        "integer": lambda: x.nan_to_num(0.0).long(),
        "one row": lambda: x[..., :1, :, :],
        "empty vocab": lambda: x[..., :0],
    }.get(fault, lambda: x)()
    if fault == "ids too long":
        ids = torch.cat([ids, ids[..., :1]], -1)
    targets = None
    target_kind = draw(st.sampled_from(["none", "next", "random"]))
    if target_kind == "next":
        targets = next_token_targets(ids, None if fault.startswith("mask") else mask)
    elif target_kind == "random" and mask is None:
        targets = torch.randint(-1, vocab, ids.shape, generator=generator)
    return LogProbCase(
        log_probs=given,
        ids=ids,
        mask=mask,
        targets=targets,
        topk=draw(st.integers(1, vocab)),
        units=draw(st.sampled_from(["nats", "bits"])),
    )


def _log_probs_refused(case: LogProbCase) -> str | None:
    """Why the documented contract refuses `case` (None: it must be computed).

    Written from the docstring of `from_log_probs` and its messages: a float tensor or
    array `[..., layer + 1, pos, vocab]` matching `input_ids` `[..., pos]`, with at least
    one layer and the output row; no NaN or +inf; at each real position some finite
    entry in every row; no real row of probabilities (entries in [0, 1] summing to 1,
    up to the dtype's rounding; rows of zeros are padding); and, without an attention
    mask, no position whose rows are all zero. Ids in the vocabulary, a mask of 1s and
    0s shaped like the ids.
    """
    x, ids, mask = case.log_probs, case.ids, case.mask
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return "type"
    if x.ndim != ids.ndim + 2 or (*x.shape[:-3], x.shape[-2]) != tuple(ids.shape):
        return "shape"
    if x.shape[-3] < 2 or x.shape[-1] < 1:
        return "rows"
    vocab = x.shape[-1]
    if bool(((ids < 0) | (ids >= vocab)).any()):
        return "ids"
    if mask is not None and (
        tuple(mask.shape) != tuple(ids.shape) or not bool(((mask == 0) | (mask == 1)).all())
    ):
        return "mask"
    if case.targets is not None and bool((case.targets >= vocab).any()):
        return "targets"
    x = x.double()
    if bool(x.isnan().any()) or bool(x.isposinf().any()):
        return "non-finite"
    real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    real = real[..., None, :].expand(x.shape[:-1])  # [..., rows, pos]
    if bool((x.isneginf().all(-1) & real).any()):
        return "no finite entry"
    zero = (x == 0).all(-1)
    if vocab >= 2:
        tolerance = max(1e-3, 8 * torch.finfo(case.log_probs.dtype).eps)
        in_unit = ((x >= 0) & (x <= 1)).all(-1)
        sums_to_one = (x.sum(-1) - 1).abs() <= tolerance
        if bool((in_unit & sums_to_one & ~zero & real).any()):
            return "probabilities"
        if mask is None and bool(zero.all(-2).any()):
            return "unmasked padding"
    return None


def _log_probs_reference(case: LogProbCase) -> dict[str, np.ndarray]:
    """Entropy and cross-entropy `[..., layer + 1, pos]` of the tensor as given, in
    float64: each row log-softmaxed (-inf = probability 0), NaN at padding."""
    log_p = case.log_probs.double().log_softmax(-1)
    p = log_p.exp()
    out = {"entropy": -torch.special.xlogy(p, p).sum(-1)}
    if case.targets is not None:
        t = case.targets[..., None, :].expand(log_p.shape[:-1])
        picked = log_p.gather(-1, t.clamp_min(0)[..., None])[..., 0]
        out["cross_entropy"] = torch.where(t >= 0, -picked, math.nan)
    scale = 1 / math.log(2) if case.units == "bits" else 1.0
    padded = None
    if case.mask is not None:
        padded = (case.mask == 0)[..., None, :].expand(log_p.shape[:-1])
    return {
        name: (
            value * scale if padded is None else (value * scale).masked_fill(padded, math.nan)
        ).numpy()
        for name, value in out.items()
    }


def _close_or_huge(got: np.ndarray, expected: np.ndarray) -> None:
    """`_close`, except that a target of probability 0 (cross-entropy +inf) may read as
    the finite floor's huge value."""
    infinite = np.isposinf(expected)
    assert (got[infinite] > 1e30).all()
    _close(np.where(infinite, 0.0, got), np.where(infinite, 0.0, expected))


@pytest.mark.outside_annotations
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(case=log_prob_cases())
def test_from_log_probs_returns_the_float64_answer_or_a_hooklens_error(case):
    call = lambda: PredictionTrajectory.from_log_probs(  # noqa: E731
        case.log_probs, case.ids, case.targets, topk=case.topk, attention_mask=case.mask
    )
    why = _log_probs_refused(case)
    event(f"from_log_probs: {why or 'computed'}")
    if why is not None:
        with pytest.raises(HooklensError):
            call()
        return
    traj = call()
    expected = _log_probs_reference(case)
    _close(traj.entropy(units=case.units).stats, expected["entropy"])
    if case.targets is not None:
        _close_or_huge(traj.cross_entropy(units=case.units).stats, expected["cross_entropy"])


def test_from_log_probs_refuses_the_issues_padded_probabilities():
    """The example that once passed (issue 23, case 6), kept here as a fixed example."""
    probs = torch.randn(2, 4, 5, VOCAB, generator=torch.Generator().manual_seed(0)).softmax(-1)
    probs[0, :, 0] = 0.0
    case = LogProbCase(probs, torch.full((2, 5), 4), None, None, 5, "nats")
    assert _log_probs_refused(case) == "probabilities"
    with pytest.raises(HooklensError, match="look like probabilities"):
        PredictionTrajectory.from_log_probs(probs, case.ids)


# --- J-lens loaders ------------------------------------------------------------------------

JLENS_FAULTS = [
    "layer-out-of-range", "layer-string", "wrong-shape", "integer-matrix", "nan", "no-matrices",
    "n-prompts-string", "n-prompts-negative", "metadata-string", "d-model-wrong",
    "other-model-name", "target-layer-wrong", "n-done-zero", "not-a-dict",
]  # fmt: skip


@st.composite
def jlens_payloads(
    draw, n_layers: int, d_model: int, name: str
) -> tuple[Any, str, dict[int, Tensor]]:
    """A reference `.pt` payload (artifact or fit checkpoint) with at most one fault, and
    the matrices a correct load gives: the artifact's J, or the checkpoint's sums / n_done."""
    fault = draw(st.sampled_from(["none"] * len(JLENS_FAULTS) + JLENS_FAULTS))
    checkpoint = draw(st.booleans())
    layers = draw(st.lists(st.integers(0, n_layers - 2), min_size=1, unique=True))
    dtype = draw(st.sampled_from([torch.float16, torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    matrices: dict[Any, Tensor] = {
        layer: torch.randn(d_model, d_model, generator=generator).to(dtype) for layer in layers
    }
    n = draw(st.integers(1, 50))
    divide = n if checkpoint else 1
    expected = {layer: m.double() / divide for layer, m in matrices.items()}
    first = layers[0]
    if fault == "layer-out-of-range":
        matrices[n_layers - 1 + draw(st.integers(0, 3))] = matrices.pop(first)
    elif fault == "layer-string":
        matrices["x"] = matrices.pop(first)
    elif fault == "wrong-shape":
        matrices[first] = matrices[first][:, : d_model - 1]
    elif fault == "integer-matrix":
        matrices[first] = matrices[first].round().to(torch.int32)
    elif fault == "nan":
        matrices[first][0, 0] = float("nan")
    elif fault == "no-matrices":
        matrices = {}
    payload: dict[str, Any] = {"metadata": {"model_name": name}}
    if checkpoint:
        payload.update(jacobian_sum=matrices, n_done=0 if fault == "n-done-zero" else n)
    else:
        payload.update(J=matrices, n_prompts=n, source_layers=sorted(layers), d_model=d_model)
    if fault == "n-prompts-string":
        payload["n_done" if checkpoint else "n_prompts"] = str(n)
    elif fault == "n-prompts-negative":
        payload["n_done" if checkpoint else "n_prompts"] = -n
    elif fault == "metadata-string":
        payload["metadata"] = "tiny"
    elif fault == "d-model-wrong":
        payload["d_model"] = d_model + 1
    elif fault == "other-model-name":
        payload["metadata"] = {"model_name": "gpt2"}
    elif fault == "target-layer-wrong":
        payload["metadata"]["target_layer"] = n_layers - 2
    elif fault == "n-done-zero" and not checkpoint:
        payload["n_prompts"] = -1  # an artifact's counterpart of a fit that counted nothing
    if fault == "not-a-dict":
        return [payload], fault, expected
    return payload, fault, expected


@pytest.fixture(scope="module")
def jlens_bridge(model_zoo):
    return model_zoo["bridge-llama"]


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_jacobian_lens_load_returns_the_saved_matrices_or_a_hooklens_error(
    data, jlens_bridge, tmp_path
):
    """Random reference `.pt` payloads, good or bad: `JacobianLens.load` gives exactly the
    float64 answer (the artifact's matrices, or a checkpoint's sums over its count) or a
    HooklensError naming the file; never a raw error, never other numbers."""
    from hooklens import JacobianLens
    from hooklens.core import ModelAdapter

    cfg = jlens_bridge.cfg
    name = ModelAdapter(jlens_bridge).model_name
    payload, fault, expected = data.draw(jlens_payloads(cfg.n_layers, cfg.d_model, name))
    event(fault)
    path = tmp_path / "payload.pt"
    torch.save(payload, path)
    try:
        lens = JacobianLens.load(path, model=jlens_bridge)
    except HooklensError as error:
        assert str(path) in str(error), error
        assert fault != "none", f"a valid payload was refused: {error}"
        return
    assert fault == "none", f"fault {fault!r} loaded without an error"
    assert lens.fitted_layers == sorted(expected)
    for layer, matrix in expected.items():
        torch.testing.assert_close(lens.jacobian(layer).double(), matrix, rtol=1e-6, atol=1e-6)
