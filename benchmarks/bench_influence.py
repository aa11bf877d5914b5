"""BIF (influence-function forgetting) against the EUBO route and retraining, as |D_r| grows.

Conjugate Bayesian linear regression (``pyro_unlearn.experiments.datasets.linear_regression``: 2
features, noise 0.5, an informative erased cluster of ``--num-erased`` rows; ``linear_model``'s N(0,
10²) prior), |D_e| fixed and |D_r| growing. At every size the guide is an ``AutoMultivariateNormal``
set to the **exact** p(θ|D), so every method starts from the same, exact q(θ|D) and the exact
p(θ|D_r) is the target of all of them (with λ = 0 the EUBO's optimum is exactly p(θ|D_r) too). Timed
in one process, on the same device:

* ``bif``: ``pu.influence_unlearn`` (one Newton step, CG, ``--particles`` antithetic particles),
  D_r as one tuple (``--batch-size B``: mini-batches of B through a subsampling data plate,
  ``retain_graph=False``, so memory stays at one mini-batch);
* ``eubo``: ``pu.forget(..., method="eubo", lam=0)``: SVI with ``pu.Trace_EUBO`` on D_e only,
  until the loss is flat (``pu.forget``'s rule; at most ``--svi-steps``);
* ``finetune``: ``pu.retrain(..., init="posterior")``, Trace_ELBO on D_r from q(θ|D);
* ``retrain``: ``pu.retrain(..., init="prior")``, Trace_ELBO on D_r from the guide's
  initialisation (retraining from scratch).

Quality: the relative distance of each result's mean to the exact D_r posterior mean,
‖μ − μ_r‖ / ‖μ_r‖, and KL(q ‖ p(θ|D_r)); ``none`` is q(θ|D) itself (no unlearning).

    python benchmarks/bench_influence.py                  # |D_r| = 90 ... 90 000, CPU
    python benchmarks/bench_influence.py --quick          # two small sizes, a few seconds
    python benchmarks/bench_influence.py --device cuda --sizes 9e4 9e5 --json /tmp/bif.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.infer.influence import influence_unlearn
from pyro_unlearn.metrics import gaussian_kl

METHODS = ("none", "bif", "eubo", "finetune", "retrain")
NOISE = 0.5


def model(x, y=None, idx=None, size=None):
    """``linear_model`` (N(0, 10²) priors, y ~ N(x·w + b, 0.5²)) with an optional subsampling
    data plate: a mini-batch is (x_b, y_b, idx_b, |D_r|)."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, 10.0).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(zero, 10.0))
    with pyro.plate("data", size or x.shape[0], subsample=idx):
        return pyro.sample("y", dist.Normal((w * x).sum(-1) + b, NOISE), obs=y)


def exact(x, y):
    """p(θ|x, y) as (loc, covariance) over the packed (w, b)."""
    features = torch.cat([x, x.new_ones(len(x), 1)], dim=-1)
    dim = features.shape[-1]
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    loc, precision = gaussian_linear_posterior(x.new_zeros(dim), eye / 100.0, features, y, NOISE)
    return loc, torch.linalg.inv(precision)


def exact_guide(x, y, loc, cov) -> AutoMultivariateNormal:
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    chol = torch.linalg.cholesky(cov)
    with torch.no_grad():
        guide.loc.copy_(loc)
    guide.scale = chol.diagonal().clone()
    guide.scale_tril = (chol / chol.diagonal()[:, None]).clone()
    return guide


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_size(num_remaining: int, opts, device, dtype) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(opts.seed)
    data = linear_regression(
        num_data=num_remaining + opts.num_erased,
        num_erased=opts.num_erased,
        seed=opts.seed,
        device=device,
        dtype=dtype,
    )
    keep = data.remaining
    x_r, y_r = data.x[keep], data.y[keep]
    x_e, y_e = data.x[data.erased], data.y[data.erased]
    target_loc, target_cov = exact(x_r, y_r)
    guide = exact_guide(data.x, data.y, *exact(data.x, data.y))
    posterior = pu.freeze(guide)

    def quality(loc, cov) -> dict:
        distance = torch.linalg.vector_norm(loc - target_loc) / torch.linalg.vector_norm(target_loc)
        return {
            "distance": float(distance),
            "kl": float(gaussian_kl(loc, cov, target_loc, target_cov)),
        }

    row: dict = {"num_remaining": num_remaining, "num_erased": opts.num_erased}
    row["none"] = {"seconds": 0.0, **quality(*read_gaussian(posterior))}
    if "bif" in opts.methods:
        row["bif"] = run_bif(guide, x_r, y_r, x_e, y_e, opts, device, quality)
    common = dict(num_steps=opts.svi_steps, progress=False)
    if "eubo" in opts.methods:
        sync(device)
        eubo = pu.forget(
            model,
            guide,
            x_e,
            y_e,
            method="eubo",
            lam=0.0,
            posterior=posterior,
            num_particles=opts.particles,
            lr=opts.lr,
            **common,
        )
        sync(device)
        row["eubo"] = {
            "seconds": eubo.seconds,
            "svi_steps": eubo.num_steps,
            "converged": eubo.converged,
            **quality(*read_gaussian(guide)),
        }
        posterior.restore(guide)
    for name, init in (("finetune", "posterior"), ("retrain", "prior")):
        if name not in opts.methods:
            continue
        sync(device)
        ref = pu.retrain(model, guide, x_r, y_r, init=init, lr=opts.lr, **common)
        sync(device)
        row[name] = {
            "seconds": ref.seconds,
            "svi_steps": len(ref.losses),
            "converged": ref.converged,
            **quality(*read_gaussian(ref.posterior)),
        }
    return row


def run_bif(guide, x_r, y_r, x_e, y_e, opts, device, quality) -> dict:
    num_remaining = len(y_r)
    if opts.batch_size:
        parts = torch.arange(num_remaining, device=device).split(opts.batch_size)
        remaining = [(x_r[i], y_r[i], i, num_remaining) for i in parts]
    else:
        remaining = (x_r, y_r)
    sync(device)
    start = time.perf_counter()
    bif = influence_unlearn(
        model,
        guide,
        x_e,
        y_e,
        remaining=remaining,
        num_particles=opts.particles,
        retain_graph=not opts.batch_size,
        seed=opts.seed,
        progress=False,
    )
    sync(device)
    return {
        "seconds": time.perf_counter() - start,
        "cg_iterations": bif.iterations[0],
        "hessian_vector_products": bif.hessian_vector_products,
        "model_evaluations": bif.model_evaluations,
        "num_batches": bif.num_batches,
        **quality(*read_gaussian(bif.posterior)),
    }


def markdown(rows: list[dict], methods: list[str]) -> str:
    """One row per |D_r|: seconds and distance of every method, BIF's Hessian-vector products
    and model runs on D_r mini-batches, the SVI methods' steps ('+': stopped by the cap)."""
    methods = ["none"] + [m for m in METHODS if m in methods and m != "none"]
    svi = [m for m in methods if m not in ("none", "bif")]
    head = ["\\|D_r\\|"]
    for m in methods:
        head += [f"{m} dist"] if m == "none" else [f"{m} s", f"{m} dist"]
    if "bif" in methods:
        head += ["BIF HVPs / model runs"]
    if svi:
        head += [" / ".join(svi) + " steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        cells = [str(row["num_remaining"])]
        for m in methods:
            if m != "none":
                cells.append(f"{row[m]['seconds']:.3g}")
            cells.append(f"{row[m]['distance']:.1e}")
        if "bif" in methods:
            cells.append(
                f"{row['bif']['hessian_vector_products']} / {row['bif']['model_evaluations']}"
            )
        if svi:
            cells.append(
                " / ".join(
                    f"{row[m]['svi_steps']}{'' if row[m]['converged'] else '+'}" for m in svi
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kl_table(rows: list[dict], methods: list[str]) -> str:
    """KL(q ‖ p(θ|D_r)) of every method's Gaussian, one row per |D_r|."""
    methods = ["none"] + [m for m in METHODS if m in methods and m != "none"]
    lines = [
        "| \\|D_r\\| | " + " | ".join(f"{m} KL" for m in methods) + " |",
        "|" + "---:|" * (len(methods) + 1),
    ]
    for row in rows:
        cells = [str(row["num_remaining"])] + [f"{row[m]['kl']:.2e}" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[90, 900, 9000, 90000], help="|D_r|")
    p.add_argument("--num-erased", type=int, default=10, help="|D_e|")
    p.add_argument("--methods", nargs="+", default=list(METHODS[1:]), choices=METHODS[1:])
    p.add_argument("--particles", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=0, help="BIF mini-batches (0: one tuple)")
    p.add_argument("--svi-steps", type=int, default=3000, help="most SVI steps per method")
    p.add_argument("--lr", type=float, default=0.01, help="ClippedAdam lr of the SVI methods")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write machine info and all rows here")
    p.add_argument("--quick", action="store_true", help="two small sizes, few SVI steps")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.sizes, opts.svi_steps = [90, 900], 300
    return opts


def main(argv=None) -> list[dict]:
    opts = parse_args(argv)
    device, dtype = torch.device(opts.device), getattr(torch, opts.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch.cuda.is_available() is False")
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" chatter
    info = machine_info(device, dtype)
    print("bench_influence: " + ", ".join(f"{k}={v}" for k, v in info.items()), file=sys.stderr)
    rows = []
    for size in opts.sizes:
        row = one_size(int(size), opts, device, dtype)
        rows.append(row)
        print(
            f"|D_r|={row['num_remaining']}: "
            + ", ".join(
                f"{m} {row[m]['seconds']:.3g} s ({row[m]['distance']:.1e})"
                for m in METHODS
                if m in row
            ),
            file=sys.stderr,
            flush=True,
        )
    print(
        f"\ntorch {info['torch']}, pyro {info['pyro']}, {info['device']} ({info['cpu']}), "
        f"{info['torch_threads']} threads, {info['dtype']}, |D_e| = {opts.num_erased}, "
        f"{opts.particles} particles\n"
    )
    print(markdown(rows, opts.methods))
    print(
        "\ns: wall-clock seconds; dist: ‖μ − μ_r‖ / ‖μ_r‖ to the exact D_r posterior mean; "
        "steps with '+': stopped at --svi-steps before the loss was flat\n"
    )
    print(kl_table(rows, opts.methods))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": info, "options": vars(opts), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
