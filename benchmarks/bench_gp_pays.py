"""Where unlearning a sparse GP pays: one λ = 0 EUBO step (NGD, lr 1, on D_e) against one NGD
retraining step of q(u) on D_r (lr 1, GPyTorch's VariationalELBO, full batch in chunks), over
|D| from 10³ to 10⁶. With a Gaussian likelihood, fixed hyperparameters and q(u|D) at its
optimum, each lands exactly on q(u|D_r): only the time differs (ratios measured in one run).

Synthetic 1-D regression: x ~ U(0, 10), y = sin(x) + N(0, 0.1²); M = 100 inducing inputs on a
grid, RBF kernel (lengthscale 0.5, fixed), natural-parameter q(u); float64. |D_e| is either fixed
(``--erased-rows``) or a share of |D| (``--erased-share``), erased at random.

Run: ``.venv/bin/python benchmarks/bench_gp_pays.py [--sizes 1000 10000 100000 1000000]
[--json OUT]`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gpytorch
import torch

from pyro_unlearn.contrib import gpytorch as pug
from pyro_unlearn.experiments.machine import machine_info

CHUNK = 10_000  # points per chunk of the retraining pass


class GP(gpytorch.models.ApproximateGP):
    def __init__(self, z: torch.Tensor) -> None:
        q = gpytorch.variational.NaturalVariationalDistribution(len(z))
        super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.RBFKernel()
        self.covar_module.lengthscale = 0.5

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def timed(fn):
    """(result, wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def retrain_step(gp, likelihood, x, y):
    """One NGD step at lr 1 on all of D_r with GPyTorch's VariationalELBO, the gradient
    accumulated over chunks (each chunk's loss weighted by its share of D_r)."""
    n = len(y)
    mll = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=n)
    optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=n, lr=1.0)
    optimizer.zero_grad()
    for start in range(0, n, CHUNK):
        xb, yb = x[start : start + CHUNK], y[start : start + CHUNK]
        (-mll(gp(xb), yb) * (len(yb) / n)).backward()
    optimizer.step()


def unlearn_step(gp, likelihood, x_e, y_e):
    """Freeze q(u|D), then one λ = 0 EUBO step of NGD at lr 1 on all of D_e (the division
    check included)."""
    eubo = pug.VariationalEUBO(likelihood, gp, pug.freeze_inducing(gp), num_erased=len(y_e))
    optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=len(y_e), lr=1.0)
    optimizer.zero_grad()
    (-eubo(gp(x_e), y_e)).backward()
    optimizer.step()


def row(n: int, num_erased: int, seed: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = 10 * torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.sin(x) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    gp = GP(torch.linspace(0, 10, 100, dtype=torch.float64).unsqueeze(-1)).double()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    likelihood.noise = 0.01
    gp.train(), likelihood.train()
    gp(x[:2])  # GPyTorch initialises q(u)
    pug.converge_inducing(gp, likelihood, x, y, chunk_size=CHUNK)  # q(u|D) at its optimum
    q_data = pug.inducing_distribution(gp)
    perm = torch.randperm(n, generator=g)
    erased, keep = perm[:num_erased].sort().values, perm[num_erased:].sort().values
    exact = pug.natural_step(gp, likelihood, x[keep], y[keep], chunk_size=CHUNK)  # q(u|D_r)
    runs: dict[str, list] = {"retrain": [], "unlearn": []}
    kls = {}
    for _ in range(repeats):  # interleaved, so drift of the machine hits both alike
        for name, step, data in (
            ("retrain", retrain_step, (x[keep], y[keep])),
            ("unlearn", unlearn_step, (x[erased], y[erased])),
        ):
            pug.set_inducing_distribution(gp, q_data.mean, q_data.covariance_matrix)
            _, wall, cpu = timed(lambda step=step, data=data: step(gp, likelihood, *data))
            runs[name].append((wall, cpu))
            q = pug.inducing_distribution(gp)
            kls[name] = float(torch.distributions.kl_divergence(q, exact))
    times = {k: tuple(sorted(v)[len(v) // 2]) for k, v in runs.items()}  # the median repeat
    return {
        "n": n,
        "repeats": repeats,
        "erased": num_erased,
        "retrain_s": times["retrain"][0],
        "retrain_cpu_s": times["retrain"][1],
        "unlearn_s": times["unlearn"][0],
        "unlearn_cpu_s": times["unlearn"][1],
        "ratio": times["retrain"][0] / times["unlearn"][0],
        "cpu_ratio": times["retrain"][1] / max(times["unlearn"][1], 1e-9),
        "kl_retrain": kls["retrain"],
        "kl_unlearn": kls["unlearn"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--erased-rows", type=int, default=100)
    parser.add_argument("--erased-share", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="(1 at |D| ≥ 10⁶)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    row(1000, 50, args.seed, 1)  # warm-up (first calls, allocator)
    rows = []
    print(
        "| |D| | |D_e| | retrain step s (CPU) | unlearn step s (CPU) | retrain/unlearn (CPU) "
        "| KL retrain | KL unlearn |\n|---|---|---|---|---|---|---|"
    )
    for n in args.sizes:
        for num_erased in sorted({min(args.erased_rows, n // 2), int(args.erased_share * n)}):
            print(f"|D|={n}, |D_e|={num_erased} ...", file=sys.stderr, flush=True)
            r = row(n, num_erased, args.seed, args.repeats if n < 1_000_000 else 1)
            rows.append(r)
            print(
                f"| {n} | {num_erased} | {r['retrain_s']:.3f} ({r['retrain_cpu_s']:.3f}) "
                f"| {r['unlearn_s']:.3f} ({r['unlearn_cpu_s']:.3f}) "
                f"| {r['ratio']:.1f} ({r['cpu_ratio']:.1f}) | {r['kl_retrain']:.1e} "
                f"| {r['kl_unlearn']:.1e} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine_info("cpu", torch.float64),
                    "options": vars(args),
                    "rows": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
