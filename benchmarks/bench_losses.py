"""Time per SVI step of ``pu.Trace_EUBO`` and ``pu.ReverseKL`` against Pyro's ``Trace_ELBO``.

All three losses run on the same Bayesian logistic regression, the same guide, the same erased
data D_e and the same particle count (``vectorize_particles=True``), in one process, with their
repeats interleaved so that drift of the machine hits every loss alike. Reported: the median
ms/step of each loss and the ratios EUBO/ELBO and rKL/ELBO of the medians; in brackets the range
of the per-repeat ratios (each repeat's step time over the Trace_ELBO repeat next to it in time).

Usage::

    .venv/bin/python benchmarks/bench_losses.py                  # the full grid, ~2-5 min on CPU
    .venv/bin/python benchmarks/bench_losses.py --quick          # a small grid, a few seconds
    .venv/bin/python benchmarks/bench_losses.py --device cuda --json results/bench_cuda.json
    .venv/bin/python benchmarks/bench_losses.py --particles 1 --erased 10 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.experiments.machine import machine_info

LOSSES = ("Trace_ELBO", "EUBO", "rKL")
NUM_FEATURES = 8
NUM_RETAINED = 1000  # |D_r|: the guide is trained on D = D_r ∪ D_e
BIG_CELL = 10_000_000  # particles × |D_e| from which a cell gets fewer repeats (400 MB tensors)


# -- the model -------------------------------------------------------------------------------------
def linear_gemm(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x·w + b as one matrix product. ``w`` is ``(D,)`` or, under vectorised particles,
    ``(P, 1, D)`` (the 1 is the data plate's dim); the result is ``(N,)`` or ``(P, N)``."""
    if w.dim() == 1:
        return x @ w + b
    return w.squeeze(-2) @ x.T + b


def linear_mul(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(w * x).sum(-1) + b``: the textbook form; it materialises a P × N × D tensor."""
    return (w * x).sum(-1) + b


def make_model(linear: Callable) -> Callable:
    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        zeros = x.new_zeros(x.shape[-1])
        w = pyro.sample("w", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
        b = pyro.sample("b", dist.Normal(x.new_zeros(()), x.new_ones(())))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=linear(w, b, x)), obs=y)

    return model


def make_data(n: int, generator: torch.Generator, device: torch.device):
    x = torch.randn(n, NUM_FEATURES, generator=generator)
    w = torch.linspace(-1.0, 1.0, NUM_FEATURES)
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.5), generator=generator)
    return x.to(device), y.to(device)


# -- timing ----------------------------------------------------------------------------------------
def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_steps(svi: SVI, args: tuple, k: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per step, averaged over ``k`` consecutive steps."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(k):
        svi.step(*args)
    sync()
    return (time.perf_counter() - wall) / k, (time.process_time() - cpu) / k


def summarise(samples: dict[str, list[float]]) -> dict[str, object]:
    """Medians (ms/step), their ratios to Trace_ELBO, and the per-repeat ratios: each repeat
    against the Trace_ELBO repeat next to it in time, whose spread shows the noise."""
    ms = {name: 1e3 * statistics.median(v) for name, v in samples.items()}

    def per_repeat(name: str) -> list[float]:
        return [round(t / r, 4) for t, r in zip(samples[name], samples["Trace_ELBO"], strict=True)]

    return {
        "ms_per_step": ms,
        "ms_per_step_min": {n: 1e3 * min(v) for n, v in samples.items()},
        "ms_per_step_all": {n: [round(1e3 * t, 4) for t in v] for n, v in samples.items()},
        "ratio_eubo": ms["EUBO"] / ms["Trace_ELBO"],
        "ratio_rkl": ms["rKL"] / ms["Trace_ELBO"],
        "ratio_eubo_per_repeat": per_repeat("EUBO"),
        "ratio_rkl_per_repeat": per_repeat("rKL"),
    }


def build_losses(posterior, particles: int) -> dict[str, pyro.infer.ELBO]:
    common = {"num_particles": particles, "vectorize_particles": True, "max_plate_nesting": 1}
    return {
        "Trace_ELBO": Trace_ELBO(**common),
        "EUBO": pu.Trace_EUBO(posterior, lam=1e-3, **common),
        "rKL": pu.ReverseKL(posterior, lam=1e-3, **common),
    }


def build_svis(model, guide, losses: dict, lr: float) -> dict[str, SVI]:
    """Trace_ELBO runs the plain model on D_e; the unlearning losses run ``pu.unlearn(model)``
    on the same D_e (every observation of the call is erased data)."""
    return {
        name: SVI(
            model if name == "Trace_ELBO" else pu.unlearn(model),
            guide,
            pyro.optim.Adam({"lr": lr}),
            loss,
        )
        for name, loss in losses.items()
    }


def profile_cell(svis, args, posterior, guide, k: int, top: int) -> str:
    """cProfile ``k`` steps of each loss; the ``top`` functions by internal time."""
    out = io.StringIO()
    for name, svi in svis.items():
        posterior.restore(guide)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(k):
            svi.step(*args)
        profiler.disable()
        out.write(f"\n### {name}: {k} steps, top {top} by tottime\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def run_cell(model, guide, posterior, args, particles: int, opts, sync, log) -> dict[str, object]:
    erased = args[0].shape[0]
    big = particles * erased >= BIG_CELL
    repeats = min(opts.repeats, opts.big_repeats) if big else opts.repeats
    warmup = 1 if big else opts.warmup
    losses = build_losses(posterior, particles)
    svis = build_svis(model, guide, losses, opts.lr)

    per_step = {}
    for name, svi in svis.items():
        posterior.restore(guide)  # every loss starts from q(θ|D)
        for _ in range(warmup - 1):
            svi.step(*args)
        per_step[name] = time_steps(svi, args, 1, sync)[0]
    # The same k for all three, so that each repeat lasts about opts.target seconds.
    k = max(1, min(opts.max_steps, round(opts.target / max(per_step.values()))))
    log(
        f"  P={particles} |D_e|={erased}: warm-up "
        + ", ".join(f"{n} {1e3 * t:.1f} ms" for n, t in per_step.items())
        + f"; timing {repeats} × {k} steps"
    )

    wall: dict[str, list[float]] = {name: [] for name in svis}
    cpu: dict[str, list[float]] = {name: [] for name in svis}
    for rep in range(repeats):
        order = LOSSES[rep % 3 :] + LOSSES[: rep % 3]  # rotate who goes first
        for name in order:
            posterior.restore(guide)
            t_wall, t_cpu = time_steps(svis[name], args, k, sync)
            wall[name].append(t_wall)
            cpu[name].append(t_cpu)
    ess = losses["rKL"].ess
    row = {
        "particles": particles,
        "erased": erased,
        "steps_per_repeat": k,
        "repeats": repeats,
        "wall": summarise(wall),
        "cpu": summarise(cpu),
        "rkl_last_ess": None if ess is None else float(ess),
    }
    ms, w = row["wall"]["ms_per_step"], row["wall"]
    log(
        f"  -> ELBO {ms['Trace_ELBO']:.2f} ms, EUBO {ms['EUBO']:.2f} ms "
        f"(×{w['ratio_eubo']:.2f}), rKL {ms['rKL']:.2f} ms (×{w['ratio_rkl']:.2f}); "
        f"CPU-time ratios ×{row['cpu']['ratio_eubo']:.2f}, ×{row['cpu']['ratio_rkl']:.2f}"
    )
    if opts.profile:
        print(profile_cell(svis, args, posterior, guide, k, opts.profile_top))
    del svis, losses
    return row


# -- the grid --------------------------------------------------------------------------------------
def spread(ratios: list[float]) -> str:
    return f"({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""


#: Leading columns of :func:`markdown_table`: (header, row key, alignment).
DEFAULT_LEAD = (("P", "particles", "---:"), ("\\|D_e\\|", "erased", "---:"))


def markdown_table(
    rows: list[dict],
    clock: str = "wall",
    lead: tuple[tuple[str, str, str], ...] = DEFAULT_LEAD,
) -> str:
    """The ``lead`` columns (header, row key, alignment; default P and |D_e|), then ms/step of
    the three losses and the ratios, from ``row[clock]``."""
    lines = [
        "| "
        + "".join(f"{head} | " for head, _, _ in lead)
        + "Trace_ELBO ms/step | EUBO ms/step | rKL ms/step "
        "| EUBO/ELBO (range) | rKL/ELBO (range) |",
        "|" + "".join(f"{align}|" for _, _, align in lead) + "---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row[clock]
        ms = r["ms_per_step"]
        lines.append(
            "| "
            + "".join(f"{row[key]} | " for _, key, _ in lead)
            + f"{ms['Trace_ELBO']:.2f} | {ms['EUBO']:.2f} "
            f"| {ms['rKL']:.2f} | {r['ratio_eubo']:.2f} {spread(r['ratio_eubo_per_repeat'])} "
            f"| {r['ratio_rkl']:.2f} {spread(r['ratio_rkl_per_repeat'])} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--particles", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--erased", type=int, nargs="+", default=[10, 1000, 100000], help="|D_e|")
    p.add_argument("--guide", default="mvn", choices=["mvn", "normal"])
    p.add_argument(
        "--linear",
        default="gemm",
        choices=["gemm", "mul"],
        help="x·w as a matrix product (default) or (w * x).sum(-1)",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per cell (median)")
    p.add_argument(
        "--big-repeats",
        type=int,
        default=3,
        help=f"repeats for cells with P·|D_e| >= {BIG_CELL:.0e}",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per loss and cell")
    p.add_argument("--target", type=float, default=0.25, help="seconds per timed repeat")
    p.add_argument("--max-steps", type=int, default=200, help="most steps per timed repeat")
    p.add_argument("--train-steps", type=int, default=100, help="Trace_ELBO steps before freeze")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the timed steps")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave it)")
    p.add_argument("--no-validation", action="store_true", help="pyro.enable_validation(False)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write machine info and all timings here")
    p.add_argument("--quick", action="store_true", help="a small grid for a fast check")
    p.add_argument("--profile", action="store_true", help="cProfile every cell after timing it")
    p.add_argument("--profile-top", type=int, default=25)
    opts = p.parse_args(argv)
    if opts.quick:
        opts.particles, opts.erased = [1, 64], [10, 1000]
        opts.repeats, opts.warmup, opts.target, opts.train_steps = 3, 2, 0.1, 20
    return opts


def prepare(opts) -> tuple[torch.device, torch.dtype, Callable[[], None], dict[str, object]]:
    """Apply the common options (device, default dtype, threads, validation; after importing
    zuko, which turns validation off) and return (device, dtype, sync, machine info)."""
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch.cuda.is_available() is False")
    dtype = getattr(torch, opts.dtype)
    torch.set_default_dtype(dtype)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    pyro.enable_validation(not opts.no_validation)
    return device, dtype, synchronizer(device), machine_info(device, dtype)


def main(argv: list[str] | None = None) -> list[dict]:
    opts = parse_args(argv)
    device, dtype, sync, info = prepare(opts)
    info["guide"] = opts.guide
    info["linear"] = opts.linear

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log("bench_losses: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    model = make_model(linear_gemm if opts.linear == "gemm" else linear_mul)
    guide_cls = AutoMultivariateNormal if opts.guide == "mvn" else AutoNormal
    generator = torch.Generator().manual_seed(opts.seed)
    rows = []
    start = time.perf_counter()
    for erased in opts.erased:
        pyro.clear_param_store()
        pyro.set_rng_seed(opts.seed)
        x_r, y_r = make_data(NUM_RETAINED, generator, device)
        x_e, y_e = make_data(erased, generator, device)
        x, y = torch.cat([x_r, x_e]), torch.cat([y_r, y_e])
        guide = guide_cls(model)
        train = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(opts.train_steps):
            train.step(x, y)
        posterior = pu.freeze(guide, x, y)
        del x, y, train
        size = NUM_RETAINED + erased
        log(f"|D_e|={erased}: guide trained ({opts.train_steps} steps on |D|={size})")
        for particles in opts.particles:
            rows.append(run_cell(model, guide, posterior, (x_e, y_e), particles, opts, sync, log))
            gc.collect()
        del guide, posterior, x_e, y_e
        gc.collect()
    info["wall_s"] = round(time.perf_counter() - start, 1)
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    rows.sort(key=lambda r: (r["particles"], r["erased"]))
    log(f"done in {info['wall_s']} s")

    header = (
        f"torch {info['torch']}, pyro {info['pyro']}, {info['device']} ({info['cpu']}"
        + (f"; {info['gpu']}" if "gpu" in info else "")
        + f"), {info['torch_threads']} threads, {info['dtype']}, guide {opts.guide}"
        + (f", load average {info['loadavg_start'][0]}" if "loadavg_start" in info else "")
    )
    print(header)
    print("\nWall clock (median of the repeats):\n")
    print(markdown_table(rows, "wall"))
    if device.type == "cpu":  # on CUDA the CPU time is the host's, not the step's
        print("\nProcess CPU time (time.process_time; robust to other processes):\n")
        print(markdown_table(rows, "cpu"))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": info, "options": vars(opts), "rows": rows}, f, indent=2)
        log(f"wrote {opts.json}")
    worst = max(max(r["wall"]["ratio_eubo"], r["wall"]["ratio_rkl"]) for r in rows)
    if math.isfinite(worst):
        log(f"worst ratio to Trace_ELBO: {worst:.2f} (target <= 1.5)")
    return rows


if __name__ == "__main__":
    main()
