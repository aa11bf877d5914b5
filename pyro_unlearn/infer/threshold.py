"""λ on the mass scale: the share of q(θ|D) that the adjusted likelihood's threshold keeps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from ..guides.gaussian import GAUSSIAN_DISTRIBUTIONS, is_gaussian
from ..posterior import FrozenPosterior
from ..traces import max_plate_nesting, preserved_rng, sum_sites_per_particle
from ..validation import check_finite_data, check_in_unit_interval, check_positive_int
from .adjusted_likelihood import check_lam

__all__ = [
    "MIN_KEPT_MASS",
    "MassScale",
    "SmallKeptMassWarning",
    "check_mass",
    "kept_mass",
    "lam_for_mass",
    "warn_small_kept_mass",
]

#: Below this share of q(θ|D)'s mass kept, a λ > 0 warns (:class:`SmallKeptMassWarning`).
MIN_KEPT_MASS = 0.05
#: The masses whose λ the warning suggests.
_SUGGESTED = (0.5, 0.9, 0.99)
_MIN_SAMPLES = 100
_BISECTIONS = 100  # on log t: ~700 / 2^100, far below float64's resolution


class SmallKeptMassWarning(UserWarning):
    """A λ whose threshold keeps almost none of q(θ|D)'s mass: the adjusted likelihood is then
    zero at almost every θ, and the unlearning silently does next to nothing."""


def check_mass(mass: Any) -> float:
    """Validate a share of q(θ|D)'s mass to keep and return it as a float.

    Arguments:
        mass: a real number in (0, 1] (a Python or 0-dim tensor number; not a string).

    Returns:
        ``float(mass)``.

    Raises:
        TypeError: when ``mass`` is not a real number.
        ValueError: when it is outside (0, 1] (or nan).

    Example:
        >>> check_mass(0.9)
        0.9
    """
    return check_in_unit_interval("mass", mass, open_left=True)


def _is_gaussian_site(fn: Any) -> bool:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, GAUSSIAN_DISTRIBUTIONS)


class MassScale:
    r"""The adjusted likelihood's threshold on the mass scale of q(θ|D).

    The threshold keeps θ where log q(θ|D) > log λ + log q*, i.e. where the gap
    g(θ) = log q* − log q(θ|D) is below t = −log λ. The share of q(θ|D) kept is
    m(λ) = P_{θ∼q(θ|D)}(g(θ) < −log λ). For a Gaussian q(θ|D) over M unconstrained dimensions,
    g = ½ (θ − μ)ᵀ Σ⁻¹ (θ − μ) ∼ χ²_M / 2, so exactly

    .. math:: m(λ) = F_{χ^2_M}(−2 \log λ), \qquad λ(m) = \exp(−F^{-1}_{χ^2_M}(m) / 2);

    otherwise (flows) m(λ) is the fraction of ``num_samples`` draws of q(θ|D) with
    g < −log λ and λ(m) = exp(−Q_m(g)), Q_m the empirical m-quantile. Since g concentrates
    around M/2, a fixed λ keeps less and less as M grows: λ = 1e-5 keeps 4e-4 of the mass at
    M = 50 and nothing at M = 500, where λ(0.5) ≈ e^{−250}.

    Gaussian means every site of the frozen guide is Gaussian (:data:`GAUSSIAN_GUIDES
    <pyro_unlearn.guides.GAUSSIAN_GUIDES>`, or a guide function of Normal sites); then no
    draw and no log q* is needed. The caller's random stream is left as it was.

    Arguments:
        posterior: the frozen q(θ|D).
        *args, **kwargs: the guide's arguments (the model's, as the losses pass them); used
            only to draw from a non-Gaussian q(θ|D).
        num_samples: the draws of q(θ|D) of the empirical scale (at least 100).

    Attributes:
        dimension: M, the unconstrained dimension of θ.
        exact: whether the scale is the closed form (Gaussian) or estimated from draws.
        num_samples: the draws taken (0 when exact).

    Raises:
        TypeError: for a ``posterior`` that is not a :class:`~pyro_unlearn.FrozenPosterior`,
            or a ``num_samples`` that is not an integer.
        ValueError: for ``num_samples`` below 100 or non-finite arguments.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3.3.1: the adjusted likelihood).

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_unlearn import freeze
        >>> model = lambda: pyro.sample("w", dist.Normal(torch.zeros(50), 1.0).to_event(1))
        >>> guide = AutoNormal(model)
        >>> _ = guide()
        >>> scale = MassScale(freeze(guide))
        >>> scale.dimension, round(scale.kept(1e-5), 5)
        (50, 0.00038)
        >>> f"{scale.lam(0.9):.3g}"
        '1.92e-14'
    """

    def __init__(
        self, posterior: FrozenPosterior, *args: Any, num_samples: int = 10_000, **kwargs: Any
    ) -> None:
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(
                f"posterior must be a FrozenPosterior (pu.freeze(guide)), got "
                f"{type(posterior).__name__}"
            )
        num_samples = check_positive_int("num_samples", num_samples)
        if num_samples < _MIN_SAMPLES:
            raise ValueError(f"num_samples must be at least {_MIN_SAMPLES}, got {num_samples}")
        check_finite_data(args, kwargs)
        self.dimension = sum(shape.numel() for shape in posterior.site_shapes.values())
        device = next(iter(posterior.params.values())).device if posterior.params else None
        self._device = device
        self._gaps: torch.Tensor | None = None
        with torch.no_grad(), preserved_rng(args, kwargs):
            self.exact = is_gaussian(posterior) or self._gaussian_sites(posterior, args, kwargs)
            if not self.exact:
                self._gaps = self._draw_gaps(posterior, args, kwargs, num_samples)
        self.num_samples = 0 if self.exact else num_samples

    @staticmethod
    def _gaussian_sites(posterior: FrozenPosterior, args: tuple, kwargs: dict) -> bool:
        trace = posterior.sample(*args, **kwargs)
        return all(_is_gaussian_site(trace.nodes[name]["fn"]) for name in posterior.sites)

    @staticmethod
    def _draw_gaps(posterior: FrozenPosterior, args: tuple, kwargs: dict, num: int) -> torch.Tensor:
        """g(θ_s) = log q* − log q(θ_s|D) for ``num`` draws in one plate, sorted."""
        log_q_max = posterior.log_q_max  # first use: the numeric search, inside preserved_rng
        dim = -max_plate_nesting(posterior.sample(*args, **kwargs)) - 1
        with poutine.block():
            trace = poutine.trace(pyro.plate("_mass_scale", num, dim=dim)(posterior)).get_trace(
                *args, **kwargs
            )
        trace.compute_log_prob(site_filter=lambda name, _: name in posterior.sites)
        log_q = sum_sites_per_particle(trace, posterior.sites, dim, num)
        return (log_q_max - log_q).sort().values

    def kept(self, lam: float) -> float:
        """m(λ): the share of q(θ|D)'s mass where log q(θ|D) > log λ + log q*.

        Arguments:
            lam: λ ∈ [0, 1]; λ = 0 keeps everything, λ = 1 nothing (for a Gaussian).

        Returns:
            A float in [0, 1].
        """
        lam = check_lam(lam)
        if lam == 0.0:
            return 1.0
        t = -math.log(lam)
        if self._gaps is not None:
            return float((self._gaps < t).double().mean())
        a = torch.tensor(self.dimension / 2, dtype=torch.float64, device=self._device)
        return float(torch.special.gammainc(a, torch.full_like(a, t)))

    def log_lam(self, mass: float) -> float:
        """log λ(m), which stays finite where λ(m) itself underflows (M beyond ~1400).

        Arguments:
            mass: the share m ∈ (0, 1] of q(θ|D)'s mass to keep.

        Returns:
            log λ ≤ 0; −∞ for m = 1.
        """
        mass = check_mass(mass)
        if mass == 1.0:
            return -math.inf
        if self._gaps is not None:
            return -max(float(torch.quantile(self._gaps.double(), mass)), 0.0)
        return -self._chi2_half_quantile(mass)

    def lam(self, mass: float) -> float:
        """λ(m): the λ whose threshold keeps the share ``mass`` of q(θ|D)'s mass.

        Arguments:
            mass: m ∈ (0, 1]; m = 1 gives λ = 0 (the plain likelihood).

        Returns:
            λ ∈ [0, 1].

        Raises:
            ValueError: when λ(m) < 5e-324 underflows a float (a Gaussian with M beyond ~1400
                dimensions): use :meth:`log_lam`.
        """
        log_lam = self.log_lam(mass)
        lam = math.exp(log_lam)
        if lam == 0.0 and log_lam > -math.inf:
            raise ValueError(
                f"the λ that keeps mass={mass} of q(θ|D) (M = {self.dimension}) is "
                f"exp({log_lam:.6g}), below the smallest positive float: λ cannot express this "
                "threshold; use log_lam, or λ = 0 (the plain likelihood keeps all the mass)"
            )
        return lam

    def _chi2_half_quantile(self, mass: float) -> float:
        """t with P(χ²_M / 2 < t) = ``mass``: bisection on log t of the regularised γ."""
        a = torch.tensor(self.dimension / 2, dtype=torch.float64, device=self._device)
        hi = a + 10 * a.sqrt() + 40
        while float(torch.special.gammainc(a, hi)) < mass:
            hi = 2 * hi
        lo, hi = hi.log() - 700, hi.log()
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            below = torch.special.gammainc(a, mid.exp()) < mass
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return float(((lo + hi) / 2).exp())

    def warn_if_small(
        self, lams: float | Sequence[float], *, min_mass: float = MIN_KEPT_MASS, stacklevel: int = 2
    ) -> list[float]:
        """Warn once (:class:`SmallKeptMassWarning`) for the λ ∈ (0, 1) among ``lams`` that keep
        less than ``min_mass`` of q(θ|D)'s mass, suggesting the λ that keep 50, 90 and 99 %.
        λ = 0 (the plain likelihood) and λ = 1 (unlearning switched off on purpose) never warn.

        Arguments:
            lams: one λ or several.
            min_mass: the share in (0, 1] below which a λ warns.
            stacklevel: as :func:`warnings.warn`'s, counted from the caller of this method.

        Returns:
            m(λ) for each λ, in order.
        """
        lams = [lams] if not isinstance(lams, Sequence) else list(lams)
        lams = [check_lam(lam) for lam in lams]
        min_mass = check_in_unit_interval("min_mass", min_mass, open_left=True)
        masses = [self.kept(lam) for lam in lams]
        small = [(lam, m) for lam, m in zip(lams, masses, strict=True) if 0 < lam < 1]
        small = [(lam, m) for lam, m in small if m < min_mass]
        if small:
            warnings.warn(self._message(small, min_mass), SmallKeptMassWarning, stacklevel + 1)
        return masses

    def _message(self, small: list[tuple[float, float]], min_mass: float) -> str:
        kept = ", ".join(f"λ = {lam:g} keeps {_percent(m)}" for lam, m in small)
        how = (
            f"θ has M = {self.dimension} dimensions and q(θ|D) is Gaussian, so "
            f"log q* − log q(θ|D) ∼ χ²_M/2"
            if self.exact
            else f"estimated from {self.num_samples} draws of q(θ|D), M = {self.dimension}"
        )
        suggested = ", ".join(
            f"λ = {_format_lam(self.log_lam(m))} keeps {100 * m:g} %" for m in _SUGGESTED
        )
        return (
            f"{kept} of q(θ|D)'s mass (less than {100 * min_mass:g} %; {how}): the adjusted "
            "likelihood is then 1 (log p_adj = 0) at almost every θ, which silently switches "
            "unlearning off. "
            f"{suggested} (pyro_unlearn.infer.lam_for_mass); λ = 0 keeps all of it"
        )


def _percent(mass: float) -> str:
    return f"{mass:.2g} (none)" if mass == 0.0 else f"{100 * mass:.2g} %"


def _format_lam(log_lam: float) -> str:
    lam = math.exp(log_lam)
    return f"{lam:.2g}" if lam > 0.0 else f"exp({log_lam:.4g})"


def kept_mass(
    posterior: FrozenPosterior,
    lam: float,
    *args: Any,
    num_samples: int = 10_000,
    **kwargs: Any,
) -> float:
    r"""The share of q(θ|D)'s mass that the adjusted likelihood's threshold keeps:
    P_{θ∼q(θ|D)}(log q(θ|D) > log λ + log q*), exactly F_{χ²_M}(−2 log λ) for a Gaussian
    q(θ|D) over M dimensions, else estimated from ``num_samples`` draws (:class:`MassScale`).

    Arguments:
        posterior: the frozen q(θ|D).
        lam: λ ∈ [0, 1].
        *args, **kwargs: the guide's arguments (needed to draw from a non-Gaussian q(θ|D)).
        num_samples: draws for a non-Gaussian q(θ|D) (at least 100).

    Returns:
        A float in [0, 1]: 1 for λ = 0.

    Raises:
        TypeError, ValueError: for a bad ``posterior``, ``lam`` or ``num_samples``, named,
            before anything is drawn.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> from pyro_unlearn import freeze
        >>> model = lambda: pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> pyro.clear_param_store()  # a fresh guide's parameters
        >>> guide = AutoMultivariateNormal(model)
        >>> _ = guide()
        >>> round(kept_mass(freeze(guide), 0.1), 4)  # F_χ²₂(2 log 10) = 1 − λ
        0.9
    """
    lam = check_lam(lam)
    return MassScale(posterior, *args, num_samples=num_samples, **kwargs).kept(lam)


def lam_for_mass(
    posterior: FrozenPosterior,
    mass: float,
    *args: Any,
    num_samples: int = 10_000,
    **kwargs: Any,
) -> float:
    r"""The λ whose threshold keeps the share ``mass`` of q(θ|D)'s mass, the inverse of
    :func:`kept_mass`: λ = exp(−F⁻¹_{χ²_M}(m)/2) for a Gaussian q(θ|D) over M dimensions,
    else λ = exp(Q_{1−m}(log q(θ|D)) − log q*) over ``num_samples`` draws (:class:`MassScale`).

    Arguments:
        posterior: the frozen q(θ|D).
        mass: m ∈ (0, 1]; m = 1 gives λ = 0.
        *args, **kwargs: the guide's arguments (needed to draw from a non-Gaussian q(θ|D)).
        num_samples: draws for a non-Gaussian q(θ|D) (at least 100).

    Returns:
        λ ∈ [0, 1].

    Raises:
        TypeError, ValueError: for a bad ``posterior``, ``mass`` or ``num_samples``, named,
            before anything is drawn; ``ValueError`` when λ underflows a float
            (:meth:`MassScale.lam`).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> from pyro_unlearn import freeze
        >>> model = lambda: pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> pyro.clear_param_store()  # a fresh guide's parameters
        >>> guide = AutoMultivariateNormal(model)
        >>> _ = guide()
        >>> round(lam_for_mass(freeze(guide), 0.9), 4)  # M = 2: λ = 1 − m
        0.1
    """
    mass = check_mass(mass)
    return MassScale(posterior, *args, num_samples=num_samples, **kwargs).lam(mass)


def warn_small_kept_mass(
    posterior: FrozenPosterior,
    lam: float,
    *args: Any,
    min_mass: float = MIN_KEPT_MASS,
    num_samples: int = 10_000,
    stacklevel: int = 2,
    **kwargs: Any,
) -> float:
    """Warn (:class:`SmallKeptMassWarning`) when λ ∈ (0, 1) keeps less than ``min_mass`` of
    q(θ|D)'s mass, naming the λ that keep 50, 90 and 99 % (:meth:`MassScale.warn_if_small`).

    Arguments:
        posterior: the frozen q(θ|D).
        lam: λ ∈ [0, 1]; 0 and 1 never warn (0 computes nothing).
        *args, **kwargs: the guide's arguments (needed to draw from a non-Gaussian q(θ|D)).
        min_mass: the share in (0, 1] below which λ warns (default 5 %).
        num_samples: draws for a non-Gaussian q(θ|D).
        stacklevel: as :func:`warnings.warn`'s, counted from the caller of this function.

    Returns:
        m(λ), the share kept.

    Example:
        >>> import warnings, pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_unlearn import freeze
        >>> model = lambda: pyro.sample("w", dist.Normal(torch.zeros(50), 1.0).to_event(1))
        >>> guide = AutoNormal(model)
        >>> _ = guide()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = warn_small_kept_mass(freeze(guide), 1e-5)
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        λ = 1e-05 keeps 0.038 % of q(θ|D)'s mass ... λ = 1.9e-14 keeps 90 %, ...
    """
    lam = check_lam(lam)
    min_mass = check_in_unit_interval("min_mass", min_mass, open_left=True)
    if lam == 0.0:
        return 1.0
    scale = MassScale(posterior, *args, num_samples=num_samples, **kwargs)
    return scale.warn_if_small(lam, min_mass=min_mass, stacklevel=stacklevel + 1)[0]
