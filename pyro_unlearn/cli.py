"""The ``pyro-unlearn`` command: run the papers' reproductions from a terminal."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

__all__ = ["main"]


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("pyro-unlearn: --device cuda given, but no CUDA device is available")
    return device


def _table(rows: list[dict], columns: dict[str, str]) -> str:
    def fmt(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [" | ".join(columns.values()), " | ".join("---" for _ in columns)]
    lines += [" | ".join(fmt(r.get(k)) for k in columns) for r in rows]
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> dict:
    """Bayesian linear regression against the closed-form target (EXPERIMENTS.md §3)."""
    from .datasets import linear_regression
    from .experiments import linear_regression as experiment
    from .plots import plot_kl_against_lambda

    device = _device(args.device)
    data = linear_regression(seed=args.seed, device=device)
    quick = args.quick or bool(os.environ.get("CI"))
    settings = dict(train_steps=1000, unlearn_steps=200, num_particles=512) if quick else {}
    results = experiment.run(data=data, seed=args.seed, progress=not args.no_progress, **settings)
    print(
        "Bayesian linear regression, 100 points, 10 erased (a shifted cluster); "
        f"device {device}; q(θ|D) trained in {results['train_seconds']:.1f} s, "
        f"retrained on D_r in {results['retrain_seconds']:.1f} s"
    )
    print(
        _table(
            results["rows"],
            {
                "method": "method",
                "lam": "λ",
                "kl_target": "KL to closed form",
                "kl_retrained": "KL to retrained",
                "seconds": "seconds",
                "ess": "rKL ESS",
            },
        )
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_kl_against_lambda(
        results["rows"],
        {"kl_target": "KL(q_u ‖ closed-form target)", "kl_retrained": "KL(q_u ‖ retrained)"},
        title="Unlearning a cluster from Bayesian linear regression",
    )
    fig.savefig(out / "linear_regression.png", dpi=120)
    print(f"figure: {out / 'linear_regression.png'}")
    return results


def reproduce_banknote(args: argparse.Namespace) -> dict:
    """Logistic regression on banknote, Gaussian and MAF guides (EXPERIMENTS.md §5, Fig. 5)."""
    from .experiments import banknote as experiment
    from .plots import PAPER_PANELS, plot_kl_against_lambda

    device = _device(args.device)
    settings = experiment.QUICK if args.quick or os.environ.get("CI") else {}
    results = experiment.run(
        seed=args.seed, device=device, progress=not args.no_progress, **settings
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Banknote logistic regression, 412 of 1372 points erased; device {device}")
    for guide, fit in results["training"].items():
        rows = [r for r in results["rows"] if r["guide"] == guide]
        floor = results["noise_floor"][guide]
        print(
            f"\n{guide}: q(θ|D) {fit['steps']} ELBO steps ({fit['seconds']:.1f} s, converged: "
            f"{fit['converged']}); retrained on D_r in {results['retrain_seconds'][guide]:.1f} s; "
            f"Monte-Carlo noise floor of the KL: {floor['kl_erased_mean']:.2g} (D_e), "
            f"{floor['kl_remaining_mean']:.2g} (D_r)"
        )
        print(
            _table(
                rows,
                {
                    "method": "method",
                    "lam": "λ",
                    "kl_erased_mean": "KL on D_e",
                    "kl_erased_std": "± std",
                    "kl_remaining_mean": "KL on D_r",
                    "kl_remaining_std": "± std",
                    "seconds": "seconds",
                    "steps": "steps",
                    "ess": "rKL ESS",
                },
            )
        )
        name = {"mvn": "full-covariance Gaussian", "maf": "MAF flow"}.get(guide, guide)
        fig = plot_kl_against_lambda(rows, PAPER_PANELS, title=f"Banknote, {name} guide")
        fig.savefig(out / f"banknote_{guide}.png", dpi=120)
        print(f"figure: {out / f'banknote_{guide}.png'}")
    return results


EXPERIMENTS = {"banknote": reproduce_banknote}


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--out", default="results", help="directory for the figures (default: results)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a short run (also when CI is set)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyro-unlearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="linear regression: unlearn against the closed form")
    _common_options(p)
    p.set_defaults(run=demo)
    p = sub.add_parser("reproduce", help="run one of the papers' experiments")
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    _common_options(p)
    args = parser.parse_args(argv)
    run = getattr(args, "run", None) or EXPERIMENTS[args.experiment]
    results = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
