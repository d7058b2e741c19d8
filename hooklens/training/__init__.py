"""Training and evaluating tuned lenses: data, the closed-form fit, the loop, evaluation."""

from hooklens.training.data import chunk_and_tokenize
from hooklens.training.fast_fit import LeastSquaresMoments, fit_tuned_lens

__all__ = ["LeastSquaresMoments", "chunk_and_tokenize", "fit_tuned_lens"]
