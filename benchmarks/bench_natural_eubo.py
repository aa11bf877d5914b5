"""Seconds and accuracy of ``gaussian_eubo`` (natural-gradient steps) against ``pu.forget``'s SGD
EUBO on a conjugate linear regression and two logistic regressions.

* ``regression``: y = x·w + b + N(0, 0.5²), 100 rows, the first 10 shifted by 0.5 and erased;
  q(θ|D) is the exact p(θ|D) in an AutoMultivariateNormal, so the EUBO's optimum is the exact
  p(θ|D_r) (the reference);
* ``logistic-3``: 200 rows, 2 features and a bias, 30 rows erased;
* ``logistic-21``: 2000 rows, 20 features and a bias, 200 rows erased.

The logistic q(θ|D) is an AutoMultivariateNormal fitted by ``Trace_ELBO`` (not timed); their
reference is ``gaussian_eubo`` with S = 20 000 draws per step. Columns: KL(q_u ‖ reference) in
closed form, and U(q_u) − U(reference), the EUBO's excess (= the excess of KL(q_u ‖ p̃), the
objective both paths minimise), estimated with 100 000 common draws. Both methods run with their
defaults (SGD: ``forget(method="eubo")``, 64 particles, Adam, its flatness rule; natural: S =
256, ρ = 0.5, W = 10), interleaved in one process; ``s`` is wall time, ``cpu`` the process's
CPU time; the ratio is SGD wall seconds over natural wall seconds, median over ``--repeats``.

Usage::

    .venv/bin/python benchmarks/bench_natural_eubo.py            # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_natural_eubo.py --repeats 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.linear_regression import linear_model
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.guides import latent_layout, read_gaussian, write_gaussian
from pyro_unlearn.infer import erased_log_likelihood_fn, gaussian_eubo
from pyro_unlearn.metrics import gaussian_kl


def logistic_model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=(w * x).sum(-1) + b), obs=y)


def regression():
    data = linear_regression(num_erased=10, shift=0.5)

    def model(x, y=None):
        return linear_model(x, y, data.noise_scale)

    def exact(keep):
        features = torch.cat([data.x[keep], torch.ones(int(keep.sum()), 1)], -1)
        loc, precision = gaussian_linear_posterior(
            torch.zeros(3), torch.eye(3) / 100.0, features, data.y[keep], data.noise_scale
        )
        return loc, torch.linalg.inv(precision)

    keep = torch.ones(len(data.x), dtype=torch.bool)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(model)
    guide(data.x, data.y)
    write_gaussian(guide, *exact(keep))
    keep[data.erased] = False
    return model, guide, (data.x, data.y), data.erased, exact(keep)


def logistic(num_rows: int, num_features: int, num_erased: int):
    generator = torch.Generator().manual_seed(num_features)
    x = torch.randn(num_rows, num_features, generator=generator)
    w = torch.randn(num_features, generator=generator)
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.3), generator=generator)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(logistic_model)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / 2000)})
    svi = SVI(logistic_model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(2000):
        svi.step(x, y)
    erased = torch.arange(num_erased)
    common = dict(erased=erased, plate="data", progress=False, diagnose=False)
    ref = gaussian_eubo(logistic_model, guide, x, y, num_samples=20_000, num_steps=200, **common)
    reference = tuple(t.clone() for t in read_gaussian(ref.posterior))
    write_gaussian(guide, *read_gaussian(ref.original))
    return logistic_model, guide, (x, y), erased, reference


PROBLEMS = {
    "regression": regression,
    "logistic-3": lambda: logistic(200, 2, 30),
    "logistic-21": lambda: logistic(2000, 20, 200),
}


def eubo(model, posterior, data, erased, moments, num_draws=100_000, chunk=1000) -> float:
    """U(q) = E_q[log p(D_e|θ)] + KL(q ‖ q(θ|D)) with common draws (seed 0) for every q."""
    fn = erased_log_likelihood_fn(model, posterior, *data, erased=erased, plate="data")
    layout = latent_layout(posterior)
    loc, cov = moments
    eps = torch.randn(num_draws, loc.numel(), generator=torch.Generator().manual_seed(0))
    theta = loc + eps @ torch.linalg.cholesky(cov).mT
    total = 0.0
    with torch.no_grad():
        for part in theta.split(chunk):  # (chunk, |D|) logits at a time
            values = {
                s.name: s.transform(part[:, s.start : s.stop].reshape(len(part), *s.shape))
                for s in layout.sites
            }
            total += float(fn(values).sum())
    return total / num_draws + float(gaussian_kl(loc, cov, *read_gaussian(posterior)))


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def one(problem, posterior, seed: int) -> dict[str, float]:
    """Both methods from the same q(θ|D) (``posterior``: each run starts from it)."""
    model, guide, data, erased, reference = problem
    common = dict(erased=erased, plate="data", posterior=posterior, progress=False, diagnose=False)
    row = {}
    u_ref = eubo(model, posterior, data, erased, reference)
    for name, run in (
        ("sgd", lambda: pu.forget(model, guide, *data, method="eubo", **common)),
        ("nat", lambda: gaussian_eubo(model, guide, *data, **common)),
    ):
        pyro.set_rng_seed(seed)
        result, wall, cpu = timed(run)
        moments = tuple(t.clone() for t in read_gaussian(result.posterior))
        row[f"{name}_kl"] = float(gaussian_kl(*moments, *reference))
        row[f"{name}_du"] = eubo(model, posterior, data, erased, moments) - u_ref
        row[f"{name}_s"], row[f"{name}_cpu"], row[f"{name}_steps"] = wall, cpu, result.num_steps
    row["full_kl"] = float(gaussian_kl(*read_gaussian(posterior), *reference))
    row["ratio"] = row["sgd_s"] / row["nat_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_info("cpu", torch.get_default_dtype())
    table = {}
    for name, make in PROBLEMS.items():
        problem = make()
        print(name, "set up", flush=True)
        posterior = pu.freeze(problem[1])  # q(θ|D), frozen once: every run starts from it
        rows = [one(problem, posterior, seed) for seed in range(args.repeats)]
        table[name] = {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]}
    print(machine)
    print(
        "| problem | full: KL | SGD: KL | ΔU | steps | s | cpu | natural: KL | ΔU | steps | s | "
        "cpu | SGD / natural |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in table.items():
        print(
            f"| {name} | {m['full_kl']:.3g} | {m['sgd_kl']:.2g} | {m['sgd_du']:.2g} | "
            f"{m['sgd_steps']:.0f} | {m['sgd_s']:.2f} | {m['sgd_cpu']:.2f} | {m['nat_kl']:.2g} | "
            f"{m['nat_du']:.2g} | {m['nat_steps']:.0f} | {m['nat_s']:.2f} | {m['nat_cpu']:.2f} | "
            f"**{m['ratio']:.0f}×** |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
