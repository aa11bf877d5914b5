"""The erased-cluster data set of the GPyTorch tests."""

import pytest
import torch

from tests.contrib.gpytorch.closed_form import NOISE


@pytest.fixture
def data():
    """60 noisy points of sin(2x) on [−3, 3]; the erased cluster is the last 12 (x > 1.9)."""
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-3, 3, 60, dtype=torch.float64).unsqueeze(-1)
    y = torch.sin(2 * x.squeeze(-1)) + NOISE**0.5 * torch.randn(60, generator=g, dtype=x.dtype)
    erased = torch.arange(48, 60)
    keep = torch.arange(48)
    return x, y, erased, keep
