"""Membership inference on the moons' D_e, paired over non-member draws, without Monte-Carlo
noise: every posterior's losses by quadrature."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import torch
from tqdm import tqdm

import pyro_unlearn as pu
from pyro_unlearn.experiments.datasets import MoonsData, moons
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.experiments.membership import compare, compared_posteriors, summarise
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import (
    MembershipAttack,
    gaussian_kl,
    logistic_log_predictive,
    loss_and_entropy,
    membership_attack,
)

from .fit import exact_optimum, retrain_reference, train_full_posterior
from .model import SparseGPClassifier
from .reproduction import DEMO, mia_nonmembers

__all__ = ["MIA_STUDY_METRICS", "MIA_STUDY_QUICK", "membership_study", "quadrature_predictive"]

#: Settings of a short :func:`membership_study` (``--quick``, the tests and the notebook's smoke
#: mode): the same pipeline, far fewer steps.
MIA_STUDY_QUICK = dict(
    seeds=(0, 1),
    retrain_steps=800,
    retrain_particles=64,
    unlearn_steps=200,
    num_particles=128,
    mia_repeats=2,
)

#: The scores :func:`membership_study` compares: the attacks against the matched non-members
#: (``mia_*``) and the loss gap, then the same against the population (``mia_population_*``).
MIA_STUDY_METRICS = (
    *MembershipAttack.column_names("mia"),
    "loss_gap",
    *MembershipAttack.column_names("mia_population"),
    "population_loss_gap",
)

#: The posteriors that are not unlearned ones, in the order of the study's rows.
_REFERENCES = ("full", "retrained", "retrained again", "retrained (exact)")


def _quadrature_log_predictive(
    model: SparseGPClassifier, loc: torch.Tensor, cov: torch.Tensor, x: torch.Tensor, num_nodes
) -> torch.Tensor:
    """log p(y|x), y = 0, 1, for q(u) = N(loc, cov): f(x) = a_x·u ~ N(a_x·loc, a_xᵀ cov a_x)."""
    a = model.projection(x)
    loc, cov = loc.to(a), cov.to(a)
    mean = a @ loc
    sd = ((a @ cov) * a).sum(-1).clamp_min(0).sqrt()
    return logistic_log_predictive(mean, sd, num_nodes)


def quadrature_predictive(
    model: SparseGPClassifier, posterior, x: torch.Tensor, *, num_nodes: int = 64
) -> torch.Tensor:
    r"""log p(y|x) for y = 0, 1 under the posterior predictive of the authors' model with a
    Gaussian q(u), by Gauss–Hermite quadrature instead of Monte Carlo.

    The logit f(x) = a_x·u (a_x the row of K_xu K_uu⁻¹) is N(m, s²) with m = a_x·μ,
    s² = a_xᵀΣa_x, so

    .. math:: p(y=1|x) = E[σ(f)] ≈ \frac{1}{\sqrt π} \sum_i ω_i\, σ(m + \sqrt2\, s\, t_i)

    evaluated in log space. −log p(y|x) is then a deterministic function of (μ, Σ): every
    posterior's per-example loss without Monte-Carlo noise.

    Arguments:
        model: the authors' model (:class:`SparseGPClassifier`).
        posterior: a Gaussian q(u) (an ``AutoMultivariateNormal``, live or frozen).
        x: inputs, shape (points, 2).
        num_nodes: quadrature nodes, in [1, 300].

    Returns:
        A tensor of shape ``(len(x), 2)`` in the model's dtype and device.

    Example:
        >>> from pyro.infer.autoguide import AutoMultivariateNormal, init_to_mean
        >>> from pyro_unlearn.experiments.datasets import moons
        >>> data = moons()
        >>> model = SparseGPClassifier(data.inducing)
        >>> guide = AutoMultivariateNormal(model, init_loc_fn=init_to_mean)
        >>> q = pu.freeze(guide, data.x, data.y)  # u ~ N(0, 0.1² I): p(y=1|x) = ½ by symmetry
        >>> quadrature_predictive(model, q, data.x[:2]).exp()
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]], dtype=torch.float64)
    """
    if not isinstance(model, SparseGPClassifier):
        raise TypeError(
            "quadrature_predictive needs the authors' model (SparseGPClassifier), got "
            f"{type(model).__name__}"
        )
    dims = model.inducing.shape[-1]
    if x.dim() != 2 or x.shape[-1] != dims:
        raise ValueError(f"x must be (points, {dims}), got shape {tuple(x.shape)}")
    loc, cov = read_gaussian(posterior)  # TypeError for a guide that is not Gaussian
    return _quadrature_log_predictive(model, loc, cov, x, num_nodes)


def _check_seeds(seeds: Sequence[int]) -> None:
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if min(seeds) < 0:  # mia_nonmembers draws random_state = s + 1; the data's is 0
        raise ValueError(f"seeds must be non-negative (seed −1 would redraw the data), got {seeds}")


def _fit_posteriors(data: MoonsData, options: dict) -> tuple:
    """q(u|D), two retrainings from two random streams, the exact D_r optimum and the λ sweep:
    ``(model, posteriors, fits, moments)``, each by name."""
    x, y = data.x, data.y
    x_e, y_e = x[data.erased], y[data.erased]
    x_r, y_r = x[data.remaining], y[data.remaining]
    pyro.clear_param_store()
    pyro.set_rng_seed(options["seed"])
    model = SparseGPClassifier(data.inducing)
    guide, fit = train_full_posterior(model, x, y)
    posterior = pu.freeze(guide, x_e, y_e)
    retrain = {k: options[f"retrain_{k}"] for k in ("steps", "particles", "lr", "decay")}
    references = [  # the second continues the random stream: the optimiser's noise
        retrain_reference(
            model,
            guide,
            x_r,
            y_r,
            num_steps=retrain["steps"],
            num_particles=retrain["particles"],
            lr=retrain["lr"],
            decay=retrain["decay"],
            progress=options["progress"],
        )
        for _ in range(2)
    ]
    exact = exact_optimum(model, x_r, y_r, *read_gaussian(guide))
    sweep = pu.lambda_sweep(
        model,
        guide,
        x_e,
        y_e,
        evaluate=lambda q: {},
        lambdas=options["lambdas"],
        methods=options["methods"],
        posterior=posterior,
        guide_name="mvn",
        progress=options["progress"],
        num_particles=options["num_particles"],
        lr=options["lr"],
        num_steps=options["unlearn_steps"],
        window=max(options["unlearn_steps"] // 2, 1),
        max_plate_nesting=1,
    )
    full_fit = (fit["seconds"], fit["iterations"], fit["converged"])
    chosen, fits = compared_posteriors(posterior, full_fit, references, sweep)
    fits["retrained (exact)"] = (None, None, None)
    moments = {name: read_gaussian(q) for name, q in chosen.items()}
    moments["retrained (exact)"] = exact
    return model, chosen, fits, moments


@dataclass(frozen=True)
class _QuadratureScores:
    """Every posterior's per-example loss and predictive entropy, exact (quadrature)."""

    model: SparseGPClassifier
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]]
    num_nodes: int

    def log_predictive(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """log p(y|x), y = 0, 1, per posterior, in the order of ``moments``."""
        # float64: in float32, rounding (~3e-6) would be the largest error left in the losses
        return {
            name: _quadrature_log_predictive(self.model, loc, cov, inputs.double(), self.num_nodes)
            for name, (loc, cov) in self.moments.items()
        }

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict:
        """``(loss, entropy)`` per posterior."""
        return {n: loss_and_entropy(lp, labels) for n, lp in self.log_predictive(inputs).items()}


def _attack_rows(members: dict, outside: dict, fits: dict, seed: int, repeats: int) -> list:
    """One row per posterior for one draw of non-members: both groups' attacks and loss gaps,
    and the members' distances to the retrained and full posteriors' losses."""
    loss_r, loss_f = members["retrained"][0], members["full"][0]
    rows = []
    for name, (loss_m, h_m) in members.items():
        columns = {}
        for group, prefix, gap in (
            ("matched", "mia", "loss_gap"),
            ("population", "mia_population", "population_loss_gap"),
        ):
            loss_n, h_n = outside[group][name]
            attack = membership_attack(
                loss_m, loss_n, features=(h_m, h_n), repeats=repeats, seed=seed
            )
            columns |= attack.columns(prefix)
            columns[gap] = float(loss_n.mean() - loss_m.mean())
        seconds, steps, converged = fits[name]
        rows.append(
            {
                "seed": seed,
                "posterior": name,
                **columns,
                "loss_to_retrained": float((loss_m - loss_r).abs().mean()),
                "loss_to_full": float((loss_m - loss_f).abs().mean()),
                "seconds": seconds,
                "steps": steps,
                "converged": None if converged is None else bool(converged),
            }
        )
    return rows


def _per_example(log_p_e: dict, members: dict) -> list[dict]:
    """Per posterior, on D_e: the mean distances of its losses to the retrained and full
    posteriors', the paper's averaged predictive KL from each (exact) and on how many examples
    it is closer to the retrained one."""
    loss_r, loss_f = members["retrained"][0], members["full"][0]
    per_example = []
    for name, (loss, _) in members.items():
        to_r, to_f = (loss - loss_r).abs(), (loss - loss_f).abs()
        kl = {  # the paper's metric on D_e, exact: KL[p_ref(y|x) ‖ p(y|x)] averaged over D_e
            ref: float((log_p_e[ref].exp() * (log_p_e[ref] - log_p_e[name])).sum(-1).mean())
            for ref in ("retrained", "full")
        }
        per_example.append(
            {
                "posterior": name,
                "loss_to_retrained": float(to_r.mean()),
                "loss_to_full": float(to_f.mean()),
                "kl_from_retrained": kl["retrained"],
                "kl_from_full": kl["full"],
                "closer_examples": int((to_r < to_f).sum()),
                "num_examples": len(loss),
            }
        )
    return per_example


def membership_study(
    seeds: Sequence[int] = tuple(range(10)),
    *,
    lambdas: Sequence[float] = (1e-9, 0.0),
    methods: Sequence[str] = ("eubo", "rkl"),
    data: MoonsData | None = None,
    retrain_steps: int = DEMO["retrain_steps"],
    retrain_particles: int = 128,
    retrain_lr: float = 0.05,
    retrain_decay: float = 0.01,
    unlearn_steps: int = DEMO["unlearn_steps"],
    num_particles: int = DEMO["num_particles"],
    lr: float = DEMO["lr"],
    num_nodes: int = 64,
    mia_nonmembers_per_group: int = 200,
    mia_repeats: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    keep_posteriors: bool = False,
) -> dict:
    """Membership inference on D_e for the authors' model, paired and over several draws of
    non-members (not in the paper).

    D_e is fixed by the erasure, so the posteriors are fitted once, with ``seed`` and
    :func:`run`'s protocol at the demo's settings (:data:`DEMO`): q(u|D) the exact Gaussian-VI
    optimum ("full"), retrained on D_r from it twice from two random streams ("retrained", the
    reference, and "retrained again": the optimiser's noise floor), the exact Gaussian-VI optimum
    on D_r ("retrained (exact)"), and D_e unlearned with every method at every λ. Every
    posterior's loss −log p(y|x) and predictive entropy come from :func:`quadrature_predictive`:
    the scores are deterministic given the posterior. Then, per seed s, fresh non-members
    (:func:`mia_nonmembers` with seed s) are attacked with
    :func:`~pyro_unlearn.metrics.membership_attack` on the same members, non-members and folds
    (seeded by s) for every posterior: paired. The seeds' spread is the non-members' draw only.

    Arguments:
        seeds: the non-member draws (non-negative).
        lambdas: the λ grid.
        methods: the unlearning methods.
        data: the data (default: the sorted erasure).
        retrain_steps, retrain_particles, retrain_lr, retrain_decay: the retraining, as
            :func:`run`'s.
        unlearn_steps, num_particles, lr: unlearning, as :func:`run`'s.
        num_nodes: the quadrature's nodes.
        mia_nonmembers_per_group: non-members per group and draw (matched, population).
        mia_repeats: the attacks' balanced resamples.
        seed: the seed of the fits.
        device: the device of the default data.
        progress: progress bars.
        keep_posteriors: also return ``"posteriors"`` (frozen; not JSON) and ``"model"``.

    Returns:
        ``{"rows", "summary", "comparisons", "per_example", "settings"}``: ``rows`` one per
        (seed, posterior) with the ``mia_*`` (matched) and ``mia_population_*`` columns,
        ``loss_gap`` and ``population_loss_gap`` (mean loss of the non-members − that of the
        members; > 0: members fit better), ``loss_to_retrained`` and ``loss_to_full`` (mean
        |ℓ − ℓ_retrained| and |ℓ − ℓ_full| over D_e, paired per example) and the fit's
        ``seconds``, ``steps``, ``converged`` (the full fit's steps are L-BFGS iterations; the
        exact D_r optimum has none); ``summary`` their mean and sd over seeds per posterior;
        ``comparisons`` per unlearned posterior and metric of :data:`MIA_STUDY_METRICS`: on how
        many seeds |u − r| < |u − f|, whether it holds for the seed means, the mean absolute
        differences, ``gap_over_noise`` = |f − r| / |r' − r| (r' "retrained again") and the
        signed paired f − r and u − r; ``per_example`` per posterior, on D_e:
        ``loss_to_retrained``, ``loss_to_full``, ``kl_from_retrained``, ``kl_from_full`` (the
        paper's averaged predictive KL, exact) and ``closer_examples``.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        study = membership_study(**MIA_STUDY_QUICK)
        pd.DataFrame(study["comparisons"])
    """
    _check_seeds(seeds)
    start = time.perf_counter()
    data = data or moons("sorted", device=device)
    options = dict(
        seeds=seeds,
        data=data,
        lambdas=lambdas,
        methods=methods,
        retrain_steps=retrain_steps,
        retrain_particles=retrain_particles,
        retrain_lr=retrain_lr,
        retrain_decay=retrain_decay,
        unlearn_steps=unlearn_steps,
        num_particles=num_particles,
        lr=lr,
        num_nodes=num_nodes,
        mia_repeats=mia_repeats,
        seed=seed,
        progress=progress,
    )
    model, chosen, fits, moments = _fit_posteriors(data, options)
    names = [*_REFERENCES, *(n for n in chosen if n not in _REFERENCES)]
    groups = {s: mia_nonmembers(data, mia_nonmembers_per_group, s) for s in seeds}
    scores = _QuadratureScores(model, {n: moments[n] for n in names}, num_nodes)
    log_p_e = scores.log_predictive(data.x[data.erased])
    members = {n: loss_and_entropy(lp, data.y[data.erased]) for n, lp in log_p_e.items()}
    rows = []
    for s in tqdm(seeds, desc="membership study (non-member draws)", disable=not progress):
        outside = {group: scores(*xy) for group, xy in groups[s].items()}
        rows += _attack_rows(members, outside, fits, s, mia_repeats)
    columns = [*MIA_STUDY_METRICS, "loss_to_retrained", "loss_to_full"]
    unlearned = [n for n in names if n not in _REFERENCES]
    results = {
        "rows": rows,
        "summary": summarise(rows, names, columns),
        "comparisons": [compare(rows, n, m) for n in unlearned for m in MIA_STUDY_METRICS],
        "per_example": _per_example(log_p_e, members),
        "settings": _study_settings(options, groups, moments, start),
    }
    if keep_posteriors:
        results["posteriors"] = chosen
        results["model"] = model
    return results


def _study_settings(options: dict, groups: dict, moments: dict, start: float) -> dict:
    """The study's settings, the retrainings' KL to the exact D_r optimum and the machine."""
    data, seeds = options["data"], options["seeds"]
    x = data.x
    keys = ("lambdas", "methods", "retrain_steps", "retrain_particles", "retrain_lr")
    keys += ("retrain_decay", "unlearn_steps", "num_particles", "lr", "num_nodes")
    return {
        "seeds": list(seeds),
        "scenario": data.scenario,
        "model": "mvn",
        "num_members": len(data.erased),
        "num_nonmembers": {g: len(v[1]) for g, v in groups[seeds[0]].items()},
        **{k: list(options[k]) if k in ("lambdas", "methods") else options[k] for k in keys},
        "mia_repeats": options["mia_repeats"],
        "seed": options["seed"],
        "retrain_kl_to_exact": {
            name: float(gaussian_kl(*moments[name], *moments["retrained (exact)"]))
            for name in ("retrained", "retrained again")
        },
        "device": str(x.device),
        "dtype": str(x.dtype),
        "machine": machine_info(x.device, x.dtype),
        "seconds": time.perf_counter() - start,
    }
