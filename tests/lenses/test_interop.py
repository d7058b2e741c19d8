"""Our lenses as the `lens=` of TransformerLens 4's `logit_lens`: the same readout as our
trajectory at every stack entry and position, the entries mapped onto the rows reading
the same hook point, and refusals of entries a lens has no row for.

The tool exists from TransformerLens 4 on; its tests skip in the 3.9 venv, the mapping and
the refusals run in both."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hooklens import (
    InputError,
    InputTypeError,
    JacobianLens,
    LensMismatchError,
    LogitLens,
    TunedLens,
)
from hooklens.lenses import TransformerLensTranslator, transformer_lens_translator
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from tests.conftest import N_LAYERS, VOCAB, make_bridge

NO_TOOL = "transformer_lens.tools.analysis.logit_lens is new in TransformerLens 4 ({version})"


@pytest.fixture(scope="module")
def logit_lens():
    from importlib.metadata import version

    module = pytest.importorskip(
        "transformer_lens.tools.analysis.logit_lens",
        reason=NO_TOOL.format(version=version("transformer-lens")),
    )
    return module.logit_lens


@pytest.fixture(scope="module")
def bridge(word_tokenizer):
    """A raw tiny Llama bridge of our own in float64 (the zoo's are shared and float32)."""
    return make_bridge(word_tokenizer, "llama", seed=3).to(torch.float64)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(4, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def run(bridge, ids):
    with torch.no_grad():
        return bridge.run_with_cache(ids)


def _random_tuned(model, component: str, seed: int) -> TunedLens:
    """Translators far from zero and different per layer, so rows one apart differ."""
    lens = TunedLens.from_model(model, component=component)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lens.parameters():
            scale = 0.5 / param.shape[-1] ** 0.5 if param.ndim == 2 else 0.3
            param.copy_(scale * torch.randn(param.shape, generator=generator))
    return lens


def _random_jacobian(model, component: str, seed: int) -> JacobianLens:
    d_model, generator = model.cfg.d_model, torch.Generator().manual_seed(seed)
    jacobians = {
        layer: torch.eye(d_model) + 0.5 * torch.randn(d_model, d_model, generator=generator)
        for layer in range(model.cfg.n_layers - 1)
    }
    return JacobianLens.from_model(model, jacobians, component=component)


LENSES = {
    "logit": lambda m: LogitLens.from_model(m),
    "tuned-pre": lambda m: _random_tuned(m, "resid_pre", seed=1),
    "tuned-post": lambda m: _random_tuned(m, "resid_post", seed=2),
    "tuned-mid": lambda m: _random_tuned(m, "resid_mid", seed=3),
    "jacobian-pre": lambda m: _random_jacobian(m, "resid_pre", seed=4),
    "jacobian-post": lambda m: _random_jacobian(m, "resid_post", seed=4),
}
# The stack entries each lens reads (None: all), and the incl_mid that stack needs.
ENTRIES = {
    "tuned-post": dict(layers=list(range(1, N_LAYERS + 1))),
    "tuned-mid": dict(layers=[*range(1, 2 * N_LAYERS, 2), 2 * N_LAYERS], incl_mid=True),
}


def _trajectory(lens, ids, run, **kw) -> PredictionTrajectory:
    logits, cache = run
    return PredictionTrajectory.from_lens_and_cache(
        lens, ids, cache, logits, residual_component=lens.component, **kw
    )


def _entries(result, options) -> list[int]:
    """The whole-stack index of each entry of a `logit_lens` result."""
    return options.get("layers") or list(range(len(result.labels)))


def _reference_lens(lens, translator, index):
    """The lens and row whose readout stack entry `index` must equal."""
    row = translator.lens_row(index)
    if row is None:  # a resid_post J-lens's embeddings: read as the logit lens (row 0)
        return LogitLens.from_model(lens.adapter), 0
    return lens, row


@pytest.mark.parametrize("kind", LENSES)
def test_logit_lens_reads_our_lens_as_our_trajectory_at_every_entry(
    kind, logit_lens, bridge, ids, run
):
    lens = LENSES[kind](bridge)
    options = ENTRIES.get(kind, {})
    translator = transformer_lens_translator(lens, incl_mid=options.get("incl_mid"), model=bridge)
    _, cache = run
    result = logit_lens(bridge, cache=cache, positions=None, lens=translator, **options)
    traj = _trajectory(lens, ids, run)
    entropy = traj.entropy().stats  # [batch, row, pos]
    assert len(result.values) == len(_entries(result, options))
    for values, ent, index in zip(
        result.values, result.readout.entropy, _entries(result, options), strict=True
    ):
        theirs = torch.log_softmax(values.double(), dim=-1)
        reference, row = _reference_lens(lens, translator, index)
        ours = reference.log_probs(cache, row).double()  # float64, like the model
        torch.testing.assert_close(theirs, ours, atol=1e-9, rtol=0)
        if reference is lens:  # the trajectory reads in float32
            torch.testing.assert_close(
                theirs, traj.layer_log_probs(row).double(), atol=1e-5, rtol=0
            )
            np.testing.assert_allclose(ent.numpy(), entropy[:, row], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["tuned-pre", "jacobian-post"])
def test_an_entry_one_block_off_would_read_another_distribution(kind, logit_lens, bridge, run):
    """Entry ℓ must equal the row reading its hook point and no neighbour of it, so the
    equality above catches a mapping off by one."""
    lens = LENSES[kind](bridge)
    translator = transformer_lens_translator(lens)
    _, cache = run
    result = logit_lens(
        bridge, cache=cache, positions=None, lens=translator, return_type="log_probs"
    )
    middle = N_LAYERS // 2 + 1  # an entry with a translated row on both sides
    row = translator.lens_row(middle)
    assert row == (middle if lens.component == "resid_pre" else middle - 1)
    theirs = result.values[middle].double()
    torch.testing.assert_close(theirs, lens.log_probs(cache, row).double(), atol=1e-5, rtol=0)
    for neighbour in (row - 1, row + 1):
        gap = (theirs - lens.log_probs(cache, neighbour).double()).abs().max().item()
        assert gap > 0.05, f"row {neighbour} reads like row {row}: the test cannot tell them apart"


def test_ranks_top_tokens_and_target_log_probs_equal_the_trajectory(logit_lens, bridge, ids, run):
    lens = LENSES["tuned-pre"](bridge)
    translator = transformer_lens_translator(lens)
    _, cache = run
    traj = _trajectory(lens, ids, run, targets=next_token_targets(ids))
    scored = slice(None, -1)  # the last position has no next token
    ranked = logit_lens(
        bridge,
        cache=cache,
        positions=scored,
        lens=translator,
        targets=ids[:, 1:],
        return_type="log_probs",
    )
    # Theirs: 0-based, counting strictly larger logits; ours: 1 + that.
    np.testing.assert_array_equal(
        ranked.rank_trajectory().numpy().swapaxes(0, 1) + 1, traj.rank().stats[..., scored]
    )
    cross_entropy = -ranked.values[..., 0].double().numpy().swapaxes(0, 1)
    np.testing.assert_allclose(cross_entropy, traj.cross_entropy().stats[..., scored], atol=1e-5)
    top = logit_lens(
        bridge, cache=cache, positions=None, lens=translator, top_k=traj.topk, return_type="probs"
    )
    our_ids, our_probs = traj.top_predictions()  # [batch, row, pos, k]
    np.testing.assert_array_equal(top.readout.top_ids.numpy().swapaxes(0, 1), our_ids.numpy())
    np.testing.assert_allclose(top.values.numpy().swapaxes(0, 1), our_probs.numpy(), atol=1e-6)


def test_the_default_last_position_readout_equals_the_trajectory(logit_lens, bridge, ids, run):
    lens = LENSES["jacobian-pre"](bridge)
    _, cache = run
    result = logit_lens(
        bridge, cache=cache, lens=transformer_lens_translator(lens), return_type="log_probs"
    )
    traj = _trajectory(lens, ids, run)
    for row, values in enumerate(result.values):  # [batch, vocab]
        expected = traj.layer_log_probs(row)[:, -1].double()
        torch.testing.assert_close(values.double(), expected, atol=1e-5, rtol=0)


def test_transform_hidden_itself_is_the_protocol_for_a_resid_pre_lens(logit_lens, bridge, run):
    lens = LENSES["tuned-pre"](bridge)
    _, cache = run
    bare = logit_lens(bridge, cache=cache, positions=None, lens=lens.transform_hidden)
    adapted = logit_lens(
        bridge, cache=cache, positions=None, lens=transformer_lens_translator(lens)
    )
    torch.testing.assert_close(bare.values, adapted.values, atol=0, rtol=0)


def test_logit_lens_stops_at_an_entry_the_lens_was_not_trained_on(logit_lens, bridge, run):
    _, cache = run
    post = transformer_lens_translator(LENSES["tuned-post"](bridge))
    with pytest.raises(
        InputError, match=rf"blocks\.0\.hook_resid_pre.*layers=range\(1, {N_LAYERS + 1}\)"
    ):
        logit_lens(bridge, cache=cache, lens=post)


# --- the mapping and the refusals (no tool needed: both venvs) --------------------------

STACK_ROWS = {  # stack index → our row, for N_LAYERS = 3 (None: refused)
    ("logit", False): [0, 1, 2, 3],
    ("tuned-pre", False): [0, 1, 2, 3],
    ("tuned-post", False): [None, 0, 1, 3],
    ("jacobian-post", False): ["identity", 0, 1, 3],
    ("tuned-pre", True): [0, None, 1, None, 2, None, 3],
    ("tuned-post", True): [None, None, 0, None, 1, None, 3],
    ("tuned-mid", True): [None, 0, None, 1, None, 2, 3],
}


@pytest.mark.parametrize(("kind", "incl_mid"), STACK_ROWS)
def test_stack_entries_map_onto_the_rows_reading_the_same_hook_point(kind, incl_mid, model_zoo):
    translator = transformer_lens_translator(
        LENSES[kind](model_zoo["bridge-llama"]), incl_mid=incl_mid
    )
    for index, expected in enumerate(STACK_ROWS[kind, incl_mid]):
        if expected is None:
            with pytest.raises(InputError, match=f"stack entry {index} is blocks"):
                translator.lens_row(index)
        else:
            assert translator.lens_row(index) == (None if expected == "identity" else expected)


def test_refused_entries_name_the_layers_to_pass(model_zoo):
    model = model_zoo["bridge-llama"]
    cases = [
        ("tuned-post", False, 0, r"layers=range\(1, 4\)"),
        ("tuned-pre", True, 1, r"layers=range\(0, 7, 2\).*incl_mid=False"),
        ("tuned-post", True, 3, r"layers=range\(2, 7, 2\)"),
        ("tuned-mid", True, 2, r"layers=\[\*range\(1, 6, 2\), 6\]"),
        ("jacobian-post", True, 1, r"layers=range\(0, 7, 2\)"),
    ]
    for kind, incl_mid, index, message in cases:
        translator = transformer_lens_translator(LENSES[kind](model), incl_mid=incl_mid)
        with pytest.raises(InputError, match=message):
            translator(torch.zeros(2, model.cfg.d_model), index)


def test_an_index_beyond_the_stack_asks_for_the_same_incl_mid(model_zoo):
    translator = transformer_lens_translator(LogitLens.from_model(model_zoo["bridge-llama"]))
    with pytest.raises(InputError, match="same incl_mid"):
        translator.lens_row(N_LAYERS + 1)  # a stack with resid_mid entries


def test_a_resid_mid_lens_needs_the_stack_with_resid_mid_entries(model_zoo):
    lens = LENSES["tuned-mid"](model_zoo["bridge-llama"])
    assert transformer_lens_translator(lens).incl_mid
    with pytest.raises(InputError, match="incl_mid=True"):
        transformer_lens_translator(lens, incl_mid=False)


@pytest.mark.outside_annotations
def test_a_lens_for_another_model_or_of_another_kind_is_refused(model_zoo):
    lens = LogitLens.from_model(model_zoo["bridge-llama"])
    with pytest.raises(LensMismatchError):
        transformer_lens_translator(lens, model=model_zoo["bridge-gpt2"])
    translator = transformer_lens_translator(lens)
    with pytest.raises(LensMismatchError, match="d_model"):
        translator(torch.zeros(2, 5), 0)
    with pytest.raises(InputTypeError, match="hooklens Lens"):
        transformer_lens_translator("logit lens")  # type: ignore[arg-type]


def test_the_translator_prints_its_lens(model_zoo):
    translator = transformer_lens_translator(LogitLens.from_model(model_zoo["bridge-llama"]))
    assert isinstance(translator, TransformerLensTranslator)
    assert repr(translator).startswith("TransformerLensTranslator(LogitLens(")


@pytest.mark.slow
@pytest.mark.tl4
def test_on_the_embedded_model_a_fast_fitted_tuned_lens_reads_as_our_trajectory(logit_lens):
    """SmolLM2 (raw bridge), a tuned lens fitted in closed form on 128 tokens:
    TransformerLens's logit_lens through it gives our trajectory's cross-entropy, rank
    and entropy at every layer and position."""
    from hooklens import models
    from hooklens.training.data import batches, load_texts, pack, split_texts
    from hooklens.training.fast_fit import fit_tuned_lens

    model = models.load("smollm2-135m", model_class="bridge", processing=False)
    texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    chunks = pack(split_texts(texts, held_out=False), model.tokenizer, 64)
    fit = list(batches(itertools.islice(chunks, 2), 2))  # 128 tokens: ridge-regularised
    with torch.no_grad():
        lens = fit_tuned_lens(model, fit, progress=False)
    ids = model.to_tokens("The Eiffel Tower is a wrought-iron lattice tower in Paris, France, and")
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    traj = _trajectory(lens, ids, (logits, cache), targets=next_token_targets(ids))
    result = logit_lens(
        model,
        cache=cache,
        positions=slice(None, -1),
        lens=transformer_lens_translator(lens, model=model),
        targets=ids[:, 1:],
        return_type="log_probs",
    )
    scored = slice(None, -1)
    cross_entropy = -result.values[..., 0].double().numpy().swapaxes(0, 1)
    np.testing.assert_allclose(cross_entropy, traj.cross_entropy().stats[..., scored], atol=1e-4)
    entropy = result.readout.entropy.numpy().swapaxes(0, 1)
    np.testing.assert_allclose(entropy, traj.entropy().stats[..., scored], atol=1e-4)
    ranks = result.rank_trajectory().numpy().swapaxes(0, 1) + 1
    agree = ranks == traj.rank().stats[..., scored]
    assert agree.mean() > 0.99, f"ranks differ at {np.argwhere(~agree).tolist()}"
    # The lens does something: the middle layer reads otherwise than the logit lens.
    plain = logit_lens(model, cache=cache, positions=scored, targets=ids[:, 1:])
    middle = model.cfg.n_layers // 2
    assert (result.readout.entropy[middle] - plain.readout.entropy[middle]).abs().max() > 0.1
