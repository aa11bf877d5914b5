"""Fashion-MNIST with a Bayesian last layer: the figures and the ``reproduce`` command."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from pyro_unlearn.sweep import PAPER_PANELS, plot_kl_against_lambda

from .study import CLASSES, PAPER, QUICK, run

__all__ = ["plot_class_probabilities", "reproduce"]


def plot_class_probabilities(results: dict):
    """The paper's Fig. 6c–d: the predictive class probabilities of the four shown test images
    (:data:`~pyro_unlearn.experiments.fashion_mnist.SHOWN_CLASSES`) under q(θ|D), the retrained
    posterior and the EUBO's and reverse KL's at λ = 0, one panel per image.

    Arguments:
        results: what :func:`~pyro_unlearn.experiments.fashion_mnist.run` returned.

    Returns:
        The matplotlib figure.

    Example::

        fig = plot_class_probabilities(run(**QUICK))
        fig.savefig("fashion_mnist_probabilities.png")
    """
    import matplotlib.pyplot as plt

    probs = results["class_probabilities"]
    names = [k for k in probs if k not in ("test_rows", "labels")]
    fig, axes = plt.subplots(1, len(probs["labels"]), figsize=(4 * len(probs["labels"]), 3.2))
    width = 0.8 / len(names)
    for i, (ax, label) in enumerate(zip(axes, probs["labels"], strict=True)):
        for j, name in enumerate(names):
            xs = [c + (j - (len(names) - 1) / 2) * width for c in range(10)]
            ax.bar(xs, probs[name][i], width, label=name)
        ax.set(title=f"test image {probs['test_rows'][i]}: {CLASSES[label]}", ylim=(0, 1))
        ax.set_xticks(range(10), CLASSES, rotation=90, fontsize=7)
    axes[0].set_ylabel("class probability")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


#: The columns :func:`reproduce` prints.
_COLUMNS = {
    "method": "method",
    "lam": "λ",
    "mass": "kept mass",
    "kl_erased_mean": "KL on D_e",
    "kl_erased_std": "± std",
    "kl_remaining_mean": "KL on D_r",
    "kl_remaining_std": "± std",
    "acc_test": "test acc.",
    "mia_accuracy": "MIA acc",
    "mia_auc": "MIA AUC",
    "seconds": "seconds",
    "ess": "rKL ESS",
    "verdict": "verdict",
    "pareto_k": "k̂",
}


def _table(rows: list[dict]) -> str:
    def fmt(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [" | ".join(_COLUMNS.values()), " | ".join("---" for _ in _COLUMNS)]
    return "\n".join(lines + [" | ".join(fmt(r.get(k)) for k in _COLUMNS) for r in rows])


def reproduce(args: argparse.Namespace) -> dict:
    """``pyro-unlearn reproduce fashion-mnist``: :func:`~.study.run` with the command's options,
    the table printed and the two figures (KL against λ, class probabilities) written.

    Arguments:
        args: the command's options: ``quick`` (or ``$CI``: :data:`~.study.QUICK` on the
            shipped subset; else :data:`~.study.PAPER`), ``out`` (the figures' directory,
            created), ``seed`` (``None``: 0), ``device``, and optionally ``no_progress`` and
            ``fashion_dir`` (the IDX files).

    Returns:
        The results (JSON-serialisable), as :func:`~.study.run` returns them.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 4.3, Fig. 6).

    Example::

        reproduce(argparse.Namespace(quick=True, out="results", seed=0, device="cpu"))
    """
    import matplotlib.pyplot as plt

    quick = args.quick or bool(os.environ.get("CI"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = QUICK if quick else PAPER
    seed = 0 if getattr(args, "seed", None) is None else args.seed
    results = run(
        getattr(args, "fashion_dir", None), seed=seed, device=torch.device(args.device),
        progress=not getattr(args, "no_progress", False), **settings,
    )  # fmt: skip
    s, net = results["settings"], results["network"]
    print(
        f"Fashion-MNIST, Bayesian last layer: {s['num_erased']} of {s['num_data']} training "
        f"images erased at random; network 784-{'-'.join(map(str, s['hidden']))}-10 "
        f"({net['epochs']} Adam epochs, {net['seconds']:.1f} s, test accuracy "
        f"{net['acc_test']:.3f}); device {s['device']}"
    )
    fit = results["training"]
    print(
        f"q(θ|D) mean-field: {fit['steps']} SVI steps ({fit['seconds']:.1f} s, converged: "
        f"{fit['converged']}); retrained on D_r in {results['retrain_steps']} steps, "
        f"{results['retrain_seconds']:.1f} s (test accuracy "
        f"{results['retrained']['acc_test']:.3f}, MIA AUC {results['retrained']['mia_auc']:.3f}); "
        "Monte-Carlo noise floor of the KL: "
        f"{results['noise_floor']['kl_erased_mean']:.2g} (D_e), "
        f"{results['noise_floor']['kl_remaining_mean']:.2g} (D_r)"
    )
    print(_table(results["rows"]))
    fig = plot_kl_against_lambda(
        results["rows"], PAPER_PANELS, title="Fashion-MNIST, Bayesian last layer (mean-field)"
    )
    fig.savefig(out / "fashion_mnist_kl.png", dpi=120)
    fig = plot_class_probabilities(results)
    fig.savefig(out / "fashion_mnist_probabilities.png", dpi=120)
    plt.close("all")
    print(f"figures: {out / 'fashion_mnist_kl.png'}, {out / 'fashion_mnist_probabilities.png'}")
    json.dumps(results, allow_nan=False)  # what --json writes: fail here, not after the run
    return results
