"""CODEC against L-CODEC, and the time of an L-CODEC removal against the full-Hessian update.

1. **Tied data**: X (2 columns) and Z (1 column) take ``levels`` integer values each, so most
   points have exact duplicates; Y = X₁ + X₂ + Z + N(0, 1). CODEC breaks nearest-neighbour ties
   at random (for every row with ties, a random draw and a cumulative count over its tied
   candidates), L-CODEC jitters X and Z below their smallest gap and takes a plain ``argmin``.
   Reported: the median time of each, the ratio, and the mean and standard deviation of each
   one's T_n over the repeats (each repeat draws new data; both are random on tied data, and
   estimate the same quantity).
2. **Continuous data**: X, Z ~ U(0, 1), Y = sin(3 X₁) + Z X₂ + 0.1 N(0, 1): the two must agree
   (no ties); reported: max |T_codec − T_lcodec| over repeats and the times.
3. **FOCI** over p = 20 tied features (3 relevant): selection time with either statistic.
4. **Removal**: seconds per removal of the block Newton step on sklearn's digits, L-FOCI block
   against every parameter (the full Hessian), for logistic regression and a 16-unit MLP.

Usage::

    .venv/bin/python benchmarks/bench_codec.py                 # ~5 min on 2 busy CPU cores
    .venv/bin/python benchmarks/bench_codec.py --quick         # ~1 min
    .venv/bin/python benchmarks/bench_codec.py --json /tmp/bench_codec.json --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pyro_unlearn.codec import codec, foci, lcodec
from pyro_unlearn.experiments import lcodec as experiment
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.lcodec import remove_sequentially


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[..., torch.Tensor], device: torch.device, *args, **kwargs):
    """(seconds, value) of one call ``fn(*args, **kwargs)``."""
    _sync(device)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    _sync(device)
    return time.perf_counter() - start, float(value)


def tied_data(n: int, levels: int, g: torch.Generator, device, dtype):
    x = torch.randint(0, levels, (n, 2), generator=g, device=device).to(dtype)
    z = torch.randint(0, levels, (n,), generator=g, device=device).to(dtype)
    y = x.sum(1) + z + torch.randn(n, generator=g, device=device, dtype=dtype)
    return y, z, x


def continuous_data(n: int, g: torch.Generator, device, dtype):
    x = torch.rand(n, 2, generator=g, device=device, dtype=dtype)
    z = torch.rand(n, generator=g, device=device, dtype=dtype)
    noise = torch.randn(n, generator=g, device=device, dtype=dtype)
    return torch.sin(3 * x[:, 0]) + z * x[:, 1] + 0.1 * noise, z, x


def bench_statistics(sizes, levels_grid, repeats, device, dtype) -> list[dict]:
    rows = []
    for n in sizes:
        for levels in [*levels_grid, None]:  # None: continuous
            times = {"codec": [], "lcodec": []}
            values = {"codec": [], "lcodec": []}
            for r in range(repeats + 1):  # the first is a warm-up
                g = torch.Generator(device=device).manual_seed(r)
                if levels is None:
                    y, z, x = continuous_data(n, g, device, dtype)
                else:
                    y, z, x = tied_data(n, levels, g, device, dtype)
                for name, fn in (("codec", codec), ("lcodec", lcodec)):
                    seconds, value = _timed(fn, device, y, z, x, generator=g)
                    if r:
                        times[name].append(seconds)
                        values[name].append(value)
            diffs = [abs(a - b) for a, b in zip(values["codec"], values["lcodec"], strict=True)]
            row = dict(
                n=n,
                data="continuous" if levels is None else f"{levels} levels",
                codec_ms=1e3 * statistics.median(times["codec"]),
                lcodec_ms=1e3 * statistics.median(times["lcodec"]),
                codec_T=statistics.mean(values["codec"]),
                codec_sd=statistics.stdev(values["codec"]),
                lcodec_T=statistics.mean(values["lcodec"]),
                lcodec_sd=statistics.stdev(values["lcodec"]),
                max_abs_diff=max(diffs),
            )
            row["speedup"] = row["codec_ms"] / row["lcodec_ms"]
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def bench_foci(n, p, levels, repeats, device, dtype) -> list[dict]:
    rows = []
    for method in ("codec", "lcodec"):
        times, picks = [], []
        for r in range(repeats + 1):
            g = torch.Generator(device=device).manual_seed(r)
            features = torch.randint(0, levels, (n, p), generator=g, device=device).to(dtype)
            noise = torch.randn(n, generator=g, device=device, dtype=dtype)
            y = features[:, 3] + 2 * features[:, 11] - features[:, 17] + 0.5 * noise
            _sync(device)
            start = time.perf_counter()
            out = foci(y, features, method=method, generator=g)
            _sync(device)
            if r:
                times.append(time.perf_counter() - start)
                picks.append(sorted(out.selected[:3]) == [3, 11, 17])
        rows.append(
            dict(
                method=method,
                n=n,
                p=p,
                levels=levels,
                seconds=statistics.median(times),
                relevant_first=sum(picks) / len(picks),
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def bench_removal(num_removals, device, dtype) -> list[dict]:
    split = experiment.digits(device=device, dtype=dtype)
    order = torch.randperm(len(split.y), generator=torch.Generator().manual_seed(0))
    removed = order[:num_removals].to(device)
    rows = []
    for kind in ("logreg", "mlp"):
        torch.manual_seed(0)
        model = experiment.make_model(kind, 64, 10).to(split.x)
        experiment.train(model, split.x, split.y, weight_decay=1e-3)
        for selection in ("foci", "all"):
            out = remove_sequentially(
                model,
                lambda o, t: F.cross_entropy(o, t, reduction="none"),
                (split.x, split.y),
                removed,
                selection=selection,
                weight_decay=1e-3,
                residual=False,
                generator=torch.Generator(device=device).manual_seed(0),
                progress=False,
            )
            steps = out.steps
            rows.append(
                dict(
                    model=kind,
                    selection=selection,
                    parameters=sum(p.numel() for p in model.parameters()),
                    block_size=statistics.mean(s.block_size for s in steps),
                    seconds=statistics.median(s.seconds for s in steps),
                    seconds_selection=statistics.median(s.seconds_selection for s in steps),
                )
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sizes = (1000, 2000) if args.quick else (1000, 2000, 5000)
    repeats = 2 if args.quick else args.repeats
    start = time.perf_counter()
    results = dict(
        machine=machine_info(device, dtype),
        options=vars(args),
        statistics=bench_statistics(sizes, (3, 10), repeats, device, dtype),
        foci=bench_foci(1000 if args.quick else 2000, 20, 4, repeats, device, dtype),
        removal=bench_removal(3 if args.quick else 10, device, dtype),
    )
    results["seconds"] = time.perf_counter() - start
    print("\n## CODEC vs L-CODEC (T_n(Y, Z | X), X 2-d, Z 1-d)\n")
    print(
        _markdown(
            results["statistics"],
            [
                "n",
                "data",
                "codec_ms",
                "lcodec_ms",
                "speedup",
                "codec_T",
                "codec_sd",
                "lcodec_T",
                "lcodec_sd",
                "max_abs_diff",
            ],
        )
    )
    print("\n## FOCI over 20 tied features (4 levels), 3 relevant\n")
    print(_markdown(results["foci"], ["method", "n", "p", "seconds", "relevant_first"]))
    print("\n## Seconds per removal on digits (L-FOCI block vs full Hessian)\n")
    print(
        _markdown(
            results["removal"],
            ["model", "selection", "parameters", "block_size", "seconds", "seconds_selection"],
        )
    )
    print(f"\ntotal {results['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
