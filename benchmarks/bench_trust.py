"""Does ``forget``'s verdict track the truth? Nine client models, two erasures each, retraining
as the reference.

Each model is written as Pyro's tutorials write it and trained by SVI (``Trace_ELBO``) on D.
For each erasure (a random 10 % of the rows, and a clustered or informative one: a shifted
cluster, a whole group, the rows of one input region) the benchmark retrains on D_r twice with
``pu.retrain`` (the reference, and a second seed for the retraining noise floor), unlearns with
``pu.forget`` at its defaults (``method="auto"``), and records KL(full ‖ retrained),
KL(unlearned ‖ retrained), the floor KL(retrained' ‖ retrained), the verdict, k̂, the KL
estimate, the update ESS fraction, the attempts and the seconds. Then it checks the acceptance
rule: with bound = max(½ KL(full ‖ retrained), floor), no case is ``"trusted"`` whose
KL(unlearned ‖ retrained) exceeds the bound, and no random erasure within the bound is
``"retrain"``. Violations are reported, never hidden.

Usage::

    .venv/bin/python benchmarks/bench_trust.py                       # all cases, ~10 min on 2 CPUs
    .venv/bin/python benchmarks/bench_trust.py --quick               # 3 models, fewer steps
    .venv/bin/python benchmarks/bench_trust.py --cases logistic hier_mvn --json /tmp/trust.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_unlearn as pu
from pyro_unlearn.experiments.machine import machine_info

RESULTS = "benchmarks/results/trust.json"
KL_SAMPLES = 4000  # Monte-Carlo draws of param_kl for guides without a closed form
PRED_SAMPLES = 200  # θ-draws per posterior predictive (and y-draws of its KL)


# -- the client models, as Pyro's tutorials write them ---------------------------------------------
class BayesianRegression(PyroModule):
    """Pyro's "Bayesian Regression - Introduction (Part 1)": ``PyroModule[nn.Linear]`` with
    ``PyroSample`` priors and a sampled noise scale."""

    def __init__(self, in_features: int, out_features: int = 1):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


class BNN(PyroModule):
    """A one-hidden-layer Bayesian neural network for 1-D regression, ``PyroSample`` weights,
    written to broadcast over a leading particle dimension."""

    def __init__(self, hidden: int = 8, noise: float = 0.2):
        super().__init__()
        self.noise = noise
        self.w1 = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.b1 = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.w2 = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.b2 = PyroSample(dist.Normal(0.0, 1.0))

    def forward(self, x, y=None):
        hidden = torch.tanh(x.unsqueeze(-1) * self.w1 + self.b1)  # (..., N, H)
        mean = (hidden * self.w2).sum(-1) + self.b2
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, self.noise), obs=y)


def logistic(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=(w * x).sum(-1) + b), obs=y)


NUM_GROUPS = 8


def hierarchical(group, x, y=None):
    """Radon-like varying intercepts: a_j ~ N(μ_a, σ_a), y ~ N(a_group + b x, σ_y)."""
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(3.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(2.0))
    with pyro.plate("groups", NUM_GROUPS):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(a[..., group] + b * x, sigma_y), obs=y)


BATCH = 100


def subsampled_regression(x, y):
    """Mini-batch SVI as Pyro's tutorials write it: the data plate subsamples."""
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x), subsample_size=BATCH) as idx:
        return pyro.sample("obs", dist.Normal(a + b * x[idx], 0.5), obs=y[idx])


def full_regression(x, y=None):
    """``subsampled_regression``'s likelihood on every row: its posterior predictive."""
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        return pyro.sample("obs", dist.Normal(a + b * x, 0.5), obs=y)


def poisson_glm(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 3.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Poisson(((w * x).sum(-1) + b).exp()), obs=y)


NOISE = 0.5
PRIOR_SCALE = 3.0


def conjugate(x, y=None):
    """Gaussian linear regression with known noise: p(θ|D) is Gaussian in closed form."""
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), PRIOR_SCALE).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, PRIOR_SCALE))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((w * x).sum(-1) + b, NOISE), obs=y)


def conjugate_exact(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p(w, b | x, y) as (loc, covariance), in the guide's order (w, b)."""
    features = torch.cat([x, torch.ones(len(x), 1)], dim=-1)
    prior_precision = torch.eye(features.shape[-1]) / PRIOR_SCALE**2
    loc, precision = pu.exact.gaussian_linear_posterior(
        torch.zeros(features.shape[-1]), prior_precision, features, y, NOISE
    )
    return loc, torch.linalg.inv(precision)


# -- the problems: data, guide, training and the two erasures --------------------------------------
@dataclass
class Problem:
    """A model, its guide, its data (every tensor's rows index the plate ``"data"``), how it is
    trained, and the rows of each erasure."""

    name: str
    model: Callable
    guide: Callable[[Callable], Callable]
    data: tuple[torch.Tensor, ...]
    erasures: dict[str, torch.Tensor]
    train_steps: int = 1500
    lr: float = 0.02
    particles: int = 8  # Trace_ELBO particles, vectorised (1: the model cannot take a plate)
    exact: Callable | None = None
    note: str = ""
    site: str = "y"  # the observed site, for the predictive yardstick
    heldout: tuple[torch.Tensor, ...] = ()  # held-out inputs (the data's tensors but y)
    predictive_model: Callable | None = None  # the model without subsampling, if it subsamples
    yardstick: str = "parameter"  # which KL the acceptance rule is judged on (see the README)
    guide_name: str = field(init=False, default="")


def random_rows(n: int, share: float, g: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=g)[: max(1, round(share * n))].sort().values


def build_problems(seed: int) -> dict[str, Problem]:
    """The nine problems, data drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    h = torch.Generator().manual_seed(seed + 10_000)  # held-out inputs: D's stream untouched
    fresh = lambda *s: torch.randn(*s, generator=h)  # noqa: E731
    problems: list[Problem] = []

    x = randn(200, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.5 * randn(200)
    y[:20] = x[:20] @ torch.tensor([2.0, -0.5, 0.5]) + 1.5 + 0.5 * randn(20)  # a shifted cluster
    problems.append(
        Problem(
            "pyromodule_linear",
            BayesianRegression(3),
            AutoNormal,
            (x, y),
            {"random": random_rows(200, 0.1, g), "cluster": torch.arange(20)},
            particles=1,
            note="PyroModule[nn.Linear]: no particle plate (vmap)",
            site="obs",
            heldout=(fresh(200, 3),),
        )
    )

    x = randn(400, 3)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.5, -1.0, 0.5]) + 0.3), generator=g)
    x[:32] = 0.3 * randn(32, 3) + torch.tensor([2.0, -2.0, 0.0])  # deep in class 1's region,
    y[:32] = 0.0  # labelled 0: a poisoned cluster
    erasures = {"random": random_rows(400, 0.1, g), "cluster": torch.arange(32)}
    problems.append(
        Problem(
            "logistic", logistic, AutoDiagonalNormal, (x, y), erasures, heldout=(fresh(400, 3),)
        )
    )

    intercepts = torch.tensor([4.0, -1.0, -0.5, 0.0, 0.2, 0.5, 1.0, -0.3])  # group 0: an outlier
    group = torch.arange(NUM_GROUPS).repeat_interleave(30)
    x = randn(len(group))
    y = intercepts[group] + 0.7 * x + 0.5 * randn(len(group))
    erasures = {"random": random_rows(len(group), 0.1, g), "group": torch.arange(30)}
    heldout = (torch.arange(NUM_GROUPS).repeat_interleave(10), fresh(10 * NUM_GROUPS))
    for name, guide in (("hier_meanfield", AutoNormal), ("hier_mvn", AutoMultivariateNormal)):
        problems.append(
            Problem(
                name,
                hierarchical,
                guide,
                (group, x, y),
                dict(erasures),
                train_steps=2500,
                heldout=heldout,
            )
        )

    x = 6.0 * torch.rand(200, generator=g) - 3.0
    y = torch.sin(x) + 0.2 * randn(200)
    region = torch.nonzero(x > 2.4).squeeze(-1)  # the rows of one input region
    erasures = {"random": random_rows(200, 0.1, g), "region": region}
    problems.append(
        Problem(
            "bnn",
            BNN(),
            AutoNormal,
            (x, y),
            erasures,
            train_steps=3000,
            site="obs",
            heldout=(6.0 * torch.rand(200, generator=h) - 3.0,),
            yardstick="predictive",  # hidden units permute and flip sign: θ is not identifiable
        )
    )

    x = torch.linspace(-1.0, 1.0, 1000)
    y = 1.0 + 2.0 * x + 0.5 * randn(1000)
    cluster = torch.nonzero((x > 0.6) & (x < 0.7)).squeeze(-1)
    y[cluster] += 2.0
    erasures = {"random": random_rows(1000, 0.05, g), "cluster": cluster}
    problems.append(
        Problem(
            "subsampled",
            subsampled_regression,
            AutoNormal,
            (x, y),
            erasures,
            train_steps=2000,
            note=f"subsample_size={BATCH} of 1000",
            site="obs",
            heldout=(2.0 * torch.rand(500, generator=h) - 1.0,),
            predictive_model=full_regression,
        )
    )

    x = 0.5 * randn(300, 2)
    y = torch.poisson((x @ torch.tensor([0.8, -0.5]) + 1.0).exp(), generator=g)
    y[:25] = torch.poisson(torch.full((25,), 25.0), generator=g)  # an outbreak: inflated counts
    x[:25] = 0.2 * randn(25, 2) + torch.tensor([1.0, 0.0])
    erasures = {"random": random_rows(300, 0.1, g), "cluster": torch.arange(25)}
    problems.append(
        Problem(
            "poisson",
            poisson_glm,
            AutoMultivariateNormal,
            (x, y),
            erasures,
            heldout=(0.5 * fresh(300, 2),),
        )
    )

    x = randn(200, 2)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([2.0, -1.0]) + 0.5), generator=g)
    x[:16] = 0.3 * randn(16, 2) + torch.tensor([1.5, -1.5])
    y[:16] = 0.0
    erasures = {"random": random_rows(200, 0.1, g), "cluster": torch.arange(16)}
    iaf = lambda model: AutoIAFNormal(model, hidden_dim=[16], num_transforms=2)  # noqa: E731
    problems.append(
        Problem("iaf_logistic", logistic, iaf, (x, y), erasures, lr=0.01, heldout=(fresh(200, 2),))
    )
    problems[-1].guide_name = "AutoIAFNormal"

    x = randn(200, 2)
    y = x @ torch.tensor([1.0, -2.0]) + 0.5 + NOISE * randn(200)
    x[:15] += 1.5
    y[:15] += 2.0  # a shifted, informative cluster
    erasures = {"random": random_rows(200, 0.1, g), "cluster": torch.arange(15)}
    problems.append(
        Problem(
            "conjugate",
            conjugate,
            AutoMultivariateNormal,
            (x, y),
            erasures,
            exact=conjugate_exact,
            heldout=(fresh(200, 2),),
        )
    )
    for p in problems:
        p.guide_name = p.guide_name or p.guide.__name__
    return {p.name: p for p in problems}


# -- one case --------------------------------------------------------------------------------------
def train(problem: Problem, steps: int, seed: int) -> tuple[Callable, pu.FrozenPosterior, float]:
    """q(θ|D) by Trace_ELBO, as the tutorials train it; returns the guide, its snapshot, seconds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = problem.guide(problem.model)
    vectorize = problem.particles > 1
    elbo = Trace_ELBO(
        num_particles=problem.particles,
        vectorize_particles=vectorize,
        max_plate_nesting=1 if vectorize else float("inf"),
    )
    optim = pyro.optim.ClippedAdam({"lr": problem.lr, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(problem.model, guide, optim, elbo)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*problem.data)
    return guide, pu.freeze(guide, *problem.data), time.perf_counter() - start


def kl(p, q, args) -> float:
    return float(pu.metrics.param_kl(p, q, *args, num_samples=KL_SAMPLES))


class Observations:
    """p(y|x, θ_s) at every input point for S draws θ_s ~ q: ``sample()`` one y per draw
    (S, N), ``log_prob(y)`` (J, N) → (J, S, N). Drawn in one plate where the model takes it,
    else one draw at a time (``PyroModule[nn.Linear]``)."""

    def __init__(self, problem: Problem, posterior, inputs: tuple, num: int):
        model = problem.predictive_model or problem.model
        with torch.no_grad(), poutine.block():
            if problem.particles > 1:
                plate = pyro.plate("_predictive", num, dim=-2)
                draw = poutine.trace(plate(posterior)).get_trace(*inputs)
                trace = poutine.trace(poutine.replay(plate(model), trace=draw)).get_trace(*inputs)
                self.fns = [trace.nodes[problem.site]["fn"]]
            else:
                self.fns = []
                for _ in range(num):
                    draw = poutine.trace(posterior).get_trace(*inputs)
                    trace = poutine.trace(poutine.replay(model, trace=draw)).get_trace(*inputs)
                    self.fns.append(trace.nodes[problem.site]["fn"])
        self.shape = (num, len(inputs[0]))

    def sample(self) -> torch.Tensor:
        if len(self.fns) == 1:
            return self.fns[0].sample().expand(self.shape)
        return torch.stack([fn.sample() for fn in self.fns])

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        if len(self.fns) == 1:
            return self.fns[0].log_prob(y.unsqueeze(1)).expand(len(y), *self.shape)
        return torch.stack([fn.log_prob(y) for fn in self.fns], dim=1)


def predictive_kl(problem: Problem, p, q, inputs: tuple) -> float:
    """KL(p(y|x) ‖ q(y|x)) between two posterior predictives, averaged over the input points:
    mean_j [log p̂(y_j|x) − log q̂(y_j|x)], y_j ~ p(y|x, θ_j), each predictive the mixture of
    ``PRED_SAMPLES`` draws (the papers' metric on any site: Normal, Bernoulli, Poisson)."""
    with torch.no_grad():
        ps = Observations(problem, p, inputs, PRED_SAMPLES)
        qs = Observations(problem, q, inputs, PRED_SAMPLES)
        y = ps.sample()
        log_p = ps.log_prob(y).logsumexp(1) - math.log(PRED_SAMPLES)
        log_q = qs.log_prob(y).logsumexp(1) - math.log(PRED_SAMPLES)
        return float((log_p - log_q).mean())


def finite(value):
    """NaN as ``None`` and ±inf as ``"inf"``/``"-inf"`` (strict JSON; k̂ = −∞ means q_u = p̃)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    return value


def run_case(
    problem: Problem,
    erasure: str,
    guide: Callable,
    full: pu.FrozenPosterior,
    seed: int,
    forget_options: dict | None = None,
    retrain_steps: int = 3000,
) -> dict:
    """Retrain twice, forget once from ``full`` (q(θ|D)), and measure; one JSON row."""
    rows = problem.erasures[erasure]
    n = len(problem.data[0])
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    kept = tuple(a[keep] for a in problem.data)
    args = problem.data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        references = []
        for offset in (1, 2):  # the reference, and a second seed for the noise floor
            pyro.set_rng_seed(seed + offset)
            start, cpu = time.perf_counter(), time.process_time()
            ref = pu.retrain(problem.model, guide, *kept, num_steps=retrain_steps, progress=False)
            references.append((ref, time.perf_counter() - start, time.process_time() - cpu))
        pyro.set_rng_seed(seed + 3)
        start, cpu = time.perf_counter(), time.process_time()
        result = pu.forget(
            problem.model,
            guide,
            *args,
            erased=rows,
            plate="data",
            posterior=full,
            progress=False,
            **(forget_options or {}),
        )
        forget_wall, forget_cpu = time.perf_counter() - start, time.process_time() - cpu
        (ref, retrain_wall, retrain_cpu), (ref2, _, _) = references
        kl_full = kl(full, ref.posterior, args)
        kl_unlearned = kl(result.posterior, ref.posterior, args)
        floor = kl(ref2.posterior, ref.posterior, args)
        predictive = predictive_record(problem, rows, full, result.posterior, ref, ref2)
    trust = result.trust
    bound = max(0.5 * kl_full, floor)
    record = {
        "model": problem.name,
        "guide": problem.guide_name,
        "erasure": erasure,
        "kind": "random" if erasure == "random" else "clustered",
        "note": problem.note,
        "n": n,
        "n_erased": len(rows),
        "kl_full": kl_full,
        "kl_unlearned": kl_unlearned,
        "noise_floor": floor,
        "bound": bound,
        "unlearned_well": kl_unlearned <= bound,
        "verdict": result.verdict,
        "summary": result.summary(),
        "pareto_k": trust.pareto_k if trust else None,
        "kl_estimate": trust.kl if trust else None,
        "kl_se": trust.kl_se if trust else None,
        "update_kl": trust.update_kl if trust else None,
        "update_ess_fraction": trust.update_ess_fraction if trust else None,
        "update_pareto_k": trust.update_pareto_k if trust else None,
        "fit_pareto_k": trust.fit_pareto_k if trust else None,
        "fit_kl": trust.fit_kl if trust else None,
        "yardstick": problem.yardstick,
        **predictive,
        "method": result.method,
        "loss_options": result.loss_options,
        "particles": result.particles,
        "converged": result.converged,
        "collapsed": result.collapsed,
        "lam": result.lam,
        "attempts": [{k: finite(v) for k, v in row.items()} for row in result.attempts],
        "forget_seconds": result.seconds,
        "forget_wall_seconds": forget_wall,  # with the diagnosis of every attempt
        "forget_cpu_seconds": forget_cpu,
        "retrain_seconds": ref.seconds,
        "retrain_wall_seconds": retrain_wall,
        "retrain_cpu_seconds": retrain_cpu,
        "retrain_steps": len(ref.losses),
        "retrain_converged": ref.converged,
        "warnings": sorted({type(w.message).__name__ for w in caught}),
    }
    if problem.exact is not None:  # the truth itself, beside retraining
        loc_r, cov_r = problem.exact(*kept)
        for name, post in (
            ("full", full),
            ("unlearned", result.posterior),
            ("retrained", ref.posterior),
        ):
            loc, cov = pu.guides.read_gaussian(post)
            record[f"exact_kl_{name}"] = float(pu.metrics.gaussian_kl(loc, cov, loc_r, cov_r))
    record.update(rule_violations(record))
    return {key: finite(value) for key, value in record.items()}


def predictive_record(problem: Problem, rows, full, unlearned, ref, ref2) -> dict:
    """The predictive yardstick: KL(retrained ‖ ·) between posterior predictives on the inputs
    of D_e and on held-out inputs, for q(θ|D) (full), the unlearned posterior and a second
    retraining (the floor); unlearned well when within max(½ full, floor) on both."""
    inputs = problem.data[:-1]
    sets = {"erased": tuple(a[rows] for a in inputs), "heldout": problem.heldout}
    record, well = {}, True
    for where, x in sets.items():
        values = {
            name: predictive_kl(problem, ref.posterior, post, x)
            for name, post in (("full", full), ("unlearned", unlearned), ("floor", ref2.posterior))
        }
        for name, value in values.items():
            record[f"pred_kl_{name}_{where}"] = value
        well = well and values["unlearned"] <= max(0.5 * values["full"], values["floor"])
    record["pred_unlearned_well"] = well
    return record


def rule_violations(record: dict) -> dict:
    """The acceptance rule on one record, on each yardstick (parameter, predictive):
    ``trusted_too_far`` (trusted, yet KL to retrained above the bound) and
    ``retrain_when_good`` (a random erasure within the bound marked retrain); ``rule_ok`` on
    the case's own yardstick."""
    out = {}
    for name, well in (("param", "unlearned_well"), ("pred", "pred_unlearned_well")):
        too_far = record["verdict"] == "trusted" and not record[well]
        when_good = record["kind"] == "random" and record[well] and record["verdict"] == "retrain"
        out[f"{name}_trusted_too_far"], out[f"{name}_retrain_when_good"] = too_far, when_good
        out[f"{name}_rule_ok"] = not (too_far or when_good)
    key = "pred" if record["yardstick"] == "predictive" else "param"
    out["trusted_too_far"] = out[f"{key}_trusted_too_far"]
    out["retrain_when_good"] = out[f"{key}_retrain_when_good"]
    out["rule_ok"] = out[f"{key}_rule_ok"]
    return out


# -- the table -------------------------------------------------------------------------------------
def fmt(value, spec: str = ".3g") -> str:
    if isinstance(value, str):  # "inf", "-inf"
        return value.replace("inf", "∞").replace("-", "−")
    return "–" if value is None else format(value, spec)


def attempts_cell(record: dict) -> str:
    short = {"reverse KL": "rKL", "annealed reverse KL": "annealed", "EUBO": "EUBO"}
    cells = []
    for row in record["attempts"]:
        label = short.get(row["label"], row["label"])
        verdict = row["verdict"] or ("error" if row.get("error") else "–")
        text = f"{label}: {verdict}"
        cells.append(f"**{text}**" if row.get("chosen") else text)
    return " → ".join(cells) or record["method"]


def rule_cell(record: dict, key: str) -> str:
    if record[f"{key}_rule_ok"]:
        return "ok"
    return "**trusted, too far**" if record[f"{key}_trusted_too_far"] else "**retrain, good**"


def markdown_table(records: list[dict]) -> str:
    lines = [
        "| model | guide | erasure | \\|D_e\\|/\\|D\\| | KL full | KL unlearned | floor "
        "| pred. KL on D_e: full / unl. / floor | held-out: full / unl. / floor | verdict "
        "| k̂ | KL est. (q(θ\\|D)'s) | update ESS | q(θ\\|D)'s k̂ "
        "| attempts (kept in bold) | forget s (CPU) | retrain s (CPU) "
        "| rule: param. / pred. |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in records:
        ess = r["update_ess_fraction"]
        rules = [rule_cell(r, "param"), rule_cell(r, "pred")]
        rules[r["yardstick"] == "predictive"] += " †"  # the yardstick that counts
        pred = [
            " / ".join(fmt(r[f"pred_kl_{n}_{w}"], ".2g") for n in ("full", "unlearned", "floor"))
            for w in ("erased", "heldout")
        ]
        lines.append(
            f"| {r['model']} | {r['guide']} | {r['erasure']} | {r['n_erased']}/{r['n']} "
            f"| {fmt(r['kl_full'])} | {fmt(r['kl_unlearned'])} | {fmt(r['noise_floor'], '.2g')} "
            f"| {pred[0]} | {pred[1]} "
            f"| {r['verdict'] or 'none'} | {fmt(r['pareto_k'], '.2f')} "
            f"| {fmt(r['kl_estimate'])} ({fmt(r['update_kl'])}) "
            f"| {'–' if ess is None else f'{100 * ess:.2g} %'} | {fmt(r['fit_pareto_k'], '.2f')} "
            f"| {attempts_cell(r)} "
            f"| {r['forget_seconds']:.1f} ({r['forget_cpu_seconds']:.1f}) "
            f"| {r['retrain_seconds']:.1f} ({r['retrain_cpu_seconds']:.1f}) "
            f"| {rules[0]} / {rules[1]} |"
        )
    return "\n".join(lines)


def acceptance_report(records: list[dict]) -> str:
    bad = [r for r in records if not r["rule_ok"]]
    head = (
        f"acceptance rule (bound = max(½ KL(full‖retrained), floor), on each case's yardstick): "
        f"{len(records) - len(bad)} of {len(records)} cases hold"
    )
    for key, name in (("param", "parameter"), ("pred", "predictive")):
        held = sum(r[f"{key}_rule_ok"] for r in records)
        head += f"; on the {name} KL alone {held} of {len(records)}"
    lines = [head]
    for r in bad:
        why = (
            "trusted but KL > bound"
            if r["trusted_too_far"]
            else "random erasure within bound marked retrain"
        )
        lines.append(
            f"  VIOLATION {r['model']}/{r['erasure']} ({r['yardstick']}): {why} "
            f"(KL unlearned {r['kl_unlearned']:.3g}, "
            f"bound {r['bound']:.3g}, full {r['kl_full']:.3g}, floor {r['noise_floor']:.2g}; "
            f"update ESS {fmt(r['update_ess_fraction'], '.2%')}, k̂ {fmt(r['pareto_k'], '.2f')})"
        )
    return "\n".join(lines)


def progress_line(r: dict) -> str:
    return (
        f"KL full {r['kl_full']:.3g}, unlearned {r['kl_unlearned']:.3g}, floor "
        f"{r['noise_floor']:.2g}; predictive on D_e {r['pred_kl_full_erased']:.2g}, "
        f"{r['pred_kl_unlearned_erased']:.2g}, {r['pred_kl_floor_erased']:.2g} "
        f"-> {r['verdict']} ({'ok' if r['rule_ok'] else 'VIOLATION'}; "
        f"forget {r['forget_seconds']:.1f} s, retrain {r['retrain_seconds']:.1f} s)"
    )


# -- main ------------------------------------------------------------------------------------------
QUICK_CASES = ("logistic", "hier_mvn", "conjugate")


def code_state() -> dict:
    """The commit and the library files changed since it (timings and verdicts depend on both)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "pyro_unlearn").splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed": [c[3:] for c in changed],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", help="models to run (default: all; --quick: three)")
    p.add_argument("--erasures", nargs="+", help="erasure names to run (default: both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave it)")
    p.add_argument("--retrain-steps", type=int, default=3000, help="pu.retrain's num_steps")
    p.add_argument(
        "--json", metavar="PATH", default=None, help=f"write the records (default {RESULTS})"
    )
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown table here")
    p.add_argument("--quick", action="store_true", help="three models, a fifth of the steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    pyro.enable_validation(True)
    info = machine_info("cpu", torch.get_default_dtype())
    info["code"] = code_state()
    problems = build_problems(opts.seed)
    names = opts.cases or (QUICK_CASES if opts.quick else tuple(problems))
    unknown = sorted(set(names) - set(problems))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {sorted(problems)}")
    forget_options = {"num_steps": 400, "window": 50} if opts.quick else {}
    retrain_steps = 600 if opts.quick else opts.retrain_steps
    records, start, cpu = [], time.perf_counter(), time.process_time()
    for name in names:
        problem = problems[name]
        steps = problem.train_steps // 5 if opts.quick else problem.train_steps
        guide, full, seconds = train(problem, steps, opts.seed)
        print(
            f"{name}: trained {problem.guide_name} ({steps} steps, {seconds:.1f} s)",
            file=sys.stderr,
        )
        for erasure in problem.erasures:
            if opts.erasures and erasure not in opts.erasures:
                continue
            record = run_case(
                problem, erasure, guide, full, opts.seed, forget_options, retrain_steps
            )
            record["train_seconds"] = seconds
            records.append(record)
            print(f"  {erasure}: {progress_line(record)}", file=sys.stderr)
    info["seconds_total"] = time.perf_counter() - start
    info["cpu_seconds_total"] = time.process_time() - cpu
    print(markdown_table(records))
    print()
    print(acceptance_report(records))
    path = opts.json or (None if opts.quick or opts.cases else RESULTS)
    if path:
        with open(path, "w") as f:
            json.dump({"machine": info, "options": vars(opts), "records": records}, f, indent=2)
        print(f"wrote {path}", file=sys.stderr)
    if opts.markdown:
        with open(opts.markdown, "w") as f:
            f.write(markdown_table(records) + "\n\n" + acceptance_report(records) + "\n")
    return records


if __name__ == "__main__":
    main()
