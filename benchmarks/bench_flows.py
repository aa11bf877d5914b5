"""Time per SVI step of each flow guide with ``Trace_ELBO``, ``pu.Trace_EUBO`` and ``pu.ReverseKL``.

A flow is cheap in one direction and dear in the other: a MAF scores a point in one pass but
samples in D sequential passes, an IAF the reverse, a coupling flow is cheap both ways. The EUBO
samples the live guide q_u and scores those samples under the frozen q(θ|D); ReverseKL samples
q(θ|D) and scores the samples under the live q_v. So both unlearning losses need both directions,
while ``Trace_ELBO`` only samples (and scores its own samples, whose log-density comes with them).

For each guide (``pu.AutoZukoFlow`` with the presets coupling, MAF and IAF; Pyro's
``AutoIAFNormal`` and ``AutoMultivariateNormal`` as references) this measures, on the Bayesian
logistic regression of ``bench_losses.py`` with more features (33 latents by default):

- ms per ``SVI.step`` of the three losses (λ = 0), repeats interleaved, median, ratio to
  ``Trace_ELBO`` and the range of the per-repeat ratios, as ``bench_losses.py`` does;
- the two primitive operations, forward only and forward + backward: (a) draw P samples with
  their log-density from the live guide, (b) score P external points under the frozen posterior;
- the one-off mode search for log q* (``posterior.log_q_max``), run explicitly and timed once per
  guide before any loss step. The first step of either loss would otherwise run it, even at
  λ = 0: ``UnlearningLoss.log_threshold`` reads ``posterior.log_q_max`` before it looks at λ.

Usage::

    .venv/bin/python benchmarks/bench_flows.py                   # the full grid, ~3 min on CPU
    .venv/bin/python benchmarks/bench_flows.py --quick           # a small grid, ~25 s
    .venv/bin/python benchmarks/bench_flows.py --guides coupling maf --particles 1024
    .venv/bin/python benchmarks/bench_flows.py --device cuda --json /tmp/bench_flows_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_losses import (  # noqa: E402 (the sibling script, found through the path above)
    LOSSES,
    build_svis,
    linear_gemm,
    make_model,
    markdown_table,
    prepare,
    summarise,
    time_steps,
)

import pyro_unlearn as pu  # noqa: E402

NUM_RETAINED = 1000  # |D_r|: the guide is trained on D = D_r ∪ D_e
OPS = ("sample", "sample_bwd", "score", "score_bwd")  # the primitives (see primitive_ops)

#: name -> guide factory; the flows all have 3 transforms with (64, 64) hidden layers.
GUIDES: dict[str, Callable] = {
    "coupling": lambda m: pu.AutoZukoFlow(m, "coupling", hidden_features=(64, 64), transforms=3),
    "maf": lambda m: pu.AutoZukoFlow(m, "maf", hidden_features=(64, 64), transforms=3),
    "iaf": lambda m: pu.AutoZukoFlow(m, "iaf", hidden_features=(64, 64), transforms=3),
    "AutoIAFNormal": lambda m: AutoIAFNormal(m, hidden_dim=[64, 64], num_transforms=3),
    "AutoMVN": lambda m: AutoMultivariateNormal(m),
}


def make_data(n: int, features: int, generator: torch.Generator, device: torch.device):
    """``bench_losses.make_data`` with the number of features as an argument."""
    x = torch.randn(n, features, generator=generator)
    w = torch.linspace(-1.0, 1.0, features)
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.5), generator=generator)
    return x.to(device), y.to(device)


# -- what is timed ---------------------------------------------------------------------------------
def build_losses(posterior, particles: int) -> dict[str, pyro.infer.ELBO]:
    """As ``bench_losses.build_losses``, with λ = 0 (the plain likelihood)."""
    common = {"num_particles": particles, "vectorize_particles": True, "max_plate_nesting": 1}
    return {
        "Trace_ELBO": Trace_ELBO(**common),
        "EUBO": pu.Trace_EUBO(posterior, lam=0.0, **common),
        "rKL": pu.ReverseKL(posterior, lam=0.0, **common),
    }


def primitive_ops(guide, posterior, particles: int) -> dict[str, SimpleNamespace]:
    """The two primitives, each forward only (no autograd) and forward + backward, as objects
    with a ``step()`` so that ``time_steps`` times them.

    ``sample``: P draws with their log-density from the live guide (a zuko flow's
    ``rsample_and_log_prob``; Pyro's flows cache the log-density of their own draws); the
    backward goes from log q + θ to the guide's parameters, as in Trace_ELBO and the EUBO.
    ``score``: log q(θ|D) of the frozen posterior at P points it did not draw; the backward goes
    to the points, as in the EUBO (ReverseKL's scoring under q_v goes to q_v's parameters)."""
    with torch.no_grad():
        external = guide.get_posterior()(torch.Size([particles])).detach()

    def sample(backward: bool) -> Callable[[], None]:
        def op() -> None:
            with torch.set_grad_enabled(backward):
                q = guide.get_posterior()
                theta = q(torch.Size([particles]))
                out = q.log_prob(theta).sum() + theta.sum()
            if backward:
                out.backward()

        return op

    def score(backward: bool) -> Callable[[], None]:
        def op() -> None:
            # A fresh tensor every call: Pyro's transforms cache their last inverse by identity.
            theta = external.clone().requires_grad_(backward)
            with torch.set_grad_enabled(backward), posterior.context():
                out = posterior.guide.get_posterior().log_prob(theta).sum()
            if backward:
                out.backward()

        return op

    ops = {"sample": sample(False), "sample_bwd": sample(True)}
    ops.update(score=score(False), score_bwd=score(True))
    return {name: SimpleNamespace(step=op) for name, op in ops.items()}


def run_cell(name, model, guide, posterior, args, particles: int, opts, sync, log) -> dict:
    """Interleaved repeats of the three losses and the primitives for one guide and P."""
    losses = build_losses(posterior, particles)
    svis = build_svis(model, guide, losses, opts.lr)
    timed = {**svis, **primitive_ops(guide, posterior, particles)}
    calls = {n: args if n in LOSSES else () for n in timed}

    first = {}
    for n, svi in timed.items():
        posterior.restore(guide)  # every loss starts from q(θ|D)
        for _ in range(opts.warmup - 1):
            svi.step(*calls[n])
        first[n] = time_steps(svi, calls[n], 1, sync)[0]
    # One k for the three losses (a repeat of each lasts about opts.target s), as in
    # bench_losses; the primitives have no ratio between them, each gets its own k (opts.target/2).
    k = {n: round(opts.target / max(first[n] for n in LOSSES)) for n in LOSSES}
    k.update({n: round(opts.target / 2 / first[n]) for n in OPS})
    k = {n: max(1, min(opts.max_steps, v)) for n, v in k.items()}
    log(
        f"  {name} P={particles}: warm-up "
        + ", ".join(f"{n} {1e3 * t:.1f} ms" for n, t in first.items())
        + f"; timing {opts.repeats} × ({k['Trace_ELBO']} steps; "
        + ", ".join(f"{k[n]} {n}" for n in OPS)
        + ")"
    )

    wall: dict[str, list[float]] = {n: [] for n in timed}
    cpu: dict[str, list[float]] = {n: [] for n in timed}
    names = LOSSES + OPS
    for rep in range(opts.repeats):
        shift = rep % len(names)
        for n in names[shift:] + names[:shift]:  # rotate who goes first
            posterior.restore(guide)
            t_wall, t_cpu = time_steps(timed[n], calls[n], k[n], sync)
            wall[n].append(t_wall)
            cpu[n].append(t_cpu)
    ess = losses["rKL"].ess
    row = {
        "guide": name,
        "particles": particles,
        "erased": args[0].shape[0],
        "calls_per_repeat": k,
        "repeats": opts.repeats,
        "wall": summarise({n: wall[n] for n in LOSSES}),
        "cpu": summarise({n: cpu[n] for n in LOSSES}),
        "ops_ms": {n: 1e3 * statistics.median(wall[n]) for n in OPS},
        "ops_ms_all": {n: [round(1e3 * t, 4) for t in wall[n]] for n in OPS},
        "ops_cpu_ms": {n: 1e3 * statistics.median(cpu[n]) for n in OPS},
        "rkl_last_ess": None if ess is None else float(ess),
    }
    ms, w, op = row["wall"]["ms_per_step"], row["wall"], row["ops_ms"]
    log(
        f"  -> ELBO {ms['Trace_ELBO']:.2f} ms, EUBO {ms['EUBO']:.2f} ms (×{w['ratio_eubo']:.2f}), "
        f"rKL {ms['rKL']:.2f} ms (×{w['ratio_rkl']:.2f}); "
        + ", ".join(f"{n} {op[n]:.2f} ms" for n in OPS)
    )
    del svis, losses, timed
    return row


# -- tables ----------------------------------------------------------------------------------------
def loss_table(rows: list[dict], clock: str = "wall") -> str:
    return markdown_table(rows, clock, lead=(("guide", "guide", "---"), ("P", "particles", "---:")))


def ops_table(rows: list[dict], guides: dict[str, dict]) -> str:
    """Per guide and P: the primitives' ms; per guide (first row): the one-off mode search."""
    lines = [
        "| guide | P | sample ms | sample + backward ms | score ms | score + backward ms "
        "| mode search s (method) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    seen = set()
    for row in rows:
        name, ms = row["guide"], row["ops_ms"]
        mode = (
            "" if name in seen else f"{guides[name]['mode_s']:.2f} ({guides[name]['mode_method']})"
        )
        seen.add(name)
        lines.append(
            f"| {name} | {row['particles']} | {ms['sample']:.2f} | {ms['sample_bwd']:.2f} "
            f"| {ms['score']:.2f} | {ms['score_bwd']:.2f} | {mode} |"
        )
    return "\n".join(lines)


# -- the grid --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    p.add_argument("--particles", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--erased", type=int, default=100, help="|D_e|")
    p.add_argument("--features", type=int, default=32, help="features (latents: features + 1)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per cell (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per loss and cell")
    p.add_argument("--target", type=float, default=0.25, help="seconds per timed repeat")
    p.add_argument("--max-steps", type=int, default=200, help="most steps per timed repeat")
    p.add_argument("--train-steps", type=int, default=50, help="Trace_ELBO steps before freeze")
    p.add_argument("--train-lr", type=float, default=0.01, help="Adam lr of the training")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the timed steps")
    p.add_argument("--mode-steps", type=int, default=500, help="freeze(mode_steps=...)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave it)")
    p.add_argument("--no-validation", action="store_true", help="pyro.enable_validation(False)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write machine info and all timings here")
    p.add_argument("--quick", action="store_true", help="a small grid for a fast check")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.particles, opts.repeats, opts.warmup, opts.target = [64], 3, 2, 0.1
        opts.train_steps, opts.mode_steps = 10, 50
    return opts


def main(argv: list[str] | None = None) -> list[dict]:
    opts = parse_args(argv)
    device, dtype, sync, info = prepare(opts)
    info.update(features=opts.features, latents=opts.features + 1, erased=opts.erased)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log("bench_flows: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    model = make_model(linear_gemm)
    generator = torch.Generator().manual_seed(opts.seed)
    x_r, y_r = make_data(NUM_RETAINED, opts.features, generator, device)
    x_e, y_e = make_data(opts.erased, opts.features, generator, device)
    x, y = torch.cat([x_r, x_e]), torch.cat([y_r, y_e])
    if device.type == "cuda":  # Pyro's flows build their networks lazily, on the default device
        torch.set_default_device(device)
    rows, guides = [], {}
    start = time.perf_counter()
    for name in opts.guides:
        pyro.clear_param_store()
        pyro.set_rng_seed(opts.seed)
        guide = GUIDES[name](model)
        train = SVI(model, guide, pyro.optim.Adam({"lr": opts.train_lr}), Trace_ELBO())
        t0 = time.perf_counter()
        for _ in range(opts.train_steps):
            train.step(x, y)
        train_s = time.perf_counter() - t0
        posterior = pu.freeze(guide, x, y, mode_steps=opts.mode_steps)
        sync()
        t0 = time.perf_counter()
        posterior.log_q_max  # noqa: B018 (the lazy mode search, timed once, outside the steps)
        sync()
        mode_s = time.perf_counter() - t0
        guides[name] = {
            "train_s": round(train_s, 3),
            "mode_s": mode_s,
            "mode_method": posterior.mode_info["method"],
            "mode_info": posterior.mode_info,
        }
        log(
            f"{name}: {opts.train_steps} Trace_ELBO steps in {train_s:.1f} s; "
            f"mode search {mode_s:.2f} s ({posterior.mode_info['method']})"
        )
        for particles in opts.particles:
            rows.append(
                run_cell(name, model, guide, posterior, (x_e, y_e), particles, opts, sync, log)
            )
            gc.collect()
        del guide, posterior, train
        gc.collect()
    info["wall_s"] = round(time.perf_counter() - start, 1)
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    log(f"done in {info['wall_s']} s")

    header = (
        f"torch {info['torch']}, pyro {info['pyro']}, {info['device']} ({info['cpu']}"
        + (f"; {info['gpu']}" if "gpu" in info else "")
        + f"), {info['torch_threads']} threads, {info['dtype']}, {opts.features + 1} latents, "
        f"|D_e| = {opts.erased}"
        + (f", load average {info['loadavg_start'][0]}" if "loadavg_start" in info else "")
    )
    print(header)
    print("\nLoss steps, wall clock (median of the repeats), λ = 0:\n")
    print(loss_table(rows, "wall"))
    if device.type == "cpu":  # on CUDA the CPU time is the host's, not the step's
        print("\nLoss steps, process CPU time:\n")
        print(loss_table(rows, "cpu"))
    print("\nPrimitives, wall clock (median); the one-off mode search for log q*:\n")
    print(ops_table(rows, guides))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(
                {"machine": info, "options": vars(opts), "guides": guides, "rows": rows},
                f,
                indent=2,
            )
        log(f"wrote {opts.json}")
    return rows


if __name__ == "__main__":
    main()
