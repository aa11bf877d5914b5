"""Time to quality on flights at full size: unlearning at λ = 0 against the alternatives that
see D_r, each run until it is as close to the exact D_r optimum as the unlearned q(u).

The flights reproduction (``pyro_unlearn.experiments.flights``, its own functions and settings):
the SVGP is trained on all of D, then per erasure (random 5 %, carrier WN):

* ``eubo`` and ``rkl`` at λ = 0 (:func:`flights.unlearn`; the rKL by ``--rkl-solver``, default
  ``moments``: :func:`~pyro_unlearn.contrib.gpytorch.inducing_reverse_kl`) give a KL to the exact
  optimum on D_r (:func:`flights.optimal_q`, the closed form for D's hyperparameters);
* ``finetune`` (q(u) from q(u|D)) and ``retrain_q`` (q(u) from the prior), NGD on the ELBO on D_r
  (:func:`flights.fit_q`), record a curve (seconds, KL to that optimum) every ``--every`` steps
  and stop at the first point at or below the *smaller* unlearned KL, or after ``--cap``
  seconds; each method's time to its own KL is read off the same curve;
* ``scratch``: the reproduction's own retraining (:func:`flights.train_svgp` on D_r, new
  hyperparameters; SVI until flat, then q(u) set to its closed form). Its curve is the SVI q(u)'s
  KL to the closed form for its current hyperparameters; where the curve never gets there, its
  time to quality is its whole run, closed form included (it lands at KL 0 to its own optimum);
* ``closed_form``: one pass over D_r in float64 (:func:`flights.optimal_q`), exact, for a
  Gaussian likelihood.

The time a curve spends on its own KL evaluations is not counted. Ratios are the competitor's
time to the method's KL over the method's seconds (a lower bound, marked ``>``, where the cap
ended the curve first). One torch thread; results with the machine and commit.

Usage::

    .venv/bin/python benchmarks/bench_flights.py --json benchmarks/results/flights_ttq.json
    .venv/bin/python benchmarks/bench_flights.py --subset 20000 --cap 20  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time

import torch

from pyro_unlearn.contrib.gpytorch import clone, freeze_inducing
from pyro_unlearn.experiments import flights as F
from pyro_unlearn.experiments.datasets import flights
from pyro_unlearn.experiments.machine import machine_info

#: The reproduction's settings (``flights.run``'s defaults).
COMMON = dict(batch_size=1024, ngd_lr=0.1, window=20, seed=0)
TRAIN = dict(num_inducing=100, lr=0.01, train_steps=20000, **COMMON)


class Curve:
    """A monitor for :func:`flights.fit_q` / :func:`flights.train_svgp`: records (seconds without
    its own evaluations, KL) and says stop at ``target`` or after ``cap`` seconds."""

    def __init__(self, kl, target: float, cap: float) -> None:
        self.kl, self.target, self.cap = kl, target, cap
        self.points: list[tuple[float, float]] = []
        self.start, self.spent = time.perf_counter(), 0.0

    def __call__(self, model, likelihood) -> bool:
        seconds = time.perf_counter() - self.start - self.spent
        tic = time.perf_counter()
        self.points.append((seconds, self.kl(model, likelihood)))
        self.spent += time.perf_counter() - tic
        return self.points[-1][1] <= self.target or seconds > self.cap

    def time_to(self, kl: float) -> float | None:
        """The first recorded second at which the KL was at most ``kl`` (None: never)."""
        return next((s for s, v in self.points if v <= kl), None)


def competitors(gp, likelihood, x_r, y_r, optimum, target, args) -> dict:
    """Curves of fine-tuning, q(u)-only retraining and retraining from scratch, plus the closed
    form's seconds."""
    out = {}
    kl = lambda model, _: F.kl_to(model, optimum)  # noqa: E731
    for name, start in (("finetune", clone(gp)), ("retrain_q", F.prior_q(gp))):
        curve = Curve(kl, target, args.cap)
        cpu = time.process_time()
        F.fit_q(
            start,
            likelihood,
            x_r,
            y_r,
            steps=10**7,
            desc=name,
            progress=args.progress,
            monitor=(curve, args.every),
            **{**COMMON, "window": 10**9},
        )  # fmt: skip  (a window past the cap: no flat rule, only the target or the cap)
        out[name] = {"curve": curve.points, "cpu_seconds": time.process_time() - cpu, "c": curve}

    def own_kl(model, fitted) -> float:  # SVI q(u) against the closed form for its kernel
        return F.kl_to(model, F.optimal_q(model, fitted, x_r, y_r))

    cpu, tic = time.process_time(), time.perf_counter()
    curve = Curve(own_kl, target, math.inf)
    _, _, scratch = F.train_svgp(
        x_r, y_r, **TRAIN, desc="scratch", progress=args.progress,
        monitor=(curve, max(args.every, 50)),
    )  # fmt: skip
    out["scratch"] = {
        "curve": curve.points,
        "cpu_seconds": time.process_time() - cpu,
        "seconds": time.perf_counter() - tic - curve.spent,
        "steps": scratch["steps"],
        "svi_kl_to_optimum": scratch["svi_kl_to_optimum"],
        "c": curve,
    }
    tic = time.perf_counter()
    F.optimal_q(gp, likelihood, x_r, y_r)
    out["closed_form"] = {"seconds": time.perf_counter() - tic}
    return out


def ratio(competitor: dict, kl: float, seconds: float, cap: float) -> str:
    reached = competitor["c"].time_to(kl)
    if reached is None and "seconds" in competitor:  # scratch: its closed form lands at KL 0
        reached = competitor["seconds"]
    if reached is None:
        return f"> {cap / seconds:.1f}"
    return f"{reached / seconds:.1f}"


def erasure(name, erased, gp, likelihood, posterior, data, args) -> dict:
    keep = torch.ones(data.num_train, dtype=torch.bool, device=data.y_train.device)
    keep[erased] = False
    x_e, y_e = data.x_train[erased], data.y_train[erased]
    x_r, y_r = data.x_train[keep], data.y_train[keep]
    optimum = F.optimal_q(gp, likelihood, x_r, y_r)
    methods = {}
    for method, steps in (("eubo", 5000), ("rkl", 6000)):
        cpu = time.process_time()
        model, info = F.unlearn(
            gp, likelihood, posterior, x_e, y_e, method, 0.0, steps=steps,
            progress=args.progress, rkl_solver=args.rkl_solver, **COMMON,
        )  # fmt: skip
        info |= {"cpu_seconds": time.process_time() - cpu, "kl_exact": F.kl_to(model, optimum)}
        methods[method] = info
        print(name, method, json.dumps({k: info[k] for k in ("kl_exact", "seconds", "steps")}))
    finite = [m["kl_exact"] for m in methods.values() if math.isfinite(m["kl_exact"])]
    target = min(finite) if finite else 0.0
    alt = competitors(gp, likelihood, x_r, y_r, optimum, target, args)
    ratios = {
        f"{c}/{m}": ratio(alt[c], methods[m]["kl_exact"], methods[m]["seconds"], args.cap)
        for m in methods
        for c in ("scratch", "retrain_q", "finetune")
    }
    for m in methods:
        ratios[f"closed_form/{m}"] = f"{alt['closed_form']['seconds'] / methods[m]['seconds']:.2f}"
    for c in alt.values():
        c.pop("c", None)
    return {
        "num_erased": len(erased),
        "full_kl_exact": F.kl_to(gp, optimum),
        "methods": methods,
        "competitors": alt,
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=None, help="flights (default: all)")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds per curve")
    parser.add_argument("--every", type=int, default=10, help="steps between curve points")
    parser.add_argument(
        "--rkl-solver", default="moments", choices=("moments", "ngd"),
        help="the rKL: inducing_reverse_kl (moments) or NGD on VariationalReverseKL",
    )  # fmt: skip
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = flights(subset=args.subset, seed=0)
    gp, likelihood, training = F.train_svgp(
        data.x_train, data.y_train, **TRAIN, progress=args.progress
    )
    posterior = freeze_inducing(gp)
    results = {}
    for name, erased in F.erasures(data).items():
        results[name] = erasure(name, erased, gp, likelihood, posterior, data, args)
        print(name, json.dumps(results[name]["ratios"]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out = {
        "results": results,
        "training_seconds": training["seconds"],
        "settings": {**vars(args), "torch_threads": torch.get_num_threads(), **TRAIN},
        "commit": commit.stdout.strip(),
        "machine": machine_info(data.x_train.device, data.x_train.dtype),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
