"""Data sets of the reproductions, generated or shipped with the package (never downloaded)."""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BanknoteData", "LinearRegressionData", "banknote", "linear_regression"]


class LinearRegressionData(NamedTuple):
    x: torch.Tensor  # (N, D) inputs
    y: torch.Tensor  # (N,) targets
    erased: torch.Tensor  # (E,) indices of D_e
    noise_scale: float

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        return _remaining(len(self.y), self.erased)


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


def _remaining(num: int, erased: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(num, dtype=torch.bool, device=erased.device)
    keep[erased] = False
    return keep.nonzero().squeeze(-1)


class BanknoteData(NamedTuple):
    x: torch.Tensor  # (1372, 4) raw features: variance, skewness, curtosis, entropy
    y: torch.Tensor  # (1372,) class, 0. or 1.
    erased: torch.Tensor  # (412,) indices of D_e

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        return _remaining(len(self.y), self.erased)


#: Column names of the banknote features, in order.
BANKNOTE_FEATURES = ("variance", "skewness", "curtosis", "entropy")


def banknote(
    device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> BanknoteData:
    """The UCI banknote authentication data (shipped with the package, CC BY 4.0; Lohweg &
    Doerksen 2012, https://doi.org/10.24432/C55P57) with the Variational Bayesian Unlearning
    paper's split: ``idx = np.arange(1372); np.random.seed(0); np.random.shuffle(idx)``; the
    shuffled rows ``idx[960:]`` (412, 30 %) are erased, ``idx[:960]`` remain (EXPERIMENTS.md §5).
    Features are raw (unstandardised), as in the paper.

    Example::

        >>> data = banknote()
        >>> data.x.shape, len(data.erased), len(data.remaining), int(data.y.sum())
        (torch.Size([1372, 4]), 412, 960, 610)
    """
    path = resources.files("pyro_unlearn") / "data" / "data_banknote_authentication.txt"
    with resources.as_file(path) as f:
        table = np.loadtxt(f, delimiter=",")
    idx = np.arange(len(table))
    rng = np.random.RandomState(0)  # the global np.random.seed(0) stream, without touching it
    rng.shuffle(idx)
    dtype = dtype or torch.get_default_dtype()
    x = torch.as_tensor(table[:, :4], dtype=dtype, device=device)
    y = torch.as_tensor(table[:, 4], dtype=dtype, device=device)
    erased = torch.as_tensor(np.sort(idx[960:]), device=device)
    return BanknoteData(x, y, erased)
