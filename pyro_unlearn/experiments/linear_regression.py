"""Bayesian linear regression: unlearning against closed-form targets (Nguyen, Low & Jaillet,
Variational Bayesian Unlearning, NeurIPS 2020, Appendix C).

The model is y = x·w + b + N(0, σ²) with w, b ~ N(0, 10²). Every Gaussian in θ = (w, b) here
has a closed-form reference:

* the exact posteriors p(θ|D) and p(θ|D_r) (:func:`exact_posterior`);
* the target of both losses at λ = 0, p̃(θ|D_r) = q(θ|D)/p(D_e|θ) = N(μ̃, Λ̃⁻¹) with
  Λ̃ = Λ_q − σ⁻² X_eᵀX_e and Λ̃μ̃ = Λ_qμ_q − σ⁻² X_eᵀy_e (Bayes' rule run backwards), computed from the
  trained guide's own moments; it is Gaussian with a *full* covariance even when q(θ|D) is
  diagonal, and not a distribution at all when Λ̃ is not positive definite;
* the λ = 0 optimum of each loss over the guide's family (:func:`closed_form_optima`): with a
  full-covariance guide (``guide="mvn"``) both are p̃ itself; with independent Gaussians
  (``guide="diagonal"``, Appendix C) the EUBO's is N(μ̃, diag(Λ̃)⁻¹) (the mean-field projection,
  min KL(q‖p̃)) and the reverse KL's is N(μ̃, diag(Λ̃⁻¹)) (moment matching, min KL(p̃‖q)).

Appendix C's data (:func:`clustered_line`) are 1-D: D_r spread over an interval and D_e a tight
cluster beyond its end, off the line, so that erasing it moves and widens the posterior.
:func:`run` trains q(θ|D) and the reference q(θ|D_r) by Trace_ELBO, unlearns with the EUBO and
the reverse KL over a λ grid, and reports per (method, λ) the KL to the retrained posterior, to
the closed-form target and to the exact p(θ|D_r), and the papers' averaged predictive KL (closed
form here: the predictive of a Gaussian posterior is Gaussian). :func:`plot_predictive_samples`
draws the paper's Fig. 7: regression lines sampled from each posterior over the data.

References:
    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoGuide, AutoMultivariateNormal
from torch.distributions import kl_divergence
from tqdm import tqdm

import pyro_unlearn as pu
from pyro_unlearn.exact import NotNormalizableError
from pyro_unlearn.forget import has_converged
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import gaussian_kl, membership_attack

from . import TRUST_COLUMNS, trust_columns
from .datasets import LinearRegressionData, linear_regression

__all__ = [
    "GUIDES",
    "LAMBDAS",
    "LOSSES",
    "PRIOR_SCALE",
    "closed_form_optima",
    "clustered_line",
    "exact_posterior",
    "linear_model",
    "plot_predictive_samples",
    "predictive_lines",
    "run",
    "train",
]

#: The λ grid of the papers' common protocol.
LAMBDAS = (0.5, 0.1, 1e-3, 1e-5, 1e-9, 0.0)

#: The guide families: full covariance (exact at λ = 0) and independent Gaussians (Appendix C).
GUIDES = {"mvn": AutoMultivariateNormal, "diagonal": AutoDiagonalNormal}

#: The prior scale of w and b in :func:`linear_model`.
PRIOR_SCALE = 10.0


def linear_model(x: torch.Tensor, y: torch.Tensor | None = None, noise_scale: float = 0.5):
    """y ~ N(x·w + b, σ²) with w ~ N(0, 10²)ᴰ, b ~ N(0, 10²)."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, PRIOR_SCALE).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(zero, PRIOR_SCALE))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((w * x).sum(-1) + b, noise_scale), obs=y)


def clustered_line(
    num_remaining: int = 30,
    num_erased: int = 10,
    *,
    remaining_range: tuple[float, float] = (-3.0, 1.0),
    cluster_center: float = 3.0,
    cluster_scale: float = 0.3,
    offset: float = 1.0,
    slope: float = 1.0,
    intercept: float = 0.5,
    noise_scale: float = 0.5,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LinearRegressionData:
    """Appendix C's data: 1-D inputs, y = slope·x + intercept + N(0, σ²). The first
    ``num_erased`` rows are D_e, a cluster x ~ N(``cluster_center``, ``cluster_scale``²) with
    targets ``offset`` above the line; D_r has x ~ U(``remaining_range``). The cluster lies
    beyond D_r's inputs, so it alone pins the line down there: it is informative. Generated on
    the CPU in float64 with its own generator (the same numbers on every device), then moved to
    ``device``/``dtype``; ``x`` is (N, 1).

    Example::

        >>> data = clustered_line(num_remaining=20, num_erased=5)
        >>> data.x.shape, data.erased.tolist()
        (torch.Size([25, 1]), [0, 1, 2, 3, 4])
        >>> bool(data.x[data.erased].min() > data.x[data.remaining].max())
        True
    """
    low, high = (float(v) for v in remaining_range)
    if int(num_remaining) < 1 or int(num_erased) < 1:
        raise ValueError(
            f"need at least one remaining and one erased point, got num_remaining={num_remaining}, "
            f"num_erased={num_erased}"
        )
    if not low < high:
        raise ValueError(
            f"remaining_range must be (low, high) with low < high, got {remaining_range}"
        )
    if not noise_scale > 0 or not cluster_scale >= 0:
        raise ValueError(
            f"noise_scale must be positive and cluster_scale non-negative, got {noise_scale}, "
            f"{cluster_scale}"
        )
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x_erased = cluster_center + cluster_scale * torch.randn(num_erased, generator=g, dtype=f64)
    x_remaining = low + (high - low) * torch.rand(num_remaining, generator=g, dtype=f64)
    x = torch.cat([x_erased, x_remaining])
    y = slope * x + intercept + noise_scale * torch.randn(len(x), generator=g, dtype=f64)
    y[:num_erased] += offset
    dtype = dtype or torch.get_default_dtype()
    return LinearRegressionData(
        x.unsqueeze(-1).to(device=device, dtype=dtype),
        y.to(device=device, dtype=dtype),
        torch.arange(num_erased, device=device),
        float(noise_scale),
    )


def _features(x: torch.Tensor) -> torch.Tensor:
    """[x, 1]: θ = (w, b) in the AutoContinuous latent order (the model's site order)."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=-1)


def exact_posterior(
    x: torch.Tensor, y: torch.Tensor, noise_scale: float, prior_scale: float = PRIOR_SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact p(θ|x, y) of :func:`linear_model` as ``(loc, cov)`` over θ = (w, b).

    Example::

        >>> loc, cov = exact_posterior(torch.zeros(3, 1), torch.ones(3), 1.0)  # x = 0: b only
        >>> round(loc[1].item(), 3), round(cov[0, 0].item(), 1)
        (0.997, 100.0)
    """
    features = _features(x)
    dim = features.shape[-1]
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    loc, precision = pu.exact.gaussian_linear_posterior(
        x.new_zeros(dim), eye / prior_scale**2, features, y, noise_scale
    )
    return loc, torch.linalg.inv(precision)


def closed_form_optima(
    loc: torch.Tensor,
    cov: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    noise_scale: float,
    family: str = "mvn",
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    r"""The λ = 0 target p̃ = q(θ|D)/p(D_e|θ) of q(θ|D) = N(``loc``, ``cov``) and the optimum of
    each loss over a guide ``family``, as ``{"target" | "eubo" | "rkl": (loc, cov)}``:

    .. math:: \text{EUBO: } \arg\min_q \mathrm{KL}(q ‖ p̃), \qquad
              \text{rKL: } \arg\min_q \mathrm{KL}(p̃ ‖ q)

    For ``family="mvn"`` both are p̃ = N(μ̃, Σ̃). For ``family="diagonal"`` (independent
    Gaussians) both keep the mean μ̃; the EUBO's precisions are diag(Λ̃) (narrower) and the
    reverse KL's variances diag(Σ̃) (the marginals). Raises
    :class:`~pyro_unlearn.exact.NotNormalizableError` when Λ̃ is not positive definite: then
    p̃ is no distribution and the EUBO has no optimum (its mean runs off along Λ̃'s negative
    direction).

    Example (p̃ = N(0, [[1, .5], [.5, 1]]), the erased term set to nothing)::

        >>> cov = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
        >>> opt = closed_form_optima(torch.zeros(2), cov, torch.zeros(1, 2), torch.zeros(1),
        ...                          1.0, family="diagonal")
        >>> opt["rkl"][1].diagonal().tolist(), opt["eubo"][1].diagonal().tolist()
        ([1.0, 1.0], [0.75, 0.75])
    """
    if family not in GUIDES:
        raise ValueError(f"family must be one of {sorted(GUIDES)}, got {family!r}")
    t_loc, t_prec = pu.exact.gaussian_linear_unlearn(
        loc, torch.linalg.inv(cov), features, targets, noise_scale
    )
    t_cov = torch.linalg.inv(t_prec)
    t_cov = 0.5 * (t_cov + t_cov.mT)
    if family == "mvn":
        return {"target": (t_loc, t_cov), "eubo": (t_loc, t_cov), "rkl": (t_loc, t_cov)}
    return {
        "target": (t_loc, t_cov),
        "eubo": (t_loc, torch.diag(1.0 / t_prec.diagonal())),
        "rkl": (t_loc, torch.diag(t_cov.diagonal())),
    }


def train(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    num_steps: int,
    progress: bool = False,
    guide: str = "mvn",
    lr: float = 0.05,
) -> tuple[AutoGuide, float]:
    """Fit a Gaussian guide of family ``guide`` (:data:`GUIDES`) by Trace_ELBO (16 particles,
    ClippedAdam, ``lr`` decaying a hundredfold); returns (guide, seconds)."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {sorted(GUIDES)}, got {guide!r}")
    q = GUIDES[guide](model)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / num_steps)})
    svi = SVI(
        model, q, optim, Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    )
    start = time.perf_counter()
    for _ in tqdm(range(num_steps), desc="training q(θ|D)", disable=not progress, leave=False):
        svi.step(x, y)
    return q, time.perf_counter() - start


def _predictive_kl(
    p: tuple[torch.Tensor, torch.Tensor],
    q: tuple[torch.Tensor, torch.Tensor],
    features: torch.Tensor,
    noise_scale: float,
) -> torch.Tensor:
    """KL[p(y|x) ‖ q(y|x)] per row of ``features``: the predictive of N(m, C) over θ is
    N(fᵀm, fᵀCf + σ²) exactly (no Monte Carlo)."""
    return kl_divergence(
        _predictive(*p, features, noise_scale), _predictive(*q, features, noise_scale)
    )


def _predictive(
    loc: torch.Tensor, cov: torch.Tensor, features: torch.Tensor, noise_scale: float
) -> torch.distributions.Normal:
    """p(y|x) per row of ``features`` under θ ~ N(loc, cov): N(fᵀloc, fᵀ cov f + σ²)."""
    var = (features @ cov * features).sum(-1) + noise_scale**2
    return torch.distributions.Normal(features @ loc, var.sqrt())


def _block_means(values: Sequence[float], blocks: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    size = max(1, len(t) // blocks)
    return t[: len(t) // size * size].reshape(-1, size).mean(-1).tolist()


def _listed(m: torch.Tensor, c: torch.Tensor) -> dict[str, list]:
    return {"loc": m.tolist(), "cov": c.tolist()}


def _moments(guide: AutoGuide) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of a Gaussian guide's (loc, cov), which later training leaves as it is."""
    return tuple(t.clone() for t in read_gaussian(guide))


#: The unlearning losses of :func:`run`, by method name.
LOSSES = {"eubo": pu.Trace_EUBO, "rkl": pu.ReverseKL}

_Gaussian = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class _Fits:
    """What :func:`run` trains before unlearning: q(θ|D) (the live guide, and frozen as the
    losses' posterior), the retrained reference and the exact posteriors, each as (loc, cov)."""

    guide: AutoGuide
    posterior: pu.FrozenPosterior
    full: _Gaussian
    retrained: _Gaussian
    exact_full: _Gaussian
    exact_remaining: _Gaussian
    train_seconds: float
    retrain_seconds: float


def _checked_data(data: LinearRegressionData | None, guide: str, seed: int) -> LinearRegressionData:
    """``data``, or the default data of the guide family; checks the family and the shapes."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {sorted(GUIDES)}, got {guide!r}")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if data is None:
        data = clustered_line(seed=seed) if guide == "diagonal" else linear_regression(seed=seed)
    if data.x.dim() != 2 or data.y.shape != data.x.shape[:1]:
        raise ValueError(
            f"data.x must be (N, D) and data.y (N,), got {tuple(data.x.shape)}, "
            f"{tuple(data.y.shape)}"
        )
    return data


def _fit(
    model: Callable, data: LinearRegressionData, guide: str, steps: int, lr: float, progress: bool
) -> _Fits:
    """Step 1: train the reference q(θ|D_r) (in a param store of its own) and q(θ|D)."""
    x, y, keep, noise = data.x, data.y, data.remaining, data.noise_scale
    with pyro.get_param_store().scope():  # the reference lives in its own store
        retrained, retrain_seconds = train(model, x[keep], y[keep], steps, progress, guide, lr)
        ref = _moments(retrained)
    q_guide, train_seconds = train(model, x, y, steps, progress, guide, lr)
    return _Fits(
        guide=q_guide,
        posterior=pu.freeze(q_guide),
        full=_moments(q_guide),
        retrained=ref,
        exact_full=exact_posterior(x, y, noise),
        exact_remaining=exact_posterior(x[keep], y[keep], noise),
        train_seconds=train_seconds,
        retrain_seconds=retrain_seconds,
    )


def _optima(
    fits: _Fits, data: LinearRegressionData, guide: str
) -> tuple[dict[str, _Gaussian], str | None]:
    """The closed-form λ = 0 target and optima (:func:`closed_form_optima`) of q(θ|D), or
    ``{}`` and the reason when the target is not normalisable."""
    erased = data.erased
    try:
        features = _features(data.x)[erased]
        return closed_form_optima(
            *fits.full, features, data.y[erased], data.noise_scale, guide
        ), None
    except NotNormalizableError as e:
        return {}, str(e)


def _default_nonmembers(
    data: LinearRegressionData, guide: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The erased clusters of 20 independent draws of the default data (seeds ``seed + 1``…),
    when their inputs have ``data``'s shape; else ``None``."""
    source = clustered_line if guide == "diagonal" else linear_regression
    x = data.x
    fresh = [source(seed=seed + 1 + k, device=x.device, dtype=x.dtype) for k in range(20)]
    fresh_x = torch.cat([d.x[d.erased] for d in fresh])
    if fresh_x.shape[1:] != x.shape[1:]:
        return None
    return fresh_x, torch.cat([d.y[d.erased] for d in fresh])


class _Scorer:
    """Step 3, the metrics of a Gaussian posterior N(m, c) over θ: KL to the target, the
    retrained and the exact p(θ|D_r), the predictive KL from the retrained one averaged over D_e
    and D_r, and membership inference on D_e against ``nonmembers``."""

    def __init__(self, data, fits: _Fits, target: _Gaussian | None, nonmembers, seed: int):
        self.data, self.fits, self.target, self.seed = data, fits, target, seed
        self.features = _features(data.x)
        self.outside = None if nonmembers is None else (_features(nonmembers[0]), nonmembers[1])

    def mia(self, m: torch.Tensor, c: torch.Tensor) -> dict[str, float]:
        """The ``mia_*`` columns (none without non-members), on the exact predictive NLL."""
        if self.outside is None:
            return {}
        erased, y = self.data.erased, self.data.y
        f = torch.cat([self.features[erased], self.outside[0]])
        nll = -_predictive(m, c, f, self.data.noise_scale).log_prob(
            torch.cat([y[erased], self.outside[1]])
        )
        members, nonmembers = nll[: len(erased)], nll[len(erased) :]
        return membership_attack(members, nonmembers, repeats=5, seed=self.seed).columns("mia")

    def __call__(self, m: torch.Tensor, c: torch.Tensor) -> dict[str, float]:
        fits, target = self.fits, self.target
        pred = _predictive_kl(fits.retrained, (m, c), self.features, self.data.noise_scale)
        kl_target = math.nan if target is None else float(gaussian_kl(m, c, *target))
        return self.mia(m, c) | {
            "kl_target": kl_target,
            "kl_retrained": float(gaussian_kl(m, c, *fits.retrained)),
            "kl_exact": float(gaussian_kl(m, c, *fits.exact_remaining)),
            "kl_erased_mean": float(pred[self.data.erased].mean()),
            "kl_remaining_mean": float(pred[self.data.remaining].mean()),
        }


def _unlearn(
    model: Callable,
    data: LinearRegressionData,
    fits: _Fits,
    method: str,
    lam: float,
    *,
    steps: int,
    num_particles: int,
    lr: float,
    diagnose_samples: int,
) -> tuple[_Gaussian, list[float], float, dict[str, Any]]:
    """Step 2, one unlearning run from q(θ|D): ``steps`` ClippedAdam steps on the ``method``
    loss at ``lam``; returns the unlearned (loc, cov), the loss trace, the seconds and the
    loss's diagnostics at the last step with the trust check of the result (:func:`_trust`)."""
    fits.posterior.restore(fits.guide)
    loss = LOSSES[method](
        fits.posterior, lam, num_particles=num_particles, vectorize_particles=True,
        max_plate_nesting=1,
    )  # fmt: skip
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / steps)})
    svi = SVI(pu.unlearn(model), fits.guide, optim, loss)
    x_e, y_e = data.x[data.erased], data.y[data.erased]
    start = time.perf_counter()
    trace = [svi.step(x_e, y_e) for _ in range(steps)]
    seconds = time.perf_counter() - start
    trust = _trust(model, pu.freeze(fits.guide), fits.posterior, x_e, y_e, lam, diagnose_samples)
    return _moments(fits.guide), trace, seconds, loss.diagnostics() | trust


def _trust(
    model: Callable,
    unlearned: pu.FrozenPosterior,
    original: pu.FrozenPosterior,
    x_e: torch.Tensor,
    y_e: torch.Tensor,
    lam: float,
    num_samples: int,
) -> dict[str, Any]:
    """The trust columns of an unlearned posterior, judged without D_r
    (:func:`pyro_unlearn.trust.diagnose`, :func:`pyro_unlearn.trust.verdict`): ``verdict``,
    ``pareto_k`` and ``kl_to_target``, the estimate of KL(q_u ‖ q(θ|D)/p_adj(D_e|θ; λ))."""
    d = pu.trust.diagnose(model, unlearned, original, x_e, y_e, lam=lam, num_samples=num_samples)
    return trust_columns(d)


def _sweep(
    model: Callable,
    data: LinearRegressionData,
    fits: _Fits,
    score: _Scorer,
    lambdas: Sequence[float],
    *,
    steps: int,
    trace_blocks: int,
    progress: bool,
    **options: Any,
) -> tuple[list[dict], dict[str, _Gaussian], dict[str, list[float]]]:
    """Steps 2 and 3 over every (λ, method): the rows, the unlearned posteriors and the loss
    traces' block means, by label ``"eubo λ=1e-05"``...; q(θ|D) restored at the end."""
    rows, posteriors, traces = [], {}, {}
    jobs = [(m, lam) for lam in lambdas for m in LOSSES]
    for method, lam in tqdm(jobs, desc="unlearning", disable=not progress):
        moments, trace, seconds, diagnostics = _unlearn(
            model, data, fits, method, lam, steps=steps, **options
        )
        label = f"{method} λ={lam:g}"
        posteriors[label] = moments
        traces[label] = _block_means(trace, trace_blocks)
        rows.append(
            {
                "method": method,
                "lam": float(lam),
                **score(*moments),
                "seconds": seconds,
                "ess": diagnostics.get("ess"),
                "converged": has_converged(trace, max(1, steps // 4)),
                **{k: diagnostics[k] for k in TRUST_COLUMNS},
            }
        )
    fits.posterior.restore(fits.guide)
    return rows, posteriors, traces


def _reference_posteriors(fits: _Fits, optima: dict[str, _Gaussian]) -> dict[str, _Gaussian]:
    """full, retrained, exact (p(θ|D_r)) and, where p̃ is normalisable, the target and the
    losses' closed-form optima."""
    posteriors = {"full": fits.full, "retrained": fits.retrained, "exact": fits.exact_remaining}
    if optima:
        posteriors.update({"target": optima["target"], "eubo optimum": optima["eubo"]})
        posteriors["rkl optimum"] = optima["rkl"]
    return posteriors


def _settings(data: LinearRegressionData, guide: str, **options: Any) -> dict[str, Any]:
    """The settings :func:`run` reports: the guide, the data's size, ``options``, the device."""
    size = {"num_data": len(data.y), "num_erased": len(data.erased)}
    device = {"device": str(data.x.device), "dtype": str(data.x.dtype)}
    return {"guide": guide, **size, "noise_scale": data.noise_scale, **options, **device}


def _report(
    fits: _Fits,
    optima: dict[str, _Gaussian],
    not_normalizable: str | None,
    score: _Scorer,
    rows: list[dict],
    posteriors: dict[str, _Gaussian],
    traces: dict[str, list[float]],
    guide: str,
    settings: dict,
) -> dict:
    """Step 4: the result of :func:`run` from its parts (every tensor as lists);
    ``posteriors`` are the unlearned ones, to which the references are added."""
    target = optima.get("target")
    posteriors = _reference_posteriors(fits, optima) | posteriors
    exact_r = fits.exact_remaining
    best = {
        name: {
            "kl_target": float(gaussian_kl(*optima[name], *target)),
            "kl_retrained": float(gaussian_kl(*optima[name], *fits.retrained)),
            "kl_exact": float(gaussian_kl(*optima[name], *exact_r)),
        }
        for name in ("eubo", "rkl")
        if target is not None
    }

    def family_optimum(m, c):  # the ELBO's optimum over the family: diag(Λ)⁻¹ for mean field
        return (m, c) if guide == "mvn" else (m, torch.diag(1 / torch.linalg.inv(c).diagonal()))

    return {
        "rows": rows,
        "mia": {"retrained": score.mia(*fits.retrained), "exact": score.mia(*exact_r)},
        "train_seconds": fits.train_seconds,
        "retrain_seconds": fits.retrain_seconds,
        "target": None if target is None else _listed(*target),
        "target_not_normalizable": not_normalizable,
        "retrained": _listed(*fits.retrained),
        "full": _listed(*fits.full),
        "posteriors": {k: _listed(*v) for k, v in posteriors.items()},
        "optima": best,
        "loss_traces": traces,
        "diagnostics": {
            "kl_full_to_elbo_optimum": float(
                gaussian_kl(*fits.full, *family_optimum(*fits.exact_full))
            ),
            "kl_retrained_to_elbo_optimum": float(
                gaussian_kl(*fits.retrained, *family_optimum(*exact_r))
            ),
        },
        "settings": settings,
    }


def run(
    lambdas: Sequence[float] = LAMBDAS,
    *,
    data: LinearRegressionData | None = None,
    guide: str = "mvn",
    train_steps: int = 1500,
    unlearn_steps: int = 500,
    num_particles: int = 1024,
    lr: float = 0.02,
    train_lr: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    trace_blocks: int = 50,
    nonmembers: tuple[torch.Tensor, torch.Tensor] | None = None,
    diagnose_samples: int = 1000,
) -> dict:
    """Train q(θ|D) and the retrained reference, unlearn with EUBO and rKL over ``lambdas``.

    ``guide`` is the family of every posterior (:data:`GUIDES`): ``"mvn"`` (full covariance;
    default data :func:`.datasets.linear_regression`, the CLI's) or ``"diagonal"``
    (independent Gaussians, Appendix C; default data :func:`clustered_line`). Each unlearning run
    starts from q(θ|D) and takes ``unlearn_steps`` ClippedAdam steps (``lr`` decaying a
    hundredfold); q(θ|D) and the reference (VI on D_r from the guide's initialisation) take
    ``train_steps`` at ``train_lr`` (:func:`train`), and how far each ended from its family's
    exact ELBO optimum is reported.

    The steps: fit q(θ|D) and the reference, unlearn with each (method, λ), score every
    posterior against the closed forms, and report.

    Returns a dict with:

    * ``rows``: per ``full`` (q(θ|D), λ = nan) and (method, λ): ``kl_target`` (KL to the
      closed-form p̃ = q(θ|D)/p(D_e|θ); nan when p̃ is not normalisable), ``kl_retrained``,
      ``kl_exact`` (to the exact p(θ|D_r)), ``kl_erased_mean``/``kl_remaining_mean`` (the
      papers' predictive KL[q_retrained(y|x) ‖ q(y|x)] averaged over D_e / D_r), ``seconds``,
      ``ess`` (the loss's last-step ``diagnostics()["ess"]``: the rKL's, None for the EUBO),
      ``converged`` (the last quarter of the loss trace no lower than the quarter before, up
      to its noise: :func:`~pyro_unlearn.forget.has_converged`), and membership inference on
      D_e (``mia_accuracy``, ``mia_auc``...: :func:`~pyro_unlearn.metrics.membership_attack`
      on the exact predictive NLL; 0.5 is chance) against ``nonmembers`` ``(x, y)`` — by
      default the erased clusters of 20 independent draws of the default data (seeds
      ``seed + 1``…), when their shape matches; and the trust check, judged without D_r from
      ``diagnose_samples`` draws (:func:`pyro_unlearn.trust.diagnose`): ``verdict``
      ("trusted", "approximate" or "retrain", :func:`pyro_unlearn.trust.verdict`),
      ``pareto_k`` (PSIS k̂) and ``kl_to_target`` (the estimate of KL(q_u ‖ p̃_adj), p̃_adj =
      q(θ|D)/p_adj(D_e|θ; λ): at λ = 0 an estimate of ``kl_target``) — ``None``/NaN for
      ``full``;
    * ``mia``: the same attack on the retrained and on the exact p(θ|D_r) posteriors;
    * ``posteriors``: ``{label: {"loc", "cov"}}`` of full, retrained, exact (p(θ|D_r)), target,
      the loss optima and every unlearned posterior (``"eubo λ=1e-05"``...), for
      :func:`plot_predictive_samples`;
    * ``optima``: KL of each loss's closed-form λ = 0 optimum (:func:`closed_form_optima`) to
      the target, the retrained and the exact posterior: the best the family can do;
    * ``loss_traces``: the block means of each run's loss; ``diagnostics``: how far q(θ|D) and
      the reference ended from the family's exact optima (the ELBO's, closed form);
    * ``target``, ``retrained``, ``full`` (loc, cov), ``train_seconds``, ``retrain_seconds``,
      ``settings``.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Appendix C).

    Example (not run: a minute on a CPU)::

        results = run((1e-3, 0.0), guide="diagonal")
        [(r["method"], r["lam"], round(r["kl_retrained"], 3)) for r in results["rows"]]
    """
    data = _checked_data(data, guide, seed)
    noise = data.noise_scale

    def model(x, y=None):
        return linear_model(x, y, noise)

    fits = _fit(model, data, guide, train_steps, train_lr, progress)
    optima, not_normalizable = _optima(fits, data, guide)
    if nonmembers is None:
        nonmembers = _default_nonmembers(data, guide, seed)
    score = _Scorer(data, fits, optima.get("target"), nonmembers, seed)
    full_row = {"method": "full", "lam": math.nan, **score(*fits.full), "seconds": 0.0}
    rows = [{**full_row, "ess": None, "converged": True, **trust_columns()}]
    unlearned, posteriors, traces = _sweep(
        model, data, fits, score, lambdas, steps=unlearn_steps, trace_blocks=trace_blocks,
        progress=progress, num_particles=num_particles, lr=lr, diagnose_samples=diagnose_samples,
    )  # fmt: skip
    settings = _settings(
        data, guide, train_steps=train_steps, unlearn_steps=unlearn_steps,
        num_particles=num_particles, lr=lr, train_lr=train_lr, seed=seed,
        diagnose_samples=diagnose_samples,
    )  # fmt: skip
    return _report(fits, optima, not_normalizable, score, rows + unlearned, posteriors, traces,
                   guide, settings)  # fmt: skip


# -- predictive samples (the paper's Fig. 7) ----------------------------------------------------
def _gaussian(posterior: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, cov) of a Gaussian guide / FrozenPosterior, a ``{"loc", "cov"}`` mapping or a pair."""
    if isinstance(posterior, Mapping):
        missing = {"loc", "cov"} - set(posterior)
        if missing:
            raise ValueError(
                f"a posterior given as a mapping needs 'loc' and 'cov', missing {missing}"
            )
        return torch.as_tensor(posterior["loc"]), torch.as_tensor(posterior["cov"])
    if isinstance(posterior, tuple | list):
        if len(posterior) != 2:
            raise ValueError(
                f"a posterior given as a pair must be (loc, cov), got {len(posterior)}"
            )
        return torch.as_tensor(posterior[0]), torch.as_tensor(posterior[1])
    return read_gaussian(posterior)


def predictive_lines(
    posterior: Any, x: torch.Tensor, num_samples: int = 30, seed: int | None = 0
) -> torch.Tensor:
    """Regression functions f_s(x) = x·w_s + b_s for θ_s = (w_s, b_s) ~ the Gaussian
    ``posterior``, at every row of ``x`` ((G, D), or (G,) for 1-D inputs); returns
    (num_samples, G). ``posterior`` is a Gaussian guide (live or frozen) of :func:`linear_model`,
    a ``{"loc", "cov"}`` mapping (as in :func:`run`'s ``posteriors``) or a ``(loc, cov)`` pair.
    ``seed`` fixes the draws (``None``: the global generator). Tensors follow ``x``'s device and
    dtype.

    Example::

        >>> lines = predictive_lines((torch.tensor([2.0, 1.0]), 1e-12 * torch.eye(2)),
        ...                          torch.tensor([0.0, 1.0]), num_samples=3)
        >>> lines.shape, [round(v, 4) for v in lines[0].tolist()]
        (torch.Size([3, 2]), [1.0, 3.0])
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    x = x.unsqueeze(-1) if x.dim() == 1 else x
    if x.dim() != 2:
        raise ValueError(f"x must be (G, D) or (G,), got shape {tuple(x.shape)}")
    loc, cov = (t.to(device=x.device, dtype=x.dtype) for t in _gaussian(posterior))
    dim = x.shape[-1] + 1
    if loc.shape != (dim,) or cov.shape != (dim, dim):
        raise ValueError(
            f"for {x.shape[-1]}-D inputs the posterior must be over θ = (w, b) of size {dim}: "
            f"got loc {tuple(loc.shape)} and cov {tuple(cov.shape)}"
        )
    chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.mT))
    if int(info) != 0:
        raise ValueError("the posterior's covariance is not positive definite")
    g = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    z = torch.randn(int(num_samples), dim, generator=g, device=x.device, dtype=x.dtype)
    theta = loc + z @ chol.mT
    return theta[:, :-1] @ x.mT + theta[:, -1:]


def plot_predictive_samples(
    data: LinearRegressionData,
    posteriors: Mapping[str, Any],
    *,
    num_samples: int = 30,
    columns: int = 3,
    data_panel: bool = True,
    seed: int = 0,
    title: str = "",
):
    """The paper's Fig. 7: for each ``{title: posterior}`` (anything :func:`predictive_lines`
    takes), ``num_samples`` regression lines drawn from it over the data, D_r as dots and D_e
    as crosses; with ``data_panel`` a first panel of the data alone. All panels share the data's
    axes, so a line that ran away shows as leaving the frame. Returns the figure.

    Example (not run)::

        results = run(guide="diagonal")
        chosen = {k: results["posteriors"][k] for k in ("full", "retrained", "eubo λ=0")}
        plot_predictive_samples(clustered_line(), chosen)
    """
    if not posteriors:
        raise ValueError("posteriors is empty: give {panel title: posterior}")
    if data.x.dim() != 2 or data.x.shape[-1] != 1:
        raise ValueError(
            "plot_predictive_samples needs 1-D inputs, x of shape (N, 1); got "
            f"{tuple(data.x.shape)}"
        )
    x, y = data.x[:, 0].detach().cpu(), data.y.detach().cpu()
    erased = torch.zeros(len(y), dtype=torch.bool)
    erased[data.erased.cpu()] = True
    pad_x, pad_y = 0.1 * float(x.max() - x.min()), 0.15 * float(y.max() - y.min())
    lo, hi = float(x.min()) - pad_x, float(x.max()) + pad_x
    grid = torch.linspace(lo, hi, 100, dtype=data.x.dtype, device=data.x.device)
    panels = ([("data", None)] if data_panel else []) + list(posteriors.items())
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.6 * columns, 2.9 * rows),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for ax, (name, posterior) in zip(axes.flat, panels, strict=False):
        if posterior is not None:
            lines = predictive_lines(posterior, grid, num_samples, seed).cpu()
            ax.plot(grid.cpu(), lines.T, color="C0", alpha=0.25, lw=0.8)
        ax.plot(x[~erased], y[~erased], ".", color="k", ms=4, label="$D_r$")
        ax.plot(x[erased], y[erased], "x", color="C3", ms=5, label="$D_e$")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(lo, hi)
        ax.set_ylim(float(y.min()) - pad_y, float(y.max()) + pad_y)
    axes.flat[0].legend(fontsize=8, loc="upper left")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig
