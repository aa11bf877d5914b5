"""The README's Python examples run as written.

Each ```python block of README.md is executed in a namespace holding what its prose assumes: a
Bayesian linear regression trained by SVI (``model``, ``guide``, ``x``, ``y``, the erased rows
``idx``...), a small GPyTorch SVGP trained the way GPyTorch's tutorials train one (``gp``,
``likelihood``, ``x_e``, ``y_e``...), posterior draws for ``mcmc_unlearn``. ``range`` is capped
at a few steps: the test checks that the README's calls work on these objects, not the numbers
(those are tested against closed forms elsewhere).
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import gpytorch
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def few(*args):
    """``range`` with at most 20 steps."""
    r = builtins.range(*args)
    return r[:20]


class SVGP(gpytorch.models.ApproximateGP):
    def __init__(self, inducing_points):
        q = gpytorch.variational.CholeskyVariationalDistribution(inducing_points.size(0))
        strategy = gpytorch.variational.VariationalStrategy(
            self, inducing_points, q, learn_inducing_locations=True
        )
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def trained_svgp(x, y):
    gp, likelihood = SVGP(torch.linspace(-3, 3, 8)), gpytorch.likelihoods.GaussianLikelihood()
    gp.train(), likelihood.train()
    optimizer = torch.optim.Adam([*gp.parameters(), *likelihood.parameters()], lr=0.05)
    mll = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=len(y))
    for _ in builtins.range(100):
        optimizer.zero_grad()
        (-mll(gp(x), y)).backward()
        optimizer.step()
    return gp, likelihood


@pytest.fixture
def namespace(linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    x, y, idx = linreg.x, linreg.y, linreg.erased
    keep = linreg.remaining
    draws = pu.freeze(guide, x, y)(x, y)  # one draw, to learn the sites' shapes
    num = 200
    samples = {
        name: value.expand(num, *value.shape) + 0.01 * torch.randn(num, *value.shape)
        for name, value in draws.items()
    }
    return dict(
        range=few,
        torch=torch,
        model=model,
        guide=guide,
        x=x,
        y=y,
        idx=idx,
        x_erased=x[idx],
        y_erased=y[idx],
        x_e=x[idx],
        y_e=y[idx],
        x_r=x[keep],
        y_r=y[keep],
        optim=pyro.optim.Adam({"lr": 1e-3}),
        mcmc=samples,
    )


def _run(block: str, namespace: dict) -> dict:
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_the_readme_has_the_examples_this_test_knows():
    assert len(BLOCKS) == 7
    assert "pu.Trace_EUBO" in BLOCKS[0] and "pu.forget" in BLOCKS[1]
    assert "pug.VariationalEUBO" in BLOCKS[2] and "VariationalGPAdapter" in BLOCKS[3]
    assert "pu.retrain" in BLOCKS[4] and "pu.laplace_unlearn" in BLOCKS[5]
    assert "pu.RequestLedger" in BLOCKS[6]


def test_readme_losses_and_forget(namespace):
    ns = _run(BLOCKS[0], namespace)
    assert isinstance(ns["posterior"], pu.FrozenPosterior)
    ns = _run(BLOCKS[1], ns)
    result = ns["result"]
    assert isinstance(result, pu.UnlearningResult)
    assert (
        isinstance(result.posterior, pu.FrozenPosterior) and result.original is not result.posterior
    )


def test_readme_evaluation(namespace):
    import matplotlib.pyplot as plt

    ns = dict(namespace, unlearned=pu.freeze(namespace["guide"]))
    ns["my_metrics"] = lambda q: {"kl_erased_mean": 1.0, "kl_remaining_mean": 0.1}
    ns["pu"] = pu
    ns = _run(BLOCKS[4], ns)
    assert ns["kl"].shape == (len(ns["x_e"]),)
    assert len(ns["sweep"].rows) == 1 + 2 * len(pu.LAMBDAS)
    plt.close("all")


def test_readme_other_methods(namespace, linreg):
    from pyro_unlearn.exact import gaussian_linear_posterior

    features = torch.cat([linreg.x, linreg.x.new_ones(len(linreg.x), 1)], dim=-1)
    loc, precision = gaussian_linear_posterior(
        torch.zeros(3), torch.eye(3) / 100, features, linreg.y, linreg.noise_scale
    )
    ns = dict(namespace, pu=pu, loc=loc, precision=precision, noise_scale=linreg.noise_scale)
    ns["X_e"] = features[linreg.erased]
    ns = _run(BLOCKS[5], ns)
    assert isinstance(ns["result"], pu.InfluenceUnlearnResult)


def test_readme_gpytorch():
    torch.manual_seed(0)
    x = torch.linspace(-3, 3, 60)
    y = torch.sin(2 * x) + 0.1 * torch.randn(60)
    gp, likelihood = trained_svgp(x, y)
    retrained_gp, _ = trained_svgp(x[10:], y[10:])
    x_e, y_e = x[:10], y[:10]
    ns = dict(
        pu=pu,
        torch=torch,
        gp=gp,
        likelihood=likelihood,
        x=x,
        y=y,
        x_e=x_e,
        y_e=y_e,
        loader_over_erased_data=[(x_e[:5], y_e[:5]), (x_e[5:], y_e[5:])],
        retrained_gp=retrained_gp,
    )
    ns = _run(BLOCKS[2], ns)
    assert set(ns["rkl"].diagnostics()) <= {"ess", "temperature"}


def test_readme_pyro_gp():
    """Pyro's GP tutorial's sparse GP (1-D inputs), trained by gp.util.train as there."""
    torch.manual_seed(0)
    X = torch.linspace(-3, 3, 40)
    y = torch.sin(2 * X) + 0.1 * torch.randn(40)
    ns = dict(pu=pu, torch=torch, X=X, y=y, Xu=torch.linspace(-3, 3, 6), idx=torch.arange(30, 40))
    ns = _run(BLOCKS[3], ns)
    assert isinstance(ns["result"], pu.UnlearningResult)


def test_readme_ledger(namespace, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block writes model.ledger in the working directory
    ns = dict(namespace, pu=pu, retrained_guide=trained(AutoMultivariateNormal))
    ns["user_ids"] = [f"u{i}" for i in range(len(namespace["x"]))]
    ns = _run(BLOCKS[6], ns)
    assert ns["record"].status in ("served", "retrain advised")
    assert len(ns["record"].requests) == 1 and (tmp_path / "model.ledger").exists()
    assert isinstance(ns["posterior"], pu.FrozenPosterior)
