"""Bad inputs to the closed-form unlearning of pyro_unlearn.exact: each is refused with an error
that names the argument and the problem, and leaves the (pure) functions' inputs unchanged."""

import pytest
import torch

from pyro_unlearn import exact
from pyro_unlearn.exact import NotNormalizableError

NAN, INF = float("nan"), float("inf")


def _with(tensor: torch.Tensor, index, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def _linear(**change):
    """A q(θ|D) = N(0, (10 I)⁻¹) over (D = 2) and three erased rows, with ``change`` applied."""
    args = {
        "loc": torch.zeros(2),
        "precision": torch.eye(2) * 10,
        "features": torch.ones(3, 2),
        "targets": torch.ones(3),
        "noise_scale": 1.0,
    }
    args.update(change)
    return args


def _nig(**change):
    args = {
        "loc": torch.tensor([4 / 3]),
        "precision": torch.tensor([[3.0]]),
        "shape": 2.0,
        "scale": 10 / 3,
        "features": torch.ones(1, 1),
        "targets": torch.tensor([3.0]),
    }
    args.update(change)
    return args


def _normal(**change):
    args = {
        "loc": torch.tensor(0.75),
        "precision": torch.tensor(4.0),
        "samples": torch.ones(1),
        "noise_scale": 1.0,
    }
    args.update(change)
    return args


LIN = exact.gaussian_linear_unlearn
LIN_POST = exact.gaussian_linear_posterior
NIG = exact.normal_inverse_gamma_unlearn
NN = exact.normal_normal_unlearn
BB = exact.beta_binomial_unlearn
GP = exact.gamma_poisson_unlearn

CASES = [
    # non-finite data, named with the argument and the first bad row
    (
        LIN,
        _linear(features=_with(torch.ones(3, 2), (1, 1), NAN)),
        ValueError,
        r"features has a non-finite value \(nan\) at row 1",
    ),
    (
        LIN,
        _linear(targets=_with(torch.ones(3), 2, NAN)),
        ValueError,
        r"targets has a non-finite value \(nan\) at row 2",
    ),
    (
        LIN,
        _linear(targets=_with(torch.ones(3), 0, INF)),
        ValueError,
        r"targets has a non-finite value \(inf\) at row 0",
    ),
    (
        LIN_POST,
        _linear(features=_with(torch.ones(3, 2), (2, 0), -INF)),
        ValueError,
        r"features has a non-finite value \(-inf\) at row 2",
    ),
    (
        NIG,
        _nig(targets=torch.tensor([NAN])),
        ValueError,
        r"targets has a non-finite value \(nan\) at row 0",
    ),
    (
        NN,
        _normal(samples=torch.tensor([1.0, NAN])),
        ValueError,
        r"samples has a non-finite value \(nan\) at row 1",
    ),
    (
        BB,
        {"alpha": 3.0, "beta": 2.0, "successes": torch.tensor([1.0, NAN])},
        ValueError,
        r"successes has a non-finite value \(nan\) at row 1",
    ),
    (
        BB,
        {"alpha": 3.0, "beta": 9.0, "successes": [1], "trials": torch.tensor([INF])},
        ValueError,
        r"trials has a non-finite value \(inf\) at row 0",
    ),
    (
        GP,
        {"shape": 6.0, "rate": 4.0, "counts": torch.tensor([INF])},
        ValueError,
        r"counts has a non-finite value \(inf\) at row 0",
    ),
    (
        GP,
        {"shape": 6.0, "rate": 9.0, "counts": [1], "exposure": INF},
        ValueError,
        r"exposure is not finite \(inf\)",
    ),
    # non-finite prior or posterior parameters
    (
        LIN,
        _linear(loc=torch.tensor([0.0, NAN])),
        ValueError,
        r"loc has a non-finite value \(nan\) at row 1",
    ),
    (
        LIN,
        _linear(precision=_with(torch.eye(2) * 10, (1, 0), NAN)),
        ValueError,
        r"precision has a non-finite value \(nan\) at row 1",
    ),
    (NN, _normal(loc=torch.tensor(NAN)), ValueError, r"loc is not finite \(nan\)"),
    (NIG, _nig(shape=NAN), ValueError, r"shape is not finite \(nan\)"),
    (NIG, _nig(scale=INF), ValueError, r"scale is not finite \(inf\)"),
    (BB, {"alpha": INF, "beta": 2.0, "successes": [1]}, ValueError, r"alpha is not finite"),
    (GP, {"shape": 6.0, "rate": INF, "counts": [1]}, ValueError, r"rate is not finite"),
    (LIN, _linear(noise_scale=NAN), ValueError, r"noise_scale is not finite \(nan\)"),
    (LIN, _linear(noise_scale=INF), ValueError, r"noise_scale is not finite \(inf\)"),
    # inconsistent shapes
    (LIN, _linear(targets=torch.ones(4)), ValueError, r"features must be \(N, D\), targets \(N,\)"),
    (LIN, _linear(loc=torch.zeros(3)), ValueError, r"loc \(D,\) and precision \(D, D\)"),
    (LIN, _linear(precision=torch.eye(3)), ValueError, r"loc \(D,\) and precision \(D, D\)"),
    (LIN, _linear(features=torch.ones(3)), ValueError, r"features must be \(N, D\)"),
    (
        LIN,
        _linear(noise_scale=torch.ones(2)),
        ValueError,
        r"noise_scale must be a scalar or \(3,\), one per row, got shape \(2,\)",
    ),
    (NN, _normal(noise_scale=torch.ones(2)), ValueError, r"noise_scale must be a scalar, got"),
    # the precision of q(θ|D): symmetric, positive definite
    (
        LIN,
        _linear(precision=torch.tensor([[10.0, 1.0], [3.0, 10.0]])),
        ValueError,
        r"precision must be a symmetric \(D, D\) matrix",
    ),
    (
        LIN_POST,
        _linear(precision=torch.tensor([[1.0, 0.0], [0.5, 1.0]])),
        ValueError,
        r"precision must be a symmetric",
    ),
    (
        LIN,
        _linear(precision=torch.tensor([[-1.0, 0.0], [0.0, 10.0]])),
        ValueError,
        r"precision of q\(θ\|D\) is not positive definite \(smallest eigenvalue -1\)",
    ),
    (
        NN,
        _normal(precision=torch.tensor(-4.0)),
        ValueError,
        r"precision of q\(θ\|D\) is not positive definite",
    ),
    (
        NIG,
        _nig(precision=torch.tensor([[0.0]])),
        ValueError,
        r"precision of q\(θ\|D\) is not positive definite",
    ),
    # nothing to erase
    (
        LIN,
        _linear(features=torch.ones(0, 2), targets=torch.ones(0)),
        ValueError,
        r"features is empty \(0 rows\): there is nothing to erase",
    ),
    (NN, _normal(samples=torch.ones(0)), ValueError, r"samples is empty"),
    (
        BB,
        {"alpha": 3.0, "beta": 2.0, "successes": torch.tensor([], dtype=torch.long)},
        ValueError,
        r"successes is empty",
    ),
    (
        GP,
        {"shape": 6.0, "rate": 4.0, "counts": torch.tensor([], dtype=torch.long)},
        ValueError,
        r"counts is empty",
    ),
    # not numbers
    (LIN, _linear(noise_scale="1"), TypeError, r"noise_scale must be a number or a tensor"),
    (NIG, _nig(shape="a"), TypeError, r"shape must be a number or a tensor, got 'a'"),
    (BB, {"alpha": "3", "beta": 2.0, "successes": [1]}, TypeError, r"alpha must be a number"),
    (GP, {"shape": 6.0, "rate": 4.0, "counts": ["x"]}, TypeError, r"counts must be a number"),
    (
        LIN,
        _linear(features=torch.ones(3, 2, dtype=torch.complex64)),
        TypeError,
        r"features must be real",
    ),
]
IDS = [
    "lin-nan-features", "lin-nan-targets", "lin-inf-targets", "lin-posterior-inf-features",
    "nig-nan-targets", "normal-nan-samples", "beta-nan-successes", "beta-inf-trials",
    "gamma-inf-counts", "gamma-inf-exposure",
    "lin-nan-loc", "lin-nan-precision", "normal-nan-loc", "nig-nan-shape", "nig-inf-scale",
    "beta-inf-alpha", "gamma-inf-rate", "lin-nan-noise", "lin-inf-noise",
    "lin-targets-length", "lin-loc-length", "lin-precision-size", "lin-features-1d",
    "lin-noise-shape", "normal-noise-vector",
    "lin-asymmetric", "lin-posterior-asymmetric", "lin-indefinite", "normal-negative",
    "nig-singular",
    "lin-empty", "normal-empty", "beta-empty", "gamma-empty",
    "lin-noise-str", "nig-shape-str", "beta-alpha-str", "gamma-counts-str", "lin-complex",
]  # fmt: skip


def _snapshot(kwargs: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.mark.parametrize("function, kwargs, error, match", CASES, ids=IDS)
def test_bad_input_is_named_and_inputs_are_unchanged(function, kwargs, error, match):
    before = _snapshot(kwargs)
    with pytest.raises(error, match=match) as raised:
        function(**kwargs)
    assert not isinstance(raised.value, NotNormalizableError)  # a bad input, not a bad division
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value.isnan(), kwargs[key].isnan()), key
            assert torch.equal(value.nan_to_num(), kwargs[key].nan_to_num()), key


def test_a_valid_call_mixing_dtypes_and_lists_follows_the_widest_dtype():
    loc, precision = exact.gaussian_linear_unlearn(
        [0.0, 0.0], torch.eye(2, dtype=torch.float64) * 3, torch.ones(2, 2, dtype=torch.long),
        torch.ones(2), torch.tensor([1.0, 2.0]),
    )  # fmt: skip
    # Λ̃ = 3I − Σ_n x_n x_nᵀ / σ_n² with σ = (1, 2): 3I − 1.25·11ᵀ
    expected = torch.eye(2, dtype=torch.float64) * 3 - 1.25
    assert precision.dtype == torch.float64
    torch.testing.assert_close(precision, expected)
    torch.testing.assert_close(precision @ loc, -1.25 * torch.ones(2, dtype=torch.float64))
