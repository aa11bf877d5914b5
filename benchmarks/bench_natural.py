"""Seconds and accuracy of ``gaussian_reverse_kl`` (moment matching) against ``pu.forget``'s
SGD reverse KL on the conjugate linear regression, where the unlearned target is known exactly.

Two erasures of y = x·w + b + N(0, 0.5²) (100 rows, 2 features, q(θ|D) the exact p(θ|D) in an
AutoMultivariateNormal, so that p̃ = q(θ|D)/p(D_e|θ) is the exact p(θ|D_r)):

* ``cluster``: the first 10 rows shifted by 0.5 (KL(q(θ|D) ‖ p̃) ≈ 1): the paper's proposal,
  ``forget(method="rkl")`` with its defaults against ``gaussian_reverse_kl()`` with its own;
* ``poisoned``: 20 rows shifted by 3 (≈ 40 nats): the paper's proposal collapses, so both run
  from the current guide with annealing (``proposal="current", anneal=0.5``).

Each row is the median over ``--repeats`` seeds, the two methods interleaved in one process;
the ratio is SGD seconds over moment-matching seconds. KL is KL(q_u ‖ exact p(θ|D_r)).

Usage::

    .venv/bin/python benchmarks/bench_natural.py            # ~1-2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_natural.py --repeats 1 --json results/natural.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings

import pyro
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.linear_regression import linear_model
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.infer import gaussian_reverse_kl
from pyro_unlearn.metrics import gaussian_kl

ERASURES = {"cluster": dict(num_erased=10, shift=0.5), "poisoned": dict(num_erased=20, shift=3.0)}


def setup(name: str):
    data = linear_regression(**ERASURES[name])

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
    return data, model, guide, exact(keep)


def one(name: str, seed: int) -> dict[str, float]:
    data, model, guide, target = setup(name)
    posterior = pu.freeze(guide)
    annealed = {"proposal": "current", "anneal": 0.5} if name == "poisoned" else {}
    common = dict(erased=data.erased, plate="data", progress=False, diagnose=False)
    row = {"full": float(gaussian_kl(*read_gaussian(posterior), *target))}
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pu.LowESSWarning)
        sgd = pu.forget(
            model, guide, data.x, data.y, method="rkl", loss_options=annealed or None, **common
        )
    row["sgd_kl"] = float(gaussian_kl(*read_gaussian(sgd.posterior), *target))
    row["sgd_s"], row["sgd_steps"] = sgd.seconds, sgd.num_steps
    pyro.set_rng_seed(seed)
    nat = gaussian_reverse_kl(
        model, guide, data.x, data.y, posterior=posterior, **annealed, **common
    )
    row["nat_kl"] = float(gaussian_kl(*read_gaussian(nat.posterior), *target))
    row["nat_s"], row["nat_steps"] = nat.seconds, nat.num_steps
    row["nat_converged"] = nat.converged
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_info("cpu", torch.get_default_dtype())
    table = {}
    for name in ERASURES:
        rows = [one(name, seed) for seed in range(args.repeats)]
        med = {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]}
        med["ratio"] = statistics.median(r["sgd_s"] / r["nat_s"] for r in rows)
        table[name] = med
    print(machine)
    print(
        "| erasure | full: KL | SGD rKL: KL | steps | s | moments: KL | steps | s | SGD / moments |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in table.items():
        print(
            f"| {name} | {m['full']:.3g} | {m['sgd_kl']:.3g} | {m['sgd_steps']:.0f} | "
            f"{m['sgd_s']:.2f} | {m['nat_kl']:.2g} | {m['nat_steps']:.0f} | {m['nat_s']:.2f} | "
            f"**{m['ratio']:.0f}×** |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
