"""Seconds per evaluation of log p(D_e|θ) for S draws through Pyro's handlers (traced) and as a
recording of the model (``pu.infer.erased_log_likelihood_fn``, fused), against a hand-written
pure-torch floor; an SVI step of the losses for scale; and, on the moons (sorted erasure,
λ = 0), ``gaussian_reverse_kl`` (fused and traced) against the SGD reverse KL of the
reproduction's demo and full settings, at the averaged predictive KL on D_e to the exact
Gaussian-VI optimum on D_r (what retraining converges to; ``*`` in the table).

Everything runs in one process, the timings interleaved over ``--repeats`` rounds (medians).

Usage::

    .venv/bin/python benchmarks/bench_fused.py              # ~2-3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_fused.py --repeats 1 --json results/fused.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal  # not the moons guide's AutoMultivariateNormal names

import pyro_unlearn as pu
from pyro_unlearn.experiments.datasets import linear_regression, moons
from pyro_unlearn.experiments.linear_regression import linear_model
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.experiments.moons import SparseGPClassifier, exact_optimum, train_full_posterior
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.infer import erased_log_likelihood_fn, gaussian_reverse_kl
from pyro_unlearn.metrics import mean_and_std, predictive_kl

S = 1000


def per_call(fn, *inputs, n: int = 200) -> float:
    """Median ms of ``fn(*inputs)`` over 5 blocks of n/5 calls."""
    for _ in range(5):
        fn(*inputs)
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n // 5):
            fn(*inputs)
        blocks.append((time.perf_counter() - start) / (n // 5) * 1e3)
    return statistics.median(blocks)


def fixed_gaussian(loc, cov):
    q = dist.MultivariateNormal(loc, covariance_matrix=cov)
    return lambda *args, **kwargs: pyro.sample("u", q)


def moons_setup():
    data = moons()
    model = SparseGPClassifier(data.inducing)
    pyro.clear_param_store()
    guide, _ = train_full_posterior(model, data.x, data.y)
    loc, cov = (t.clone() for t in read_gaussian(guide))
    x_r, y_r = data.x[data.remaining], data.y[data.remaining]
    target = fixed_gaussian(*exact_optimum(model, x_r, y_r, loc, cov))
    return data, model, guide, target


def likelihood_rows(data, model, guide) -> dict[str, dict[str, float]]:
    """ms per evaluation for S draws: traced, fused, floor, and an SVI step of each loss."""
    rows = {}
    x_e, y_e = data.x[data.erased], data.y[data.erased]
    posterior = pu.freeze(guide, x_e, y_e)
    fn = erased_log_likelihood_fn(model, posterior, x_e, y_e)
    u = dist.MultivariateNormal(*read_gaussian(guide)).sample((S,))  # u ~ q(u|D)
    proj = model.projection(x_e)

    def floor(u):
        logits = u @ proj.mT
        return -F.binary_cross_entropy_with_logits(
            logits, y_e.expand_as(logits), reduction="none"
        ).sum(-1)

    assert torch.allclose(fn({"u": u}), floor(u)) and fn.fused
    rows["moons (|D_e| = 20)"] = {
        "traced": per_call(fn.traced, {"u": u}),
        "fused": per_call(fn, {"u": u}),
        "floor": per_call(floor, u),
    }
    for name, loss in (("ReverseKL", pu.ReverseKL), ("Trace_EUBO", pu.Trace_EUBO)):
        svi = SVI(
            pu.unlearn(model),
            guide,
            pyro.optim.Adam({"lr": 1e-4}),
            loss(posterior, num_particles=S, vectorize_particles=True, max_plate_nesting=1),
        )
        with pyro.validation_enabled(False):
            rows["moons (|D_e| = 20)"][f"{name} step"] = per_call(svi.step, x_e, y_e, n=100)
    posterior.restore(guide)

    lin = linear_regression(num_erased=10, shift=0.5)
    lin_guide = AutoNormal(lambda x, y=None: linear_model(x, y, lin.noise_scale))
    lin_guide(lin.x, lin.y)
    lin_fn = erased_log_likelihood_fn(
        lambda x, y=None: linear_model(x, y, lin.noise_scale),
        pu.freeze(lin_guide),
        lin.x,
        lin.y,
        erased=lin.erased,
        plate="data",
    )
    values = {"w": torch.randn(S, 2), "b": torch.randn(S)}
    x_le, y_le = lin.x[lin.erased], lin.y[lin.erased]

    def lin_floor(values):
        mean = values["w"] @ x_le.mT + values["b"][:, None]
        return dist.Normal(mean, lin.noise_scale).log_prob(y_le).sum(-1)

    assert torch.allclose(lin_fn(values), lin_floor(values), atol=1e-3) and lin_fn.fused
    rows["linear regression (N = 100, 10 erased rows)"] = {
        "traced": per_call(lin_fn.traced, values),
        "fused": per_call(lin_fn, values),
        "floor": per_call(lin_floor, values),
    }
    return rows


def kl_on_erased(model, data, target, posterior) -> float:
    kl = predictive_kl(model, target, posterior, data.x[data.erased], site="y", num_samples=20_000)
    return mean_and_std(kl)[0]


def unlearning_rows(data, model, guide, target, seed: int) -> dict[str, dict[str, float]]:
    """Seconds and averaged KL on D_e of each unlearning run, from q(u|D)."""
    x_e, y_e = data.x[data.erased], data.y[data.erased]
    posterior = pu.freeze(guide, x_e, y_e)
    rows = {"full (q(u|D))": {"s": 0.0, "kl_e": kl_on_erased(model, data, target, posterior)}}
    common = dict(posterior=posterior, progress=False, diagnose=False)
    moments = (("moments, S = 1000", 1000, True), ("moments, S = 4000", 4000, True))
    for label, draws, jit in (*moments, ("moments, S = 4000, traced", 4000, False)):
        pyro.set_rng_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pu.LowESSWarning)  # recorded as "collapsed"
            result = gaussian_reverse_kl(
                model, guide, x_e, y_e, num_samples=draws, jit=jit, **common
            )
        rows[label] = {
            "s": result.seconds,
            "kl_e": kl_on_erased(model, data, target, result.posterior),
            "steps": result.num_steps,
            "collapsed": float(result.collapsed),
        }
    for label, steps, particles in (("SGD, demo", 600, 512), ("SGD, full run", 3000, 1000)):
        pyro.set_rng_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pu.LowESSWarning)
            result = pu.forget(
                model,
                guide,
                x_e,
                y_e,
                method="rkl",
                num_particles=particles,
                num_steps=steps,
                window=steps // 2,
                lr=0.1,
                max_plate_nesting=1,
                **common,
            )
        rows[label] = {
            "s": result.seconds,
            "kl_e": kl_on_erased(model, data, target, result.posterior),
            "steps": result.num_steps,
        }
    posterior.restore(guide)
    return rows


def median_rows(runs: list[dict]) -> dict:
    return {
        name: {k: statistics.median(r[name][k] for r in runs) for k in runs[0][name]}
        for name in runs[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_info("cpu", torch.float64)
    data, model, guide, target = moons_setup()
    calls, runs = [], []
    for seed in range(args.repeats):
        calls.append(likelihood_rows(data, model, guide))
        runs.append(unlearning_rows(data, model, guide, target, seed))
    calls, runs = median_rows(calls), median_rows(runs)
    print(machine)
    print(f"\nms per evaluation of log p(D_e|θ) for S = {S} draws (float64, 1 thread)\n")
    print("| model | traced | fused | floor | traced/fused | fused/floor | SVI step: rKL | EUBO |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in calls.items():
        steps = [f"{r[k]:.2f}" if k in r else "" for k in ("ReverseKL step", "Trace_EUBO step")]
        print(
            f"| {name} | {r['traced']:.3f} | {r['fused']:.3f} | {r['floor']:.3f} | "
            f"{r['traced'] / r['fused']:.1f}× | {r['fused'] / r['floor']:.1f}× | "
            f"{' | '.join(steps)} |"
        )
    print("\nmoons, sorted erasure, rKL at λ = 0: seconds and averaged KL on D_e to q(u|D_r)*\n")
    print("| run | steps | seconds | KL on D_e | weights collapsed |")
    print("|---|---:|---:|---:|---|")
    for name, r in runs.items():
        collapsed = {None: "", 0.0: "no", 1.0: "yes"}.get(r.get("collapsed"), "some")
        print(
            f"| {name} | {r.get('steps', 0):.0f} | {r['s']:.2f} | {r['kl_e']:.4f} | {collapsed} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "calls": calls, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
