"""Data sets of the reproductions, generated or shipped with the package (never downloaded)."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["LinearRegressionData", "linear_regression"]


class LinearRegressionData(NamedTuple):
    x: torch.Tensor  # (N, D) inputs
    y: torch.Tensor  # (N,) targets
    erased: torch.Tensor  # (E,) indices of D_e
    noise_scale: float

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        keep = torch.ones(len(self.y), dtype=torch.bool, device=self.y.device)
        keep[self.erased] = False
        return keep.nonzero().squeeze(-1)


def linear_regression(
    num_data: int = 100,
    num_erased: int = 10,
    num_features: int = 2,
    shift: float = 0.5,
    noise_scale: float = 0.5,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LinearRegressionData:
    """y = x·w + b + N(0, σ²) with w = (1, −2, 1, −2, …), b = 0.5; the first ``num_erased`` rows
    form the erased set D_e, a cluster with inputs shifted by ``shift`` and targets ``shift`` off
    the regression line, so that forgetting it moves the posterior (EXPERIMENTS.md §3).
    Generated on the CPU with its own generator (the same numbers on every device), then moved
    to ``device``/``dtype``.

    Example::

        >>> data = linear_regression(num_data=50, num_erased=5)
        >>> data.x.shape, data.y.shape, data.erased.tolist()
        (torch.Size([50, 2]), torch.Size([50]), [0, 1, 2, 3, 4])
    """
    if not 0 < num_erased < num_data:
        raise ValueError(f"need 0 < num_erased < num_data, got {num_erased}, {num_data}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, num_features, generator=g, dtype=torch.float64)
    x[:num_erased] += shift
    w = torch.tensor([1.0, -2.0], dtype=torch.float64).repeat(num_features)[:num_features]
    y = x @ w + 0.5 + noise_scale * torch.randn(num_data, generator=g, dtype=torch.float64)
    y[:num_erased] += shift  # off the regression line: the erased cluster is informative
    dtype = dtype or torch.get_default_dtype()
    erased = torch.arange(num_erased, device=device)
    return LinearRegressionData(
        x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype), erased, noise_scale
    )
