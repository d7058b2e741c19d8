"""Affine least squares from streamed rows: `y ≈ A x + b`, `x` and `y` of any widths.

The moments (Σ x xᵀ, Σ x yᵀ, Σ x, Σ y and the count) accumulate in float64 from float32
matmuls, one batch at a time, so the rows are never held together; `solve` is one
`(d_in + 1)²` system. The ridge pulls `A` toward zero with a strength relative to the
data's own scale, `λ = α · tr(Cov x) / d_in`, and leaves `b` free.

Examples:
    >>> moments = AffineMoments(d_in=3, d_out=2)
    >>> x = torch.randn(100, 3, dtype=torch.float64)
    >>> A, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    >>> moments.update(x, x @ A.T + b)
    >>> fitted, offset = moments.solve(alpha=0.0)
    >>> torch.allclose(fitted, A) and torch.allclose(offset, b)
    True
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens.core import distributed
from hooklens.errors import InputError


class AffineMoments:
    """Running sums of one affine least-squares problem `y ≈ A x + b`."""

    def __init__(self, d_in: int, d_out: int, device: torch.device | str = "cpu"):
        self.xx = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        self.xy = torch.zeros(d_in, d_out, dtype=torch.float64, device=device)
        self.x = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.y = torch.zeros(d_out, dtype=torch.float64, device=device)
        self.count = 0

    def __repr__(self) -> str:
        d_in, d_out = self.xy.shape
        return f"AffineMoments(d_in={d_in}, d_out={d_out}, rows={self.count})"

    def update(self, x: Float[Tensor, "rows d_in"], y: Float[Tensor, "rows d_out"]) -> None:
        """Add paired rows (float32 products, float64 sums; float64 rows stay float64)."""
        if x.shape[0] != y.shape[0]:
            raise InputError(f"x has {x.shape[0]} rows and y {y.shape[0]}: pair them row by row")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, y = x.to(dtype), y.to(dtype)
        self.xx += (x.T @ x).double()
        self.xy += (x.T @ y).double()
        self.x += x.sum(0).double()
        self.y += y.sum(0).double()
        self.count += x.shape[0]

    def all_reduce(self) -> None:
        """Sum the moments of every torch.distributed rank (a no-op for one process)."""
        for tensor in (self.xx, self.xy, self.x, self.y):
            distributed.all_reduce_sum_(tensor)
        count = torch.tensor([self.count], dtype=torch.float64, device=self.xx.device)
        self.count = int(distributed.all_reduce_sum_(count).item())

    def solve(
        self, alpha: float = 1e-5
    ) -> tuple[Float[Tensor, "d_out d_in"], Float[Tensor, " d_out"]]:
        """`(A, b)` minimising `Σ ‖y − A x − b‖² + λ ‖A‖²` (float64)."""
        if self.count == 0:
            raise InputError("no data: call update() with at least one batch of rows first")
        d = self.xx.shape[0]
        n = float(self.count)
        covariance_trace = torch.trace(self.xx) - self.x @ self.x / n
        ridge = alpha * covariance_trace / d
        # The system over [x, 1]: row and column d are the intercept's.
        gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=self.xx.device)
        gram[:d, :d] = self.xx + ridge * torch.eye(d, dtype=torch.float64, device=gram.device)
        gram[:d, d] = gram[d, :d] = self.x
        gram[d, d] = n
        rhs = torch.cat([self.xy, self.y[None]])
        # lstsq, not solve: fewer distinct rows than d_in + 1 leave the system singular
        # without a ridge, and the minimum-norm answer is still the least-squares one.
        solution = torch.linalg.lstsq(gram, rhs).solution
        return solution[:d].T, solution[d]
