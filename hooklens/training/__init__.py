"""Training tuned lenses: text → packed token chunks → closed-form fit → KL fine-tune.

Its modules, one sentence each:

- sources: where texts come from (local files, globs, hub datasets, the offline
  Wikipedia corpus): `load_texts`, `check_data_source`, `data_fingerprint`.
- data: texts → the train/held-out split (`split_texts`) → packed `[seq_len]` token
  chunks (`pack`) → batches (`batches`); it re-exports the names of `sources`.
- fast_fit: the closed-form initial fit of a tuned lens (`fit_tuned_lens`, ridge
  regression on `LeastSquaresMoments`).
- loop: the KL fine-tune (`train_lens`, `TrainConfig`), top to bottom, resumable
  from its checkpoint and data-parallel under torchrun.
- optimizers: the optimiser and schedule a `TrainConfig` names (Adam, AdamW, Nesterov
  SGD, and Muon for the matrices with Adam for the biases: `MuonWithAdam`).
- keep_better: the end of a run: per layer, the better of start and fine-tune on
  held-out batches (`keep_better`, `held_out_kl`).
- checkpoint: the loop's checkpoint: claiming its directory, saving, checking and
  resuming it, and the digest of the batches it consumed.
- jacobian_sketch: sketched Jacobian-lens estimators, measured against the exact one
  and not recommended.

Moved away (the old paths still import, with a DeprecationWarning): `loss` (the
streamed KL the loop minimises) to `hooklens.core.chunked_kl`, `distributed` (torchrun
helpers) to `hooklens.core.distributed`, `evaluate` to `hooklens.evaluation`,
`jacobian_fit` to `JacobianLens.fit`'s estimator (`hooklens.lenses.jacobian_estimator`),
`run` to the command line (`hooklens train`, in `hooklens.cli`).

Examples:
    >>> from hooklens.training import (
    ...     TrainConfig, batches, load_texts, pack, split_texts, train_lens)
    >>> texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    ...                                                                 # doctest: +SKIP
    >>> # here: a local file of 300 short lines, and the examples' tiny model
    >>> texts = (row["text"] for row in load_texts("texts.jsonl", streaming=True))
    >>> chunks = pack(split_texts(texts, held_out=False), model.tokenizer, seq_len=16)
    >>> history = train_lens(model, lens, batches(chunks, 4), TrainConfig(steps=5))
    >>> [record["step"] for record in history], history[-1]["tokens"]
    ([1, 2, 3, 4, 5], 64)
"""

from hooklens.training.data import batches, chunk_and_tokenize, pack, split_texts
from hooklens.training.fast_fit import LeastSquaresMoments, fit_tuned_lens
from hooklens.training.loop import TrainConfig, batch_loss, train_lens
from hooklens.training.sources import check_data_source, load_texts

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
