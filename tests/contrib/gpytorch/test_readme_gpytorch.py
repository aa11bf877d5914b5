"""The README's GPyTorch example runs as written on the model GPyTorch's SVGP tutorial writes:
1-D inputs, M = 100 learnt inducing inputs, trained by Adam on everything, then predicting."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import gpytorch
import pyro
import torch

import pyro_unlearn as pu
from tests.contrib.gpytorch.test_guards import TutorialSVGP

README = Path(__file__).resolve().parents[3] / "README.md"


def _block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "pug.VariationalEUBO" in b]
    return block


def test_the_readme_gpytorch_example_runs_on_a_tutorial_model_that_just_predicted():
    torch.manual_seed(0)
    pyro.clear_param_store()
    x = torch.linspace(0, 10, 1000, dtype=torch.float64)
    y = torch.sin(x) + 0.1 * torch.randn(1000, dtype=torch.float64)
    gp = TutorialSVGP(x[::10].clone()).double()  # M = 100
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    gp.train(), likelihood.train()
    optimizer = torch.optim.Adam([*gp.parameters(), *likelihood.parameters()], lr=0.05)
    mll = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=len(y))
    for _ in range(30):
        optimizer.zero_grad()
        (-mll(gp(x), y)).backward()
        optimizer.step()
    gp.eval(), likelihood.eval()
    with torch.no_grad():
        likelihood(gp(x[:5]))  # it has just predicted
    erased = torch.arange(400, 450)
    x_e, y_e = x[erased], y[erased]
    ns = dict(
        pu=pu,
        torch=torch,
        gp=gp,
        likelihood=likelihood,
        x=x,
        y=y,
        x_e=x_e,
        y_e=y_e,
        loader_over_erased_data=[(x_e[:25], y_e[:25]), (x_e[25:], y_e[25:])],
        retrained_gp=gp,
        range=lambda *a: builtins.range(*a)[:20],
    )
    exec(compile(_block(), str(README), "exec"), ns)  # warnings are errors in the suite
    assert set(ns["rkl"].diagnostics()) <= {"ess", "temperature"}
    assert isinstance(ns["result"], pu.UnlearningResult)
