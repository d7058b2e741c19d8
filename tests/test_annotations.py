"""The suite runs every call into hooklens under its annotations (pyproject addopts)."""

from __future__ import annotations

import jaxtyping
import pytest
import torch

from hooklens.core import AffineMoments


def test_a_shape_that_breaks_an_annotation_is_caught():
    """Rows of x and y must pair (`rows d_in`, `rows d_out`): the checker is on."""
    with pytest.raises(jaxtyping.TypeCheckError):
        AffineMoments(3, 2).update(torch.zeros(4, 3), torch.zeros(5, 2))


def test_an_int_is_a_float_as_in_pep_484():
    """`alpha: float` takes 0, as users write it (`clip(0, 8)` in the report guide)."""
    moments = AffineMoments(1, 1)
    moments.update(torch.ones(2, 1), torch.ones(2, 1))
    moments.solve(alpha=0)
