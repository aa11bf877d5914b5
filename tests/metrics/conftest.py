"""Fixtures shared by the metrics tests."""

import pytest
import torch


@pytest.fixture
def reg_data():
    x = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2], [2.0, 0.1]])
    return x, (x * torch.tensor([1.0, -1.0])).sum(-1)
