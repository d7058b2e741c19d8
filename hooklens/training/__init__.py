"""Training tuned lenses: text → packed token chunks → closed-form fit → KL fine-tune.

Its modules, one sentence each:

- data: text sources (local files, globs, hub datasets) → the train/held-out split
  (`split_texts`) → packed `[seq_len]` token chunks (`pack`) → batches (`batches`).
- fast_fit: the closed-form initial fit of a tuned lens (`fit_tuned_lens`, ridge
  regression on `LeastSquaresMoments`).
- loop: the KL fine-tune (`train_lens`, `TrainConfig`), resumable from its
  checkpoint and data-parallel under torchrun.
- loss: the streamed KL(model ‖ lens) the loop minimises, without `[tokens, vocab]`
  logits in memory.
- distributed: torchrun helpers (process group, sharding, reductions).
- jacobian_sketch: sketched Jacobian-lens estimators, measured against the exact one
  and not recommended.

Moved away (the old paths still import, with a DeprecationWarning): `evaluate` to
`hooklens.evaluation`, `jacobian_fit` to `JacobianLens.fit`'s estimator, `run` to the
command line (`hooklens train`, in `hooklens.cli`).

Examples:
    >>> from hooklens.training import TrainConfig, batches, load_texts, pack, split_texts
    >>> texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    ...                                                                 # doctest: +SKIP
    >>> chunks = pack(split_texts(texts, held_out=False), model.tokenizer, seq_len=512)
    ...                                                                 # doctest: +SKIP
    >>> history = train_lens(model, lens, batches(chunks, 4), TrainConfig(steps=250))
    ...                                                                 # doctest: +SKIP
"""

from hooklens.training.data import (
    batches,
    check_data_source,
    chunk_and_tokenize,
    load_texts,
    pack,
    split_texts,
)
from hooklens.training.fast_fit import LeastSquaresMoments, fit_tuned_lens
from hooklens.training.loop import TrainConfig, batch_loss, train_lens

__all__ = [
    "LeastSquaresMoments",
    "TrainConfig",
    "batch_loss",
    "batches",
    "check_data_source",
    "chunk_and_tokenize",
    "fit_tuned_lens",
    "load_texts",
    "pack",
    "split_texts",
    "train_lens",
]
