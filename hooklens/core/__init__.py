"""The model as a lens sees it: sizes, hook names, rows of the residual stream, the
unembedding and the arithmetic every lens shares. Nothing here knows a lens.

Above the argument checks (`hooklens._checks`) and the statistics kit, below lens files
and lenses. The modules, one job each:

- adapter: `ModelAdapter`, the one view of a HookedTransformer or TransformerBridge
  (sizes, the only hook names, final norm, W_U/b_U, softcap, tokenizer, and what the
  model class can do: `can_stop_at_layer`, `can_start_at_layer`, `has_kv_cache`).
- fingerprint: `ModelFingerprint` and `WeightProcessing`, what a lens must agree with to
  fit a model, with `same_model_name` and `fingerprint_differences`.
- residuals: cache → rows of the residual stream, and the one statement of the row
  convention (the table in its docstring).
- unembed: `Unembed` (final norm → W_U, b_U → scale → softcap) and `vocab_chunks`, the
  one vocabulary chunker, with its one chunk size `VOCAB_CHUNK`.
- output_transform: `OutputTransform`, what a model does to its logits after W_U (Cohere,
  Granite and Falcon-H1 scale them, Gemma caps them), read where its forward reads it.
- least_squares: `AffineMoments`, `y ≈ A x + b` from streamed rows of any widths.
- inversion: `invert_unembed`, a hidden state whose logits match a target, typed against
  the `UnembedLike` protocol (`Unembed.invert` calls it).
- chunked_kl: `ChunkedKL` and `kl_to_target`, KL(target ‖ readout) forward and backward
  one vocabulary chunk at a time.
- sampled_kl: `sample_columns` and `sampled_kl_to_target`, the opt-in estimate of the
  same KL from each row's top target tokens and importance-weighted draws.
- distributed: torchrun helpers (process group, sharding, reductions); no-ops for one
  process.
- precision: the matmul dtype for a device (`"auto"` measures) and glibc's setting that
  keeps freed memory in the process.
"""

from hooklens.core import distributed, precision
from hooklens.core.adapter import (
    ABLATION_COMPONENTS,
    RESIDUAL_COMPONENTS,
    ModelAdapter,
    ResidualComponent,
    check_same_model,
    fingerprint_of,
    normalize_component,
)
from hooklens.core.chunked_kl import (
    ChunkedKL,
    kl_to_target,
    target_distribution,
    target_projection,
    weight_chunks,
)
from hooklens.core.fingerprint import (
    ModelFingerprint,
    WeightProcessing,
    fingerprint_differences,
    same_model_name,
)
from hooklens.core.inversion import InversionOutput, UnembedLike, invert_unembed
from hooklens.core.least_squares import AffineMoments
from hooklens.core.precision import describe, matmul_dtype, retain_freed_memory
from hooklens.core.residuals import (
    check_cache,
    get_residual,
    iter_residuals,
    residual_stack,
    row_hook_names,
)
from hooklens.core.unembed import VOCAB_CHUNK, Unembed, vocab_chunks

__all__ = [
    "ABLATION_COMPONENTS",
    "RESIDUAL_COMPONENTS",
    "VOCAB_CHUNK",
    "AffineMoments",
    "ChunkedKL",
    "InversionOutput",
    "ModelAdapter",
    "ModelFingerprint",
    "ResidualComponent",
    "Unembed",
    "UnembedLike",
    "WeightProcessing",
    "check_cache",
    "check_same_model",
    "describe",
    "distributed",
    "fingerprint_differences",
    "fingerprint_of",
    "get_residual",
    "invert_unembed",
    "iter_residuals",
    "kl_to_target",
    "matmul_dtype",
    "normalize_component",
    "precision",
    "residual_stack",
    "retain_freed_memory",
    "row_hook_names",
    "same_model_name",
    "target_distribution",
    "target_projection",
    "vocab_chunks",
    "weight_chunks",
]
