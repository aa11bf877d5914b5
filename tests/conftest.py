import logging
import os

import pyro
import pytest
import torch

from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.linear_regression import linear_model


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda)")


def pytest_configure(config):
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda given, but CUDA is not available")
    if device.type != "cpu":  # a default-device mode costs every op a Python call: only if needed
        torch.set_default_device(device)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" chatter
    if "OMP_NUM_THREADS" not in os.environ:
        # The test models are tiny: one intra-op thread is faster than two on CI's 2 cores, and
        # far faster when anything else runs (the GPyTorch tests took 10× longer with 2).
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro():
    # As Pyro's own conftest: a clean param store and validation on before every test
    # (importing zuko switches torch's distribution validation off globally).
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def device():
    return torch.get_default_device()


@pytest.fixture(scope="session")
def linreg():
    """The informative-cluster linear regression: 100 points, the first 10 erased."""
    return linear_regression(device=torch.get_default_device())


@pytest.fixture
def model(linreg):
    def model(x, y=None):
        return linear_model(x, y, linreg.noise_scale)

    return model


@pytest.fixture(scope="session")
def _trained_states():
    return {}


@pytest.fixture
def trained(linreg, model, _trained_states):
    """``trained(AutoGuideClass)``: a guide fitted to the full data by Trace_ELBO (fitted once
    per session; each call returns a fresh guide holding those values)."""
    from pyro.infer import SVI, Trace_ELBO

    def make(cls, **guide_kwargs):
        guide = cls(model, **guide_kwargs)
        key = (cls.__name__, tuple(sorted(guide_kwargs.items())))
        if key in _trained_states:
            guide(linreg.x, linreg.y)
            guide.load_state_dict(_trained_states[key])
            return guide
        optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / 1500)})
        svi = SVI(model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
        for _ in range(1500):
            svi.step(linreg.x, linreg.y)
        _trained_states[key] = {k: v.detach().clone() for k, v in guide.state_dict().items()}
        return guide

    return make


@pytest.fixture
def exact_target(linreg):
    """``exact_target(guide)``: (loc, cov) of q(θ|D)/p(D_e|θ) from the guide's own moments."""
    from pyro_unlearn.exact import gaussian_linear_unlearn
    from pyro_unlearn.guides import read_gaussian

    def target(guide):
        loc, cov = (t.clone() for t in read_gaussian(guide))
        x, y = linreg.x[linreg.erased], linreg.y[linreg.erased]
        features = torch.cat([x, x.new_ones(len(x), 1)], dim=-1)
        t_loc, t_prec = gaussian_linear_unlearn(
            loc, torch.linalg.inv(cov), features, y, linreg.noise_scale
        )
        return t_loc, torch.linalg.inv(t_prec)

    return target


@pytest.fixture
def exact_posterior(linreg):
    """``exact_posterior(idx)``: the exact p(θ|D[idx]) (prior N(0, 10²) on (w, b)) as a
    MultivariateNormal over the packed (w, b), the AutoContinuous latent order."""
    import pyro.distributions as dist

    from pyro_unlearn.exact import gaussian_linear_posterior

    def posterior(idx):
        x = linreg.x[idx]
        features = torch.cat([x, x.new_ones(len(x), 1)], dim=-1)
        dim = features.shape[-1]
        loc, prec = gaussian_linear_posterior(
            x.new_zeros(dim), torch.eye(dim) / 100.0, features, linreg.y[idx], linreg.noise_scale
        )
        return dist.MultivariateNormal(loc, precision_matrix=prec)

    return posterior


@pytest.fixture(scope="session")
def moons_quick_run():
    """The moons reproduction's quick run (sorted erasure), run once for the session: the
    experiment's tests and the ``pyro-unlearn demo`` wiring test share it."""
    from pyro_unlearn.experiments import moons

    pyro.clear_param_store()
    return moons.run(progress=False, keep_posteriors=True, **moons.QUICK)
