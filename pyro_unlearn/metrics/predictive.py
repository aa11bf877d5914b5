"""Posterior predictive metrics: the Monte-Carlo predictive, its KL, accuracy and log density."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..validation import check_finite, check_positive_int
from ._sampling import PredictiveSite

__all__ = [
    "accuracy",
    "log_predictive_density",
    "logistic_log_predictive",
    "mean_and_std",
    "predictive_distribution",
    "predictive_kl",
]

# Elements of one (y-draws × points × θ-samples) block in the Monte-Carlo predictive KL.
_MC_BLOCK = 2**24


def predictive_distribution(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.distributions.Distribution:
    r"""The Monte-Carlo posterior predictive at every data point of the observed site ``site``:

    .. math:: p(y|x) = \frac1S \sum_{s=1}^S p(y|x, θ_s), \qquad θ_s \sim q(θ)

    The θ-samples are drawn in one plate (``"_predictive_samples"``) left of the model's plates,
    without gradients, and the model is replayed on them. Event dims of an ``Independent`` site
    become points, each with its marginal predictive.

    Arguments:
        model: the Pyro model.
        posterior: q(θ): a live AutoGuide, a guide function or a
            :class:`~pyro_unlearn.FrozenPosterior`, called with the model's arguments.
        *args: the model's arguments; the site's observed value may be given or ``None``.
        site: the name of the observed sample site.
        num_samples: S, the θ-samples.
        **kwargs: the model's keyword arguments.

    Returns:
        With batch shape the site's points: ``Bernoulli(probs = mean_s probs_s)`` for a
        Bernoulli site, ``Categorical(probs = mean_s probs_s)`` for a Categorical site, the
        uniform ``MixtureSameFamily`` of the S Normals for a Normal site.

    Raises:
        TypeError: any other site distribution.
        ValueError: ``site`` is not a sample site of the model, or a latent site of the
            posterior.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def guide(x, y=None):  # θ is a point mass at w = 2
        ...     pyro.sample("w", dist.Delta(torch.tensor(2.0)))
        >>> x = torch.tensor([0.0, 1.0])
        >>> predictive_distribution(model, guide, x, site="y", num_samples=10).probs
        tensor([0.5000, 0.8808])
    """
    return PredictiveSite(model, posterior, args, kwargs, site, num_samples).predictive()


def _clamped_log(p: torch.Tensor) -> torch.Tensor:
    return p.clamp_min(torch.finfo(p.dtype).eps).log()


def _mixture_kl(
    p: torch.distributions.MixtureSameFamily,
    q: torch.distributions.MixtureSameFamily,
    num_y_samples: int,
) -> torch.Tensor:
    """KL[p ‖ q] per point ≈ mean_j [log p(y_j) − log q(y_j)], y_j ~ p, in blocks of y-draws."""
    comp = p.component_distribution
    shape = p.batch_shape + comp.batch_shape[-1:]
    loc, scale = comp.loc.expand(shape), comp.scale.expand(shape)
    index = p.mixture_distribution.sample((num_y_samples, *p.batch_shape)).unsqueeze(-1)
    full = (num_y_samples, *shape)
    mean = loc.expand(full).gather(-1, index).squeeze(-1)
    std = scale.expand(full).gather(-1, index).squeeze(-1)
    y = torch.normal(mean, std)
    width = max(shape[-1], q.component_distribution.batch_shape[-1])
    block = max(1, _MC_BLOCK // max(1, p.batch_shape.numel() * width))
    total = y.new_zeros(p.batch_shape)
    for start in range(0, num_y_samples, block):  # blocks of y-draws bound the memory only
        chunk = y[start : start + block]
        total = total + (p.log_prob(chunk) - q.log_prob(chunk)).sum(0)
    return total / num_y_samples


def predictive_kl(
    model: Callable[..., Any],
    p: Callable[..., Any],
    q: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    num_y_samples: int = 1000,
    **kwargs: Any,
) -> torch.Tensor:
    r"""KL[p(y|x) ‖ q(y|x)] between the Monte-Carlo predictives of two posteriors
    (:func:`predictive_distribution`), at every data point of ``site``.

    Bernoulli sites, with π = p(y=1|x) and ρ = q(y=1|x), and Categorical sites, exactly given
    the two predictives (probabilities clamped at the dtype's eps inside the logs):

    .. math:: π \log\frac{π}{ρ} + (1−π) \log\frac{1−π}{1−ρ}, \qquad
              \sum_k π_k \log\frac{π_k}{ρ_k}

    Normal sites (mixtures): Monte Carlo, mean_j [log p(y_j|x) − log q(y_j|x)] over
    ``num_y_samples`` draws y_j ~ p(y|x).

    The unlearning papers' metric is ``predictive_kl(model, retrained, unlearned, x, site=...)``
    averaged (:func:`mean_and_std`) over the points of D_e and of D_r separately; the "full"
    baseline replaces the unlearned posterior by q(θ|D).

    Arguments:
        model: the Pyro model.
        p: the first posterior (e.g. retrained on D_r).
        q: the second posterior (e.g. unlearned).
        *args: the model's arguments.
        site: the name of the observed sample site.
        num_samples: θ-samples per predictive.
        num_y_samples: y-draws of the Monte-Carlo KL (Normal sites only).
        **kwargs: the model's keyword arguments.

    Returns:
        The KL divergence at every point, a tensor of the site's points' shape.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def p(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(0.0)))  # p(y=1|x) = 1/2
        >>> def q(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(3.0).log()))  # q(y=1|x=1) = 3/4
        >>> predictive_kl(model, p, q, torch.tensor([0.0, 1.0]), site="y", num_samples=1)
        tensor([0.0000, 0.1438])
    """
    num_y_samples = check_positive_int("num_y_samples", num_y_samples)
    pd = predictive_distribution(model, p, *args, site=site, num_samples=num_samples, **kwargs)
    qd = predictive_distribution(model, q, *args, site=site, num_samples=num_samples, **kwargs)
    if isinstance(pd, torch.distributions.Bernoulli):
        pi, rho = pd.probs, qd.probs
        return pi * (_clamped_log(pi) - _clamped_log(rho)) + (1 - pi) * (
            _clamped_log(1 - pi) - _clamped_log(1 - rho)
        )
    if isinstance(pd, torch.distributions.Categorical):
        pi, rho = pd.probs, qd.probs
        return (pi * (_clamped_log(pi) - _clamped_log(rho))).sum(-1)
    with torch.no_grad():
        return _mixture_kl(pd, qd, num_y_samples)


def mean_and_std(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation over all points.

    Arguments:
        values: a tensor (or anything :func:`torch.as_tensor` takes) of any shape, not empty.

    Returns:
        ``(mean, std)`` as floats; the std with ``correction=1``, 0.0 for a single value.

    Example:
        >>> mean_and_std(torch.tensor([1.0, 2.0, 3.0]))
        (2.0, 1.0)
        >>> mean_and_std(torch.tensor([4.0]))
        (4.0, 0.0)
    """
    values = torch.as_tensor(values).detach().reshape(-1)
    if values.numel() == 0:
        raise ValueError("mean_and_std needs at least one value")
    std = float(values.std(correction=1)) if values.numel() > 1 else 0.0
    return float(values.mean()), std


def accuracy(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    **kwargs: Any,
) -> float:
    """The fraction of the points whose predictive mode equals the observed value of ``site``.

    The mode of :func:`predictive_distribution`: p(y=1|x) > ½ for a Bernoulli site,
    argmax_k p(y=k|x) for a Categorical one.

    Arguments:
        model: the Pyro model.
        posterior: q(θ), as in :func:`predictive_distribution`.
        *args: the model's arguments, its observations included.
        site: the name of the observed sample site (Bernoulli or Categorical).
        num_samples: θ-samples of the predictive.
        **kwargs: the model's keyword arguments.

    Returns:
        The accuracy, a float.

    Raises:
        ValueError: the site was not observed.
        TypeError: the site is not Bernoulli or Categorical.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def guide(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(1.0)))
        >>> x, y = torch.tensor([-1.0, 1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])
        >>> accuracy(model, guide, x, y, site="y")
        0.75
    """
    found = PredictiveSite(model, posterior, args, kwargs, site, num_samples)
    found.check_discrete("accuracy", "is a Normal (use log_predictive_density or predictive_kl)")
    observed = found.observed("accuracy")
    probs = found.predictive().probs
    if isinstance(found.base, torch.distributions.Bernoulli):
        predicted = (probs > 0.5).to(observed.dtype)
    else:
        predicted = probs.argmax(-1).to(observed.dtype)
    return float((predicted == observed).double().mean())


def log_predictive_density(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.Tensor:
    r"""log p(y_obs|x) under the Monte-Carlo predictive, at every data point of ``site``:

    .. math:: \log \frac1S \sum_{s=1}^S p(y_\text{obs}|x, θ_s) = \mathrm{logsumexp}_s \log
              p(y_\text{obs}|x, θ_s) − \log S

    Any site distribution with a ``log_prob`` works; event dims of an ``Independent`` become
    points, as in :func:`predictive_distribution`.

    Arguments:
        model: the Pyro model.
        posterior: q(θ), as in :func:`predictive_distribution`.
        *args: the model's arguments, its observations included.
        site: the name of the observed sample site.
        num_samples: S, the θ-samples.
        **kwargs: the model's keyword arguments.

    Returns:
        The log density at every point, a tensor of the site's points' shape.

    Raises:
        ValueError: the site was not observed.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def guide(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(1.0)))
        >>> x, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
        >>> log_predictive_density(model, guide, x, y, site="y").exp()  # 1/2, 1 − σ(1)
        tensor([0.5000, 0.2689])
    """
    found = PredictiveSite(model, posterior, args, kwargs, site, num_samples)
    base = found.base
    observed = found.observed("log_predictive_density")
    # The site's value lives in the points' shape; the sample dim is inserted (size 1) so that
    # it broadcasts against the per-θ distributions, whose batch shape carries all S samples.
    value = observed.unsqueeze(found.sample_dim)
    with torch.no_grad():
        log_p = base.log_prob(value)
    batch = found.shape[: len(found.shape) - len(base.event_shape)]
    log_p = log_p.expand(batch)
    return torch.logsumexp(log_p, dim=found.sample_dim) - math.log(found.num_samples)


def logistic_log_predictive(mean: torch.Tensor, sd: torch.Tensor, num_nodes: int) -> torch.Tensor:
    r"""log p(y|x) for y = 0, 1 when the logit is Gaussian, a ~ N(m, s²), at every point.

    By ``num_nodes``-point Gauss–Hermite quadrature (nodes t_i, weights ω_i), in log space:

    .. math:: p(y=1|x) = E[σ(a)] ≈ \frac{1}{\sqrt π} \sum_i ω_i\, σ(m + \sqrt2\, s\, t_i)

    This is the exact predictive of a classifier whose latent function is Gaussian at x (a
    Gaussian posterior over a linear model's weights, a variational GP), where
    :func:`predictive_distribution` would sample.

    Arguments:
        mean: m, the logit's mean at each point.
        sd: s, its standard deviation (broadcasting with ``mean``).
        num_nodes: quadrature nodes, in [1, 300].

    Returns:
        log p(y=0|x) and log p(y=1|x), shape ``(*mean.shape, 2)``, in ``mean``'s dtype and
        device.

    Example:
        >>> logp = logistic_log_predictive(torch.zeros(1), torch.ones(1), 64)
        >>> logp.exp().tolist()  # symmetric around 0: ½ each
        [[0.5, 0.5]]
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral):
        raise TypeError(f"num_nodes must be an integer in [1, 300], got {num_nodes!r}")
    if not 1 <= num_nodes <= 300:  # NumPy's hermgauss overflows beyond ~350 nodes
        raise ValueError(f"num_nodes must be in [1, 300], got {num_nodes}")
    check_finite("mean", mean)
    check_finite("sd", sd)
    if bool((sd < 0).any()):
        raise ValueError("sd must be ≥ 0 (a standard deviation)")
    nodes, weights = np.polynomial.hermite.hermgauss(num_nodes)
    nodes = mean.new_tensor(nodes) * math.sqrt(2)
    log_weights = mean.new_tensor(weights).log() - 0.5 * math.log(math.pi)
    logits = mean.unsqueeze(-1) + sd.unsqueeze(-1) * nodes  # (points, nodes)
    logits = torch.stack([-logits, logits], -2)  # y = 0, 1: log σ(∓a)
    return torch.logsumexp(torch.nn.functional.logsigmoid(logits) + log_weights, -1)
