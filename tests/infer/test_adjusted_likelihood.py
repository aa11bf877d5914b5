import math

import pytest
import torch

from pyro_unlearn.infer.adjusted_likelihood import (
    adjusted_log_likelihood,
    check_lam,
    log_threshold,
)


def test_threshold_masks_low_density_particles():
    log_lik = torch.tensor([-1.0, -2.0, -3.0])
    log_q = torch.tensor([0.0, -5.0, -0.5])
    threshold = log_threshold(0.5, torch.tensor(0.0))  # log 0.5 ≈ -0.69
    assert torch.equal(
        adjusted_log_likelihood(log_lik, log_q, threshold), torch.tensor([-1.0, 0.0, -3.0])
    )


def test_lambda_zero_is_the_plain_likelihood_and_one_unlearns_nothing():
    log_lik = torch.tensor([-1.0, -2.0])
    log_q = torch.tensor([-1e6, 0.0])
    assert log_threshold(0.0, torch.tensor(0.0)) == -math.inf
    assert torch.equal(
        adjusted_log_likelihood(log_lik, log_q, log_threshold(0.0, torch.tensor(0.0))), log_lik
    )
    assert torch.equal(
        adjusted_log_likelihood(log_lik, log_q, log_threshold(1.0, torch.tensor(0.0))),
        torch.zeros(2),
    )


@pytest.mark.parametrize("lam", [-1e-9, 1.0001, float("nan"), float("inf")])
def test_lambda_out_of_range(lam):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_lam(lam)


def test_threshold_follows_dtype():
    t = log_threshold(0.1, torch.tensor(2.0, dtype=torch.float64))
    assert t.dtype == torch.float64 and t.item() == pytest.approx(2.0 + math.log(0.1))
