"""The moons reproduction: fit q(u|D), retrain the reference, sweep λ, score every posterior."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

import pyro_unlearn as pu
from pyro_unlearn.experiments import json_safe
from pyro_unlearn.experiments.datasets import MOONS_SCENARIOS, MoonsData, moons
from pyro_unlearn.experiments.machine import machine_info
from pyro_unlearn.metrics import gaussian_kl, mean_and_std, membership_inference, predictive_kl

from .fit import MODELS, ModelVariant, gaussian_entropy, retrain_reference
from .solvers import full_row, natural_methods, natural_sweep

__all__ = [
    "AUTHORS",
    "DEMO",
    "MOONS_NOISE",
    "QUICK",
    "mia_nonmembers",
    "run",
    "run_scenarios",
]

#: The authors' numbers (their code's; sorted erasure, full-covariance Gaussian, 30 000 steps):
#: averaged predictive KL to the retrained posterior, ``(D_e, D_r)`` per method and λ.
AUTHORS = {
    "eubo": {
        0.5: (0.442, 0.0024),
        0.1: (0.458, 0.0024),
        1e-3: (0.406, 0.0025),
        1e-5: (0.228, 0.0015),
        1e-9: (0.072, 0.0012),
        0.0: (3.45, 0.081),
    },
    "rkl": {
        0.5: (0.455, 0.0024),
        0.1: (0.451, 0.0025),
        1e-3: (0.359, 0.0025),
        1e-5: (0.129, 0.0016),
        1e-9: (0.025, 0.0009),
        0.0: (0.025, 0.0010),
    },
    "full": {1.0: (0.449, 0.0022)},
}

#: Settings of a short run (``--quick``, the test suite): the same pipeline, far fewer steps.
QUICK = dict(
    lambdas=(1e-9, 0.0),
    retrain_steps=800,
    retrain_particles=64,
    unlearn_steps=300,
    num_particles=256,
    lr=0.1,
    num_eval_samples=1000,
    diagnose_samples=300,
    solver="natural",
    natural_samples=4000,
)

#: Settings of ``pyro-unlearn demo``: the full λ grid in under two minutes on 2 CPU cores; the
#: reverse KL by moment matching (4000 draws a step, stopping by its own rule within 600 steps).
DEMO = dict(
    retrain_steps=1000,
    unlearn_steps=600,
    num_particles=512,
    lr=0.1,
    solver="natural",
    natural_samples=4000,
)

#: The moons' noise, as :func:`~pyro_unlearn.experiments.datasets.moons` draws them.
MOONS_NOISE = 0.2


def mia_nonmembers(
    data: MoonsData, num: int = 200, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fresh non-members for membership inference: draws of ``make_moons(noise=0.2,
    random_state=seed + 1)`` (the data's own are ``random_state=0``).

    Arguments:
        data: the moons and their erasure.
        num: points per group.
        seed: the draw (``random_state = seed + 1``).

    Returns:
        ``{"matched": (x, y), "population": (x, y)}`` in the data's dtype and device:
        ``"matched"`` the first ``num`` draws that the scenario's rule for D_e would pick (sorted:
        x₀ ≥ D_e's smallest x₀; partial/large/full: class 1 and that x₀; random: any),
        ``"population"`` the first ``num``.

    Example:
        >>> from pyro_unlearn.experiments.datasets import moons
        >>> data = moons()
        >>> x, y = mia_nonmembers(data, 50)["matched"]
        >>> x.shape, bool((x[:, 0] >= data.x[data.erased, 0].min()).all())
        (torch.Size([50, 2]), True)
    """
    from sklearn.datasets import make_moons

    x, y = make_moons(40 * num, noise=MOONS_NOISE, random_state=seed + 1)
    x, y = data.x.new_tensor(x), data.y.new_tensor(y)
    cut = data.x[data.erased, 0].min()
    if data.scenario == "sorted":
        keep = x[:, 0] >= cut
    elif data.scenario == "random":
        keep = torch.ones_like(y, dtype=torch.bool)
    elif data.scenario in ("partial", "large", "full"):
        keep = (y == 1) & (x[:, 0] >= cut)
    else:
        raise ValueError(f"no non-member rule for the moons scenario {data.scenario!r}")
    matched = keep.nonzero().squeeze(-1)[:num]
    return {"matched": (x[matched], y[matched]), "population": (x[:num], y[:num])}


def _fixed_gaussian(loc: torch.Tensor, cov: torch.Tensor, site: str = "u") -> Callable:
    """A guide function with q(site) = N(loc, cov) and no parameters."""
    q = dist.MultivariateNormal(loc, covariance_matrix=cov)

    def guide(*args, **kwargs):
        return pyro.sample(site, q)

    return guide


@dataclass(frozen=True)
class _Protocol:
    """:func:`run`'s settings, as its steps share them."""

    lambdas: Sequence[float]
    retrain_steps: int
    retrain_particles: int
    retrain_lr: float
    retrain_decay: float
    unlearn_steps: int
    num_particles: int
    lr: float
    num_eval_samples: int
    mia_repeats: int
    seed: int
    progress: bool
    diagnose_samples: int = 1000
    solver: str = "sgd"
    natural_samples: int = 4000


@dataclass(frozen=True)
class _Evaluation:
    """How a posterior q is scored against the retrained one: the averaged predictive KL on D_e
    and D_r (:meth:`kl`) and membership inference on D_e (:meth:`membership`)."""

    predictive: Callable
    reference: Callable
    data: MoonsData
    nonmembers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    protocol: _Protocol

    def kl(self, q, reference: Callable | None = None, num_samples: int | None = None) -> dict:
        """``kl_{erased,remaining}_{mean,std}`` of KL[p_reference(y|x) ‖ p_q(y|x)]."""
        reference = self.reference if reference is None else reference
        samples = self.protocol.num_eval_samples if num_samples is None else num_samples
        kls = {}
        for where, index in (("erased", self.data.erased), ("remaining", self.data.remaining)):
            kl = predictive_kl(
                self.predictive, reference, q, self.data.x[index], site="y", num_samples=samples
            )
            kls[f"kl_{where}_mean"], kls[f"kl_{where}_std"] = mean_and_std(kl)
        return kls

    def membership(self, q) -> dict:
        """The ``mia_*`` (matched non-members) and ``mia_population_*`` columns."""
        members = (self.data.x[self.data.erased], self.data.y[self.data.erased])
        columns = {}
        for group, outside in self.nonmembers.items():
            attack = membership_inference(
                self.predictive,
                {"q": q},
                members,
                outside,
                num_samples=self.protocol.num_eval_samples,
                entropy=True,
                repeats=self.protocol.mia_repeats,
                seed=self.protocol.seed,
            )["q"]
            columns |= attack.columns("mia" if group == "matched" else "mia_population")
        return columns

    def __call__(self, q) -> dict:
        return self.kl(q) | self.membership(q)


def _retrain_record(reference: pu.RetrainResult) -> dict:
    """The retraining's steps, convergence and loss trace (means of blocks, ≤ 500 of them)."""
    block = max(1, math.ceil(len(reference.losses) / 500))
    trace = torch.tensor(reference.losses[: len(reference.losses) // block * block])
    return {
        "retrain_steps": len(reference.losses),
        "retrain_converged": reference.converged,
        "retrain_loss_block": block,
        "retrain_loss_trace": trace.reshape(-1, block).mean(-1).tolist(),
    }


def _score_reference(
    name: str, variant: ModelVariant, model, start, reference, evaluation, results, fit
) -> None:
    """The retrained posterior's membership scores, the KL's Monte-Carlo noise floor (at our
    sample count and the authors' 100) and, where the variant has an exact optimum on D_r, the
    reference's distance to it and the exact entropy reduction."""
    loc, cov = start
    data = evaluation.data
    results["mia"][name] = {"retrained": evaluation.membership(reference.posterior)}
    results["noise_floor"][name] = evaluation.kl(reference.posterior)
    results["noise_floor_100"][name] = evaluation.kl(reference.posterior, num_samples=100)
    if variant.optimum is None:
        return
    x_r, y_r = data.x[data.remaining], data.y[data.remaining]
    opt_loc, opt_cov = variant.optimum(model, x_r, y_r, loc, cov)
    ref_loc, ref_cov = variant.moments(reference.posterior)  # a frozen posterior's: copies
    fit["retrain_kl_to_optimum"] = float(gaussian_kl(ref_loc, ref_cov, opt_loc, opt_cov))
    results["entropy_reduction_exact"][name] = gaussian_entropy(opt_cov) - gaussian_entropy(cov)
    exact = _fixed_gaussian(opt_loc, opt_cov, variant.site)
    results["reference_error"][name] = evaluation.kl(reference.posterior, reference=exact)


def _run_variant(name: str, data: MoonsData, nonmembers: dict, protocol: _Protocol, results):
    """One model variant through the protocol: fit q(u|D), retrain the reference, score it, sweep
    λ. Fills ``results`` and returns ``(model, predictive, posteriors)``."""
    variant, p = MODELS[name], protocol
    x_e, y_e = data.x[data.erased], data.y[data.erased]
    x_r, y_r = data.x[data.remaining], data.y[data.remaining]
    pyro.clear_param_store()
    pyro.set_rng_seed(p.seed)
    model = variant.build(data)
    predictive = model if variant.predictive is None else variant.predictive(model)
    guide, fit = variant.fit(model, data.x, data.y)
    loc, cov = (t.clone() for t in variant.moments(guide))
    posterior = pu.freeze(guide, x_e, y_e)
    reference = retrain_reference(
        model,
        guide,
        x_r,
        y_r,
        num_steps=p.retrain_steps,
        num_particles=p.retrain_particles,
        lr=p.retrain_lr,
        decay=p.retrain_decay,
        progress=p.progress,
    )
    fit |= _retrain_record(reference)
    results["retrain_seconds"][name] = reference.seconds
    ref_cov = variant.moments(reference.posterior)[1]
    results["entropy_reduction"][name] = gaussian_entropy(ref_cov) - gaussian_entropy(cov)
    evaluation = _Evaluation(predictive, reference.posterior, data, nonmembers, p)
    _score_reference(name, variant, model, (loc, cov), reference, evaluation, results, fit)
    results["training"][name] = fit
    natural = natural_methods(p.solver, guide)
    rows, posteriors = _sgd_sweep(name, model, guide, evaluation, posterior, natural, p)
    if natural:
        more, unlearned = natural_sweep(
            model, guide, x_e, y_e, methods=natural, evaluate=evaluation, lambdas=p.lambdas,
            posterior=posterior, guide_name=name, num_samples=p.natural_samples,
            num_steps=p.unlearn_steps, diagnose_samples=p.diagnose_samples,
        )  # fmt: skip
        rows, posteriors = rows + more, posteriors | unlearned
    order = {lam: i for i, lam in enumerate(p.lambdas)}  # the sweep's: λ, then eubo before rkl
    rows.sort(key=lambda r: (r["method"] != "full", order.get(r["lam"], -1), r["method"]))
    results["rows"].extend(
        {k: json_safe(v) for k, v in r.items()} | {"scenario": data.scenario} for r in rows
    )
    return model, predictive, {"retrained": reference.posterior, **posteriors}


def _sgd_sweep(name, model, guide, evaluation, posterior, natural, p: _Protocol):
    """The rows and posteriors of the methods not in ``natural`` by ``pu.lambda_sweep`` (SGD),
    and the ``full`` row; only the ``full`` row when every method is solved in ``natural``."""
    x_e, y_e = (
        evaluation.data.x[evaluation.data.erased],
        evaluation.data.y[evaluation.data.erased],
    )
    methods = [m for m in ("eubo", "rkl") if m not in natural]
    if not methods:
        return [full_row(name, evaluation, posterior)], {"full": posterior}
    sweep = pu.lambda_sweep(
        model,
        guide,
        x_e,
        y_e,
        evaluate=evaluation,
        lambdas=p.lambdas,
        methods=methods,
        posterior=posterior,
        guide_name=name,
        progress=p.progress,
        num_particles=p.num_particles,
        lr=p.lr,
        num_steps=p.unlearn_steps,
        window=max(p.unlearn_steps // 2, 1),
        max_plate_nesting=1,
        diagnose_samples=p.diagnose_samples,
    )
    rows = [
        row | {"solver": None if row["method"] == "full" else "sgd"}
        for row in sweep.table.to_dict("records")
    ]
    return rows, dict(sweep.posteriors)


def _settings(models, built, data: MoonsData, nonmembers: dict, p: _Protocol) -> dict:
    """The run's settings, data and machine, for its JSON."""
    x, y_e = data.x, data.y[data.erased]
    return {
        "models": {name: MODELS[name].description for name in models},
        "scenario": data.scenario,
        "lambdas": list(p.lambdas),
        "num_data": len(data.y),
        "num_erased": len(data.erased),
        "num_erased_class_1": int(y_e.sum()),
        "jitter": {name: getattr(built[name], "jitter", None) for name in models},
        "retrain_steps": p.retrain_steps,
        "retrain_particles": p.retrain_particles,
        "retrain_lr": p.retrain_lr,
        "retrain_decay": p.retrain_decay,
        "unlearn_steps": p.unlearn_steps,
        "num_particles": p.num_particles,
        "lr": p.lr,
        "num_eval_samples": p.num_eval_samples,
        "diagnose_samples": p.diagnose_samples,
        "solver": p.solver,
        "natural_samples": p.natural_samples,
        "mia_nonmembers": {k: len(v[1]) for k, v in nonmembers.items()},
        "mia_repeats": p.mia_repeats,
        "seed": p.seed,
        "device": str(x.device),
        "dtype": str(x.dtype),
        "machine": machine_info(x.device, x.dtype),
    }


def run(
    models: Sequence[str] = ("mvn",),
    *,
    scenario: str = "sorted",
    data: MoonsData | None = None,
    lambdas: Sequence[float] = pu.LAMBDAS,
    retrain_steps: int = 6000,
    retrain_particles: int = 128,
    retrain_lr: float = 0.05,
    retrain_decay: float = 0.01,
    unlearn_steps: int = 3000,
    num_particles: int = 1000,
    lr: float = 0.05,
    num_eval_samples: int = 4000,
    mia_nonmembers_per_group: int = 200,
    mia_repeats: int = 10,
    diagnose_samples: int = 1000,
    solver: str = "sgd",
    natural_samples: int = 4000,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    keep_posteriors: bool = False,
) -> dict:
    """The moons reproduction (the paper's Sec. 4.1, Fig. 2, Appendix F) for one erasure.

    Per model variant (:data:`MODELS`): q(u|D) the exact Gaussian-VI optimum; the reference
    q(u|D_r) retrained from it; then :func:`~pyro_unlearn.lambda_sweep` unlearns D_e by each
    method at each λ, and every posterior is scored by the averaged predictive KL to the
    reference on D_e and D_r and by membership inference on D_e (fresh non-members,
    :func:`mia_nonmembers`).

    Arguments:
        models: keys of :data:`MODELS` (``"mvn"``, the authors' model in plain Pyro;
            ``"gpytorch"``, the GPyTorch SVGP); each variant's rows carry its key in ``guide``.
        scenario: the erasure (:func:`~pyro_unlearn.experiments.datasets.moons`).
        data: the data (default: ``moons(scenario, seed=seed, device=device)``).
        lambdas: the λ grid.
        retrain_steps: the reference's steps (far enough to reach q(u|D_r) from q(u|D) even
            when all of class 1 is erased).
        retrain_particles: the reference's u-samples per step.
        retrain_lr: the reference's ClippedAdam learning rate ...
        retrain_decay: ... decaying by this factor over the run (to end close to q(u|D_r)).
        unlearn_steps: unlearning steps (a fixed number, as the authors ran).
        num_particles: unlearning u-samples per step.
        lr: unlearning's ClippedAdam learning rate, decaying tenfold over the run.
        num_eval_samples: u-samples of each predictive (the authors': 100).
        mia_nonmembers_per_group: fresh non-members per group (matched, population).
        mia_repeats: the attacks' balanced resamples.
        diagnose_samples: draws of each unlearned posterior and of q(u|D) for its trust check
            (:func:`pyro_unlearn.trust.diagnose`, judged without D_r).
        solver: ``"sgd"`` (every method by ClippedAdam steps) or ``"natural"`` (the reverse KL
            of a Gaussian autoguide by moment matching, :func:`pyro_unlearn.infer.
            gaussian_reverse_kl`, at most ``unlearn_steps`` steps; the EUBO and other guides by
            SGD); each row's ``solver`` says which ran.
        natural_samples: u-draws per moment-matching step (the SGD reverse KL's fixed point
            with as many particles).
        device: the device of the default data.
        progress: progress bars.
        keep_posteriors: also return the posteriors and predictive models (not JSON).

    Returns:
        ``{"rows", "retrain_seconds", "settings", ...}``: one row per (variant, method, λ) with
        ``kl_{erased,remaining}_{mean,std}``, seconds, steps, ``converged``, the rKL's last ESS,
        the trust check's ``verdict`` and ``pareto_k`` (None and NaN for ``full``; see
        :func:`~pyro_unlearn.lambda_sweep`) and the ``mia_*``/``mia_population_*`` columns (the
        ``full`` rows, λ = 1, are q(u|D)); and
        per variant ``"training"`` (the fits, the retraining's loss trace as block means, its KL
        to the exact optimum), ``"noise_floor"`` and ``"noise_floor_100"`` (the KL between two
        evaluations of the reference, at ``num_eval_samples`` and the authors' 100 samples),
        ``"reference_error"`` (the KL from the exact D_r optimum to the reference),
        ``"entropy_reduction"`` (H[q(u|D_r)] − H[q(u|D)] of the reference) and
        ``"entropy_reduction_exact"`` (of the exact optima), ``"mia"`` (the reference's scores)
        and ``"scenario"``. ``keep_posteriors=True`` adds ``"posteriors"`` (per variant: the
        frozen reference and the sweep's) and ``"model"`` (per variant: the Pyro model whose
        site ``"y"`` is the predictive, for :func:`predictive_surface`).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        results = run(**QUICK)  # seconds; the defaults (the tutorial's run): about 8 minutes
        pd.DataFrame(results["rows"])
    """
    natural_methods(solver, None)  # checks solver before anything runs
    data = data or moons(scenario, seed=seed, device=device)
    protocol = _Protocol(
        lambdas,
        retrain_steps,
        retrain_particles,
        retrain_lr,
        retrain_decay,
        unlearn_steps,
        num_particles,
        lr,
        num_eval_samples,
        mia_repeats,
        seed,
        progress,
        diagnose_samples,
        solver,
        natural_samples,
    )
    nonmembers = mia_nonmembers(data, mia_nonmembers_per_group, seed)
    keys = ("training", "noise_floor", "noise_floor_100", "reference_error")
    keys += ("entropy_reduction", "entropy_reduction_exact", "mia")
    results: dict = {"rows": [], "retrain_seconds": {}, "scenario": data.scenario}
    results |= {key: {} for key in keys}
    posteriors, built, predictives = {}, {}, {}
    for name in models:
        built[name], predictives[name], posteriors[name] = _run_variant(
            name, data, nonmembers, protocol, results
        )
    results["settings"] = _settings(models, built, data, nonmembers, protocol)
    if keep_posteriors:
        results["posteriors"] = posteriors
        results["model"] = predictives
    return results


def run_scenarios(scenarios: Sequence[str] = MOONS_SCENARIOS, **kwargs) -> dict:
    """:func:`run` for each erasure scenario.

    Arguments:
        scenarios: the erasures (:data:`~pyro_unlearn.experiments.datasets.MOONS_SCENARIOS`).
        kwargs: :func:`run`'s keyword arguments.

    Returns:
        ``{"scenarios": {name: run(...)}}`` plus ``"rows"`` (every scenario's rows, each with
        its ``"scenario"``), ``"retrain_seconds"`` and ``"entropy_reduction"`` (``{scenario:
        {variant: value}}``) and the first run's ``"settings"`` with the list of scenarios.
    """
    runs = {s: run(scenario=s, **kwargs) for s in scenarios}
    first = next(iter(runs.values()))
    return {
        "rows": [row for r in runs.values() for row in r["rows"]],
        "retrain_seconds": {s: r["retrain_seconds"] for s, r in runs.items()},
        "entropy_reduction": {s: r["entropy_reduction"] for s, r in runs.items()},
        "settings": {**first["settings"], "scenario": list(scenarios)},
        "scenarios": runs,
    }
