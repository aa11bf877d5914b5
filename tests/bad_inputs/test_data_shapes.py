"""Data of the wrong shape: an observation broadcast across its plate's rows (``y`` of shape
``(N, 1)`` against a mean of shape ``(N,)``), or rows that do not match (17 of ``x``, 15 of
``y``), is named before anything changes, by forget, retrain and the losses."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.validation import check_plate_shapes


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


@pytest.fixture
def setup():
    x, y = torch.randn(8, 2), torch.randn(8)
    guide = AutoNormal(regression)
    guide(x, y)
    return guide, pu.freeze(guide), x, y


BAD = {
    "column": (lambda x, y: (x, y.unsqueeze(-1)), r"site 'y' has batch shape \((\d), \1\).*dim -2"),
    "rows": (lambda x, y: (x, y[:-2]), r"site 'y' has a value of shape \(\d,\) that does not"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_forget(setup, unchanged, case):
    guide, posterior, x, y = setup
    make, match = BAD[case]
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):
        pu.forget(regression, guide, *make(x, y), erased=[0, 1], plate="data", progress=False)
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):  # D_e only
        pu.forget(regression, guide, *make(x[:4], y[:4]), progress=False)


@pytest.mark.parametrize("case", sorted(BAD))
def test_retrain(setup, unchanged, case):
    guide, posterior, x, y = setup
    make, match = BAD[case]
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):
        pu.retrain(regression, guide, *make(x, y), num_steps=5, progress=False)


@pytest.mark.parametrize("loss_cls", [pu.Trace_EUBO, pu.ReverseKL])
def test_loss(setup, unchanged, loss_cls):
    guide, posterior, x, y = setup
    loss = loss_cls(posterior, num_particles=4, vectorize_particles=True)
    svi = SVI(pu.unlearn(regression), guide, pyro.optim.Adam({"lr": 0.01}), loss)
    make, match = BAD["column"]
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):
        svi.step(*make(x, y))


def test_declared_dims_pass():
    """Dims of size 1, and dims that a plate declares at its size, are fine."""

    def model(y):
        with pyro.plate("groups", 2, dim=-2), pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(torch.zeros(3), 1.0), obs=y)

    check_plate_shapes(pyro.poutine.trace(model).get_trace(torch.zeros(2, 3)))
    check_plate_shapes(pyro.poutine.trace(model).get_trace(torch.zeros(1, 3)))
    with pytest.raises(ValueError, match=r"shape \(4, 3\) that does not broadcast"):
        check_plate_shapes(pyro.poutine.trace(model).get_trace(torch.zeros(4, 3)))
