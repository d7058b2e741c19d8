"""Training and evaluating tuned lenses (work in progress: data and the closed-form fit)."""

from hooklens.training.fast_fit import LeastSquaresMoments, fit_tuned_lens

__all__ = ["LeastSquaresMoments", "fit_tuned_lens"]
