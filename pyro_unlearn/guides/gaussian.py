"""Gaussian guides: which guides are Gaussian, and reading and writing their N(μ, Σ)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoGuide,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from torch.distributions import biject_to, transform_to

from ..validation import check_finite

if TYPE_CHECKING:
    from ..posterior import FrozenPosterior

__all__ = [
    "GAUSSIAN_DISTRIBUTIONS",
    "GAUSSIAN_GUIDES",
    "LatentLayout",
    "LatentSite",
    "is_gaussian",
    "latent_layout",
    "read_gaussian",
    "write_gaussian",
]

#: The guides whose q(θ) is Gaussian in the unconstrained space: N(μ, Σ) over the flattened
#: latents, with closed-form moments and KL. Subclasses count (e.g. the guide that Pyro's
#: ``AutoLaplaceApproximation.laplace_approximation()`` returns, or one holding buffers).
GAUSSIAN_GUIDES: tuple[type[AutoGuide], ...] = (
    AutoNormal,
    AutoDiagonalNormal,
    AutoMultivariateNormal,
    AutoLowRankMultivariateNormal,
)
#: The distributions those guides put at their sites: Gaussians, whose mean is their mode.
GAUSSIAN_DISTRIBUTIONS: tuple[type[torch.distributions.Distribution], ...] = (
    torch.distributions.Normal,
    torch.distributions.MultivariateNormal,
    torch.distributions.LowRankMultivariateNormal,
)
_NAMES = ", ".join(cls.__name__ for cls in GAUSSIAN_GUIDES)
_WRITABLE = (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal)


def _unfrozen(guide: Any) -> tuple[Any, FrozenPosterior | None]:
    """The guide itself, or a frozen posterior's frozen copy (read it inside its context)."""
    from ..posterior import FrozenPosterior  # posterior imports this module: import on use

    if isinstance(guide, FrozenPosterior):
        return guide.guide, guide
    return guide, None


def is_gaussian(guide: Any) -> bool:
    """Whether ``guide`` is one of :data:`GAUSSIAN_GUIDES`, live or frozen.

    Example:
        >>> from pyro.infer.autoguide import AutoDelta, AutoNormal
        >>> is_gaussian(AutoNormal(lambda: None)), is_gaussian(AutoDelta(lambda: None))
        (True, False)
    """
    return isinstance(_unfrozen(guide)[0], GAUSSIAN_GUIDES)


def _check_gaussian(guide: Any, what: str) -> None:
    if isinstance(guide, GAUSSIAN_GUIDES):
        if guide.prototype_trace is None:
            raise ValueError(
                f"the {type(guide).__name__} has never been run: run it once on the model's "
                "arguments (or train it) first"
            )
        return
    hint = ""
    if isinstance(guide, AutoLaplaceApproximation):
        hint = " (a MAP guide: pass its Gaussian, guide.laplace_approximation(*args), instead)"
    raise TypeError(
        f"{what} needs a Gaussian AutoGuide ({_NAMES}, or a FrozenPosterior of one), got "
        f"{type(guide).__name__}{hint}"
    )


# -- the flat unconstrained space ---------------------------------------------------------------
@dataclass(frozen=True)
class LatentSite:
    """One latent site's slice ``[start, stop)`` of the flat unconstrained θ, its unconstrained
    ``shape`` and the ``transform`` from the unconstrained to the constrained space."""

    name: str
    shape: torch.Size
    transform: torch.distributions.Transform
    start: int
    stop: int


@dataclass(frozen=True)
class LatentLayout:
    """How a guide flattens the model's latents: θ ∈ R^P is the concatenation of each site's
    unconstrained value, in the model's site order (as Pyro's ``AutoContinuous`` packs them)."""

    sites: tuple[LatentSite, ...]

    @property
    def size(self) -> int:
        """P, the dimension of θ."""
        return self.sites[-1].stop if self.sites else 0

    def values(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's site values (constrained) at a flat unconstrained θ (P,)."""
        return {s.name: s.transform(theta[s.start : s.stop].reshape(s.shape)) for s in self.sites}


def latent_layout(guide: AutoGuide | FrozenPosterior) -> LatentLayout:
    """The flat unconstrained layout of a guide that has been run (its prototype trace).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> pyro.clear_param_store()
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoNormal(model)
        >>> _ = guide()
        >>> layout = latent_layout(guide)
        >>> layout.size, layout.values(torch.zeros(3))["s"]
        (3, tensor(1.))
    """
    guide, _ = _unfrozen(guide)
    if getattr(guide, "prototype_trace", None) is None:
        raise ValueError(f"the {type(guide).__name__} has never been run: run it once first")
    sites, start = [], 0
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        transform = biject_to(site["fn"].support)
        shape = transform.inv(site["value"].detach()).shape
        sites.append(LatentSite(name, shape, transform, start, start + shape.numel()))
        start += shape.numel()
    return LatentLayout(tuple(sites))


# -- reading --------------------------------------------------------------------------------------
def _read_live(guide: AutoGuide) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(μ, Σ or the scales, whether the second is dense) of a live Gaussian guide."""
    if isinstance(guide, AutoNormal):
        pairs = [guide._get_loc_and_scale(s.name) for s in latent_layout(guide).sites]
        loc = torch.cat([m.detach().reshape(-1) for m, _ in pairs])
        return loc, torch.cat([s.detach().reshape(-1) for _, s in pairs]), False
    posterior = guide.get_posterior()
    while isinstance(posterior, torch.distributions.Independent):
        posterior = posterior.base_dist
    if isinstance(posterior, torch.distributions.Normal):
        return posterior.mean.detach(), posterior.stddev.detach(), False
    return posterior.mean.detach(), posterior.covariance_matrix.detach(), True


def read_gaussian(
    guide: AutoGuide | FrozenPosterior, *, diagonal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The Gaussian q(θ) = N(μ, Σ) of a Gaussian guide, in its flat unconstrained space.

    θ stacks the unconstrained latents in the model's site order (:func:`latent_layout`).
    With ``diagonal=False``, ``(loc, covariance)``: μ (P,) and Σ (P, P) (diag(s²) for a
    mean-field guide; L Lᵀ with L = diag(scale) · scale_tril for an AutoMultivariateNormal;
    S (W Wᵀ + I) S, S = diag(scale), for an AutoLowRankMultivariateNormal). With ``diagonal=True``,
    ``(loc, scale)``: μ and the marginal standard deviations s = √diag Σ (P,).

    Arguments:
        guide: one of :data:`GAUSSIAN_GUIDES` that has been run, or a
            :class:`~pyro_unlearn.FrozenPosterior` of one (whose own parameters are read,
            never the live guide's).
        diagonal: return the scales instead of the covariance.

    Returns:
        ``(loc, covariance)`` or ``(loc, scale)``, detached (clones for a frozen posterior;
        for a live guide they may share storage with its parameters).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> pyro.clear_param_store()
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> def model():
        ...     pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoMultivariateNormal(model, init_scale=0.5)
        >>> _ = guide()
        >>> loc, cov = read_gaussian(guide)
        >>> cov
        tensor([[0.2500, 0.0000],
                [0.0000, 0.2500]])
        >>> read_gaussian(guide, diagonal=True)[1]
        tensor([0.5000, 0.5000])
    """
    live, frozen = _unfrozen(guide)
    _check_gaussian(live, "read_gaussian")
    if frozen is not None:
        with frozen.context():
            loc, spread, dense = _read_live(live)
        loc, spread = loc.clone(), spread.clone()
    else:
        loc, spread, dense = _read_live(live)
    if diagonal:
        return loc, spread.diagonal().sqrt() if dense else spread
    return loc, spread if dense else torch.diag_embed(spread**2)


# -- writing --------------------------------------------------------------------------------------
def _owner(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        root = getattr(root, part)
    return root, leaf


def _set(root: torch.nn.Module, name: str, value: torch.Tensor, buffers: bool) -> None:
    module, leaf = _owner(root, name)
    if buffers:  # drop the PyroParam: a guide never run owns no param-store entry yet
        delattr(module, leaf)
        module.register_buffer(leaf, value.clone())
    elif leaf in module._pyro_params:  # a PyroParam: its unconstrained tensor, in place
        constraint, _ = module._pyro_params[leaf]
        with torch.no_grad():
            getattr(module, f"{leaf}_unconstrained").copy_(transform_to(constraint).inv(value))
    else:  # an nn.Parameter (AutoContinuous's loc): the param store's tensor, in place
        with torch.no_grad():
            getattr(module, leaf).copy_(value)


def _scales(covariance: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is not None:
        return scale
    off = covariance - torch.diag_embed(covariance.diagonal())
    if bool(off.any()):
        raise ValueError("a mean-field guide holds a diagonal covariance; got off-diagonal terms")
    return covariance.diagonal().sqrt()


def _check_moments(
    size: int, loc: Any, covariance: torch.Tensor | None, scale: torch.Tensor | None
) -> None:
    """μ (P,) finite; Σ (P, P) finite, symmetric, positive definite; or s (P,) finite, > 0."""
    for name, value in (("loc", loc), ("covariance", covariance), ("scale", scale)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if loc.shape != (size,):
        raise ValueError(f"loc must have shape ({size},), got {tuple(loc.shape)}")
    check_finite("loc", loc)
    if scale is not None:
        if scale.shape != (size,):
            raise ValueError(f"scale must have shape ({size},), got {tuple(scale.shape)}")
        check_finite("scale", scale)
        if not bool((scale > 0).all()):
            raise ValueError(f"scale must be positive, got a smallest entry {float(scale.min())}")
        return
    if covariance.shape != (size, size):
        raise ValueError(
            f"covariance must have shape ({size}, {size}), got {tuple(covariance.shape)}"
        )
    check_finite("covariance", covariance)
    gap = float((covariance - covariance.mT).abs().max())
    # eps^¼: tolerates the rounding of an inverted precision, not a wrong matrix
    if gap > torch.finfo(covariance.dtype).eps ** 0.25 * float(covariance.abs().max()):
        raise ValueError(f"covariance must be symmetric, got |Σ − Σᵀ| up to {gap:.3g}")
    if int(torch.linalg.cholesky_ex(covariance)[1]) != 0:
        smallest = float(torch.linalg.eigvalsh(covariance)[0])
        raise ValueError(
            f"covariance is not positive definite (smallest eigenvalue {smallest:.3g})"
        )


def write_gaussian(
    guide: AutoGuide,
    loc: torch.Tensor,
    covariance: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | None = None,
    buffers: bool = False,
) -> AutoGuide:
    r"""Make a Gaussian guide hold N(μ, Σ) over its flat unconstrained θ: the inverse of
    :func:`read_gaussian`.

    An AutoMultivariateNormal holds L = chol Σ as ``scale`` = diag L and the unit
    lower-triangular ``scale_tril`` = diag(scale)⁻¹ L; AutoDiagonalNormal and AutoNormal hold
    s = √diag Σ (Σ must then be diagonal), AutoNormal per site in :func:`latent_layout`'s slices.

    Arguments:
        guide: a live AutoNormal, AutoDiagonalNormal or AutoMultivariateNormal that has been
            run (an AutoLowRankMultivariateNormal cannot hold every Σ, a frozen posterior is
            immutable: both raise ``TypeError``).
        loc: μ (P,), finite.
        covariance: Σ (P, P), finite, symmetric and positive definite; or, instead of it,
        scale: the standard deviations s (P,) of a diagonal Σ = diag(s²), finite and positive.
        buffers: replace the guide's parameters by buffers holding the values (as Pyro's
            ``laplace_approximation()`` does), so that the guide never reads nor writes the
            param store: for a guide that has been set up but whose parameters have never been
            read. Otherwise the values are written into the existing parameters in place.

    Returns:
        The guide.

    Raises:
        ValueError: for a wrong shape, a non-finite entry (named with its row), a covariance
            that is not symmetric positive definite or a non-positive scale, before anything
            is written.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> pyro.clear_param_store()
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> def model():
        ...     pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoMultivariateNormal(model)
        >>> _ = guide()
        >>> cov = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> _ = write_gaussian(guide, torch.ones(2), cov)
        >>> torch.allclose(read_gaussian(guide)[1], cov)
        True
    """
    _check_gaussian(_unfrozen(guide)[0], "write_gaussian")
    if not isinstance(guide, _WRITABLE):
        writable = ", ".join(cls.__name__ for cls in _WRITABLE)
        raise TypeError(f"write_gaussian writes a live {writable}, got {type(guide).__name__}")
    if (covariance is None) == (scale is None):
        raise ValueError("pass exactly one of covariance (P, P) and scale (P,)")
    _check_moments(latent_layout(guide).size, loc, covariance, scale)
    layout = latent_layout(guide)
    loc = loc.detach()
    if isinstance(guide, AutoMultivariateNormal):
        chol = torch.linalg.cholesky(covariance) if scale is None else torch.diag(scale)
        diag = chol.diagonal()
        for name, value in (("loc", loc), ("scale", diag), ("scale_tril", chol / diag[:, None])):
            _set(guide, name, value.detach(), buffers)
        return guide
    scales = _scales(covariance, scale).detach()
    if isinstance(guide, AutoDiagonalNormal):
        _set(guide, "loc", loc, buffers)
        _set(guide, "scale", scales, buffers)
        return guide
    for s in layout.sites:
        _set(guide.locs, s.name, loc[s.start : s.stop].reshape(s.shape), buffers)
        _set(guide.scales, s.name, scales[s.start : s.stop].reshape(s.shape), buffers)
    return guide
