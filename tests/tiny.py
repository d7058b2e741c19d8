"""Tiny random models built from configs, and a word-level tokenizer, for the tests
(`tests/conftest.py`) and the package's docstring examples (the repository-root
`conftest.py` puts a tiny model in pytest's `doctest_namespace`).

Norm gains and unembedding biases are randomised so that folding, centring and the
unembedding hash have something to act on (fresh inits have unit gains and zero biases).
Nothing here imports hooklens or TransformerLens at import time: the root conftest
imports this module, and `--jaxtyping-packages=hooklens` needs hooklens imported after
the conftests load.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

VOCAB = 96
N_LAYERS = 3
D_MODEL = 32

# A vocabulary of English words for the docstring examples: their prompts ("The capital
# of France is", the greater-than task's "The war lasted from the year 1732 to the year
# 17") read as words, digits one token each. Padded to `VOCAB` with "w<i>" words.
SPECIALS = ("<unk>", "<eos>", "<bos>", "<pad>")
EXAMPLE_WORDS = (
    *SPECIALS,
    *"0123456789",
    *""". , ! ? ' : ; The the A a capital of France is Paris Germany Berlin Italy Rome city
    country Eiffel Tower in on at to from and or not it was were be been year years war
    expedition drought reign siege famine voyage dynasty lasted cat sat mat It purred dog ran
    When Mary John went store gave bag Hello world red blue green king queen man woman
    """.split(),  # noqa: SIM905 (a word list reads best as words)
)


def words_vocabulary(words: Sequence[str] = EXAMPLE_WORDS, size: int = VOCAB) -> list[str]:
    """`words` (unique, in order) padded with "w<i>" to `size` entries."""
    vocabulary = list(dict.fromkeys(words))
    if len(vocabulary) > size:
        raise ValueError(f"{len(vocabulary)} words do not fit a vocabulary of {size}")
    return vocabulary + [f"w{i}" for i in range(len(vocabulary), size)]


def word_tokenizer(folder: str | Path, words: Sequence[str] | None = None):
    """A word-level tokenizer, saved to `folder` and reloaded like a hub one.

    `words` (default: "w0" ... "w<VOCAB-1>") are the token strings in id order; the
    first four are the unknown, end-of-sequence, beginning-of-sequence and padding
    tokens. With `words`, digits are split one token each (as SmolLM2 and Llama do).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if words is None:
        vocabulary = [f"w{i}" for i in range(VOCAB)]
        pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        vocabulary = list(words)
        pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
        )
    unk, eos, bos, pad = vocabulary[:4]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, eos_token=eos, bos_token=bos, pad_token=pad
    )
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def randomise_norms_and_biases(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(part in name for part in ("ln", "norm"))
            if is_norm and leaf in ("w", "weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif leaf in ("b", "bias", "b_U") and param.ndim == 1:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


NO_HOOKED_TRANSFORMER = (
    "needs HookedTransformer, which TransformerLens 4.0 removed (this venv has "
    "transformer-lens {version}); the TransformerBridge cases run here"
)


def skip_without_hooked_transformer() -> None:
    """Skip the calling test where the installed TransformerLens (4.x) has no
    HookedTransformer; everything else of the test file still runs."""
    from importlib.metadata import version

    from hooklens.models import has_hooked_transformer

    if not has_hooked_transformer():
        pytest.skip(NO_HOOKED_TRANSFORMER.format(version=version("transformer-lens")))


def make_hooked(
    normalization: str = "RMS", processing: bool = False, seed: int = 0, **overrides
) -> torch.nn.Module:
    """A 3-layer HookedTransformer; `processing` applies TransformerLens's defaults."""
    skip_without_hooked_transformer()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    settings = dict(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=VOCAB,
        n_ctx=32,
        act_fn="gelu",
        normalization_type=normalization,
        positional_embedding_type="rotary" if normalization == "RMS" else "standard",
        model_name=f"tiny-{normalization.lower()}",
        seed=seed,
    )
    settings.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**settings))
    randomise_norms_and_biases(model, seed)
    if processing:
        model.process_weights_()
    return model.eval()


# Families that transform their logits after W_U (hooklens.core.output_transform), each
# with a non-unit setting so a lens that ignored it would be caught.
SCALED_LOGITS = {
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
    "falcon_h1": (  # muP: lm_head_multiplier, and Mamba mixers beside attention
        "FalconH1Config",
        "FalconH1ForCausalLM",
        {
            "lm_head_multiplier": 0.3,
            "head_dim": 8,
            "mamba_d_ssm": D_MODEL,
            "mamba_n_heads": 4,
            "mamba_d_head": 8,
            "mamba_d_state": 8,
            "mamba_n_groups": 1,
            "mamba_chunk_size": 8,
        },
    ),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"final_logit_softcapping": 3.0}),
}


def tiny_hf(architecture: str, seed: int = 0, n_layers: int = N_LAYERS) -> torch.nn.Module:
    """A tiny random Hugging Face causal LM: "llama", "gpt2", "gemma2", or one of
    `SCALED_LOGITS` ("cohere", "granite", "falcon_h1", "gemma3")."""
    import transformers
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    llama_sizes = {
        "vocab_size": VOCAB,
        "hidden_size": D_MODEL,
        "intermediate_size": 64,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
    }
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**llama_sizes))
    elif architecture == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=D_MODEL, n_layer=n_layers, n_head=4)
        model = GPT2LMHeadModel(config)
    elif architecture == "gemma2":  # RMSNorm with (1 + w) gains and a logit softcap
        config = Gemma2Config(
            **{**llama_sizes, "tie_word_embeddings": True},
            head_dim=8,
            final_logit_softcapping=3.0,
        )
        model = Gemma2ForCausalLM(config)
    elif architecture in SCALED_LOGITS:
        config_name, model_name, settings = SCALED_LOGITS[architecture]
        model_class = getattr(transformers, model_name)
        config = getattr(transformers, config_name)(
            **llama_sizes, **settings, architectures=[model_name]
        )
        model = model_class(config)
    else:
        raise ValueError(architecture)
    randomise_norms_and_biases(model, seed)
    if architecture.startswith("gemma"):  # (1 + w) gains: keep them near one, not two
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.sub_(1.0)
    return model.eval()


def make_bridge(
    tokenizer,
    architecture: str = "llama",
    processing: bool = False,
    seed: int = 0,
    n_layers: int = N_LAYERS,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """A TransformerBridge around a tiny random HF model (raw, or compatibility mode),
    its weights on `device` in `dtype` (the same draw, rounded, for every dtype)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = tiny_hf(architecture, seed, n_layers).to(device=device, dtype=dtype)
    bridge = TransformerBridge.boot_transformers(
        f"tiny-{architecture}",
        hf_model=copy.deepcopy(hf_model),
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
    )
    if processing:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


class Killed(Exception):
    """What `dies_after` raises: a run stopped from outside."""


def dies_after(batches: Sequence[torch.Tensor], n: int):
    """Yield `batches`, then raise `Killed` when the `n`-th (0-based) is asked for: a
    training run killed mid-way, for the interrupt-and-resume tests."""
    for index, batch in enumerate(batches):
        if index == n:
            raise Killed
        yield batch
