r"""Unlearning Pyro's own variational GPs (:mod:`pyro.contrib.gp`): a model in which y depends on
the sampled inducing values u.

:class:`pyro.contrib.gp.models.VariationalSparseGP` (and :class:`~pyro.contrib.gp.models.
VariationalGP`) computes f from its variational parameters ``u_loc``/``u_scale_tril``, not from
the u its model samples, so log p(D_e|u) is the same for every draw and the unlearning losses
have nothing to reweight. :class:`VariationalGPAdapter` gives the model they need: given u,

.. math:: \log \tilde p(y_i|u) = \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)], \qquad
          p(f_i|u) = N\big(m(x_i) + a_i^\top v,\; k(x_i, x_i) - \|a_i\|^2\big),

with :math:`a_i = L^{-1} k(X_u, x_i)`, :math:`L L^\top = k(X_u, X_u)` and :math:`v = u`
(``whiten=True``) or :math:`v = L^{-1} u`, the likelihood of the evidence lower bound of Hensman
et al. (2015); q(u|D)/p̃(D_e|u) is then the target of unlearning (Nguyen et al., 2020), and with a
Gaussian likelihood and the optimal Gaussian q(u|D) it is exactly the optimal q(u|D_r). For a
:class:`~pyro.contrib.gp.models.VariationalGP` the inducing inputs are its training inputs X and
u is f(X). Kernel, mean function, likelihood hyperparameters and inducing inputs stay fixed:
only q(u) moves.

References:
    - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
    - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
      Classification. AISTATS 2015.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.contrib.gp.likelihoods import Binary, Gaussian, Poisson
from pyro.contrib.gp.models import VariationalGP, VariationalSparseGP
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule
from torch.distributions import constraints, transform_to

from ..params import ParamSnapshot
from ..posterior import FrozenPosterior, freeze
from ..validation import check_finite, check_positive_int

__all__ = [
    "ExpectedLogDensity",
    "InducingValuesGuide",
    "VariationalGPAdapter",
    "expected_log_density",
    "inducing_distribution",
    "inducing_kl",
]

#: The likelihoods of :mod:`pyro.contrib.gp` the adapter scores given u.
LIKELIHOODS = (Gaussian, Binary, Poisson)
_QUADRATURE_POINTS = 20


def _q_names(gp: VariationalSparseGP | VariationalGP) -> tuple[str, str]:
    """The attribute names of q(u)'s mean and (unconstrained) Cholesky factor."""
    return (
        ("u_loc", "u_scale_tril")
        if isinstance(gp, VariationalSparseGP)
        else ("f_loc", "f_scale_tril")
    )


def _q_tensors(gp: VariationalSparseGP | VariationalGP) -> tuple[torch.Tensor, torch.Tensor]:
    """q(u)'s mean and unconstrained Cholesky factor: the GP's own leaf tensors."""
    loc, tril = _q_names(gp)
    return getattr(gp, loc), getattr(gp, f"{tril}_unconstrained")


# -- the likelihood given u ------------------------------------------------------------------------
def _log_density(likelihood: Any, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """log p(y|f) of a Binary or Poisson likelihood, elementwise."""
    if isinstance(likelihood, Binary):
        if likelihood.response_function is torch.sigmoid:
            return dist.Bernoulli(logits=f, validate_args=False).log_prob(y)
        probs = likelihood.response_function(f)
        return dist.Bernoulli(probs=probs, validate_args=False).log_prob(y)
    rate = likelihood.response_function(f)
    return dist.Poisson(rate, validate_args=False).log_prob(y)


def expected_log_density(
    likelihood: Gaussian | Binary | Poisson,
    y: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    r"""E_{N(f; mean, var)}[log p(y|f)] per point, the likelihood's hyperparameters held fixed.

    .. math:: \mathbb{E}[\log N(y; f, σ^2)] = \log N(y; m, σ^2) - \frac{v}{2σ^2}, \qquad
              \mathbb{E}[\log \mathrm{Poisson}(y; e^f)] = y m - e^{m + v/2} - \log y!,

    and 20-point Gauss–Hermite quadrature otherwise (Binary, a Poisson of another response).

    Arguments:
        likelihood: a :mod:`pyro.contrib.gp` ``Gaussian``, ``Binary`` or ``Poisson`` likelihood.
        y: the observations, broadcastable with ``mean``.
        mean, var: the moments of f at each point.

    Returns:
        The expected log-density, of the broadcast shape; differentiable in ``mean``.

    Example:
        >>> import pyro.contrib.gp as gp
        >>> gaussian = gp.likelihoods.Gaussian(torch.tensor(0.5))
        >>> expected_log_density(gaussian, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.5))
        tensor(-1.0724)
    """
    var = var.expand_as(mean)
    if isinstance(likelihood, Gaussian):
        noise = likelihood.variance.detach()
        return dist.Normal(mean, noise.sqrt(), validate_args=False).log_prob(y) - var / (2 * noise)
    if isinstance(likelihood, Poisson) and likelihood.response_function is torch.exp:
        return y * mean - torch.exp(mean + var / 2) - torch.lgamma(y + 1)
    if not isinstance(likelihood, LIKELIHOODS):
        raise TypeError(
            f"the likelihood is {type(likelihood).__name__}; supported: "
            f"{', '.join(k.__name__ for k in LIKELIHOODS)}"
        )
    nodes, weights = np.polynomial.hermite.hermgauss(_QUADRATURE_POINTS)
    nodes = torch.as_tensor(nodes * math.sqrt(2.0), dtype=mean.dtype, device=mean.device)
    weights = torch.as_tensor(weights / math.sqrt(math.pi), dtype=mean.dtype, device=mean.device)
    f = mean.unsqueeze(-1) + var.sqrt().unsqueeze(-1) * nodes
    y = torch.as_tensor(y, dtype=mean.dtype, device=mean.device).unsqueeze(-1)
    return (_log_density(likelihood, y, f) * weights).sum(-1)


class ExpectedLogDensity(dist.TorchDistribution):
    """y's distribution given u, scored as the sparse GP's bound scores it: ``log_prob(y)`` is
    E_{p(f|u)}[log p(y|f)] per point (:func:`expected_log_density`); ``sample`` draws f, then y.

    Arguments:
        likelihood: the GP's :mod:`pyro.contrib.gp` likelihood.
        mean, var: E[f|u] and Var[f|u] per point.
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(
        self,
        likelihood: Gaussian | Binary | Poisson,
        mean: torch.Tensor,
        var: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self.likelihood, self.f_mean, self.f_var = likelihood, mean, var.expand_as(mean)
        super().__init__(mean.shape, torch.Size(), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return expected_log_density(self.likelihood, value, self.f_mean, self.f_var)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.f_mean.shape
            noise = torch.randn(shape, dtype=self.f_mean.dtype, device=self.f_mean.device)
            f = self.f_mean + self.f_var.sqrt() * noise
            if isinstance(self.likelihood, Gaussian):
                noise = self.likelihood.variance.detach().sqrt()
                return dist.Normal(f, noise).sample()
            if isinstance(self.likelihood, Binary):
                return dist.Bernoulli(probs=self.likelihood.response_function(f)).sample()
            return dist.Poisson(self.likelihood.response_function(f)).sample()

    def expand(
        self, batch_shape: torch.Size, _instance: ExpectedLogDensity | None = None
    ) -> ExpectedLogDensity:
        shape = torch.Size(batch_shape)
        return ExpectedLogDensity(
            self.likelihood, self.f_mean.expand(shape), self.f_var.expand(shape)
        )


@dataclass
class _Projection:
    """p(f(x)|u) at fixed hyperparameters (no gradient): E[f|u] = mean + aᵀv, Var = var."""

    a: torch.Tensor  # L⁻¹ k(X_u, x), (M, N)
    mean: torch.Tensor  # m(x), (N,)
    var: torch.Tensor  # k(x, x) − ‖a‖², (N,)
    chol: torch.Tensor  # L, (M, M)
    whitened: bool

    def f_mean(self, u: torch.Tensor) -> torch.Tensor:
        """E[f(x)|u] for u (..., M): (..., N), differentiable in u."""
        v = u
        if not self.whitened:
            v = torch.linalg.solve_triangular(self.chol, u.unsqueeze(-1), upper=False).squeeze(-1)
        return self.mean + (v.unsqueeze(-2) @ self.a).squeeze(-2)

    def prior(self) -> dist.MultivariateNormal:
        """p(u) as Pyro's model draws it: N(0, I) (whitened) or N(0, k(X_u, X_u))."""
        zero = torch.zeros(self.chol.shape[-1], dtype=self.a.dtype, device=self.a.device)
        if self.whitened:
            eye = torch.eye(len(zero), dtype=zero.dtype, device=zero.device)
            return dist.MultivariateNormal(zero, scale_tril=eye)
        return dist.MultivariateNormal(zero, scale_tril=self.chol)


# -- the guide -------------------------------------------------------------------------------------
class InducingValuesGuide(PyroModule):
    """A Pyro guide ``<prefix>.u ~ q(u) = N(loc, L Lᵀ)``: the GP's own ``u_loc`` (``f_loc``) and
    unconstrained ``u_scale_tril`` (``f_scale_tril``), registered in Pyro's param store as
    ``<prefix>.u_loc`` and ``<prefix>.u_scale_tril_unconstrained`` (the same tensors: unlearning
    moves the GP's q(u), and ``gp(X_new)`` predicts from it).

    Registration is checked: if the store already holds those names for another GP (Pyro keeps
    the first tensor registered under a name, so this GP would silently never move), it raises.

    Arguments:
        gp: a :class:`~pyro.contrib.gp.models.VariationalSparseGP` or
            :class:`~pyro.contrib.gp.models.VariationalGP`.
        name_prefix: the prefix of its site and parameter names.
    """

    def __init__(self, gp: VariationalSparseGP | VariationalGP, name_prefix: str) -> None:
        super().__init__()
        object.__setattr__(self, "gp", gp)  # not a submodule: only q(u) is registered
        self.name_prefix = name_prefix

    @property
    def site(self) -> str:
        """The name of the sample site of u."""
        return f"{self.name_prefix}.u"

    @property
    def param_names(self) -> tuple[str, str]:
        """The param-store names of q(u)'s mean and unconstrained Cholesky factor."""
        return f"{self.name_prefix}.u_loc", f"{self.name_prefix}.u_scale_tril_unconstrained"

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        registered = []
        for name, tensor in zip(self.param_names, _q_tensors(self.gp), strict=True):
            value = pyro.param(name, tensor)
            if tensor.requires_grad and value is not tensor:
                raise RuntimeError(
                    f"Pyro's param store already holds {name!r} from another GP, so this GP's "
                    f"q(u) would silently never move: call pyro.clear_param_store() or give this "
                    f"adapter a distinct name_prefix (now {self.name_prefix!r})"
                )
            registered.append(value)
        loc, raw = registered
        scale_tril = transform_to(constraints.lower_cholesky)(raw)
        return pyro.sample(self.site, dist.MultivariateNormal(loc, scale_tril=scale_tril))


# -- the adapter -----------------------------------------------------------------------------------
def _check_gp(gp: Any) -> None:
    """A variational GP of one latent process, a supported likelihood, no hyperparameter prior."""
    if not isinstance(gp, VariationalSparseGP | VariationalGP):
        raise TypeError(
            "VariationalGPAdapter takes a pyro.contrib.gp.models.VariationalSparseGP or "
            f"VariationalGP, got {type(gp).__name__} (GPRegression and SparseGPRegression "
            "integrate f out exactly: they have no q(u) to unlearn)"
        )
    loc, _ = _q_tensors(gp)
    if loc.dim() != 1:
        raise TypeError(
            f"the GP has latent_shape {tuple(loc.shape[:-1])}: the adapter supports one latent "
            "process (latent_shape=()), as regression and binary classification have"
        )
    if not isinstance(gp.likelihood, LIKELIHOODS):
        raise TypeError(
            f"the GP's likelihood is {type(gp.likelihood).__name__}; the adapter scores "
            f"{', '.join(k.__name__ for k in LIKELIHOODS)} given u"
        )
    priors = [
        f"{name}.{site}" if name else site
        for name, module in gp.named_modules()
        if isinstance(module, PyroModule)
        for site in module._pyro_samples
    ]
    if priors:
        raise TypeError(
            f"the GP's hyperparameters {priors} have priors (PyroSample): the adapter holds "
            "hyperparameters fixed; set them to point values (e.g. their posterior means) first"
        )


class VariationalGPAdapter:
    r"""A Pyro model and guide for a trained :mod:`pyro.contrib.gp` variational GP that the
    unlearning methods can use: y depends on the sampled u.

    ``model(x, y=None, num_data=None)`` samples ``<prefix>.u ~ p(u)`` (as the GP's model does:
    N(0, I) whitened, N(0, k(X_u, X_u)) otherwise) and observes ``<prefix>.y`` in the plate
    ``<prefix>.data`` (dim −1), one row per point of ``x``, with

    .. math:: \log \tilde p(y_i|u) = \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)].

    The data set's size is the number of points given (``num_data`` only when ``x`` is a
    mini-batch of a larger set): erasing rows names them by index, ``erased=idx,
    plate=adapter.plate``, on the full data, or passes D_e alone. (The GP's own ``num_data``,
    which ``set_data`` leaves at the training set's size, is not used.) ``guide`` (an
    :class:`InducingValuesGuide`) samples ``<prefix>.u ~ q(u)`` from the GP's own ``u_loc`` and
    ``u_scale_tril`` (whitened or not, as the GP), so unlearning moves the GP's q(u) in place.

    Pyro's ``gp.model`` draws u but computes f from ``u_loc``/``u_scale_tril``: its log p(D_e|u)
    is the same for every draw, and the unlearning methods refuse it, naming the cause. Use the
    adapter's ``model``/``guide`` instead.

    Arguments:
        gp: a trained :class:`~pyro.contrib.gp.models.VariationalSparseGP` or
            :class:`~pyro.contrib.gp.models.VariationalGP` with one latent process, a
            ``Gaussian``, ``Binary`` or ``Poisson`` likelihood and hyperparameters without priors.
        name_prefix: the prefix of the site, plate and parameter names.

    Raises:
        TypeError: for another model, several latent processes, another likelihood,
            hyperparameters with priors, or an empty ``name_prefix``.

    References:
        - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
          Classification. AISTATS 2015.
        - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        >>> import pyro, torch, pyro.contrib.gp as gp
        >>> import pyro_unlearn as pu
        >>> pyro.clear_param_store()  # one GP per name_prefix in the store
        >>> from pyro_unlearn.contrib.pyro_gp import VariationalGPAdapter
        >>> x = torch.linspace(0, 1, 30); y = torch.sin(6 * x)
        >>> vsgp = gp.models.VariationalSparseGP(
        ...     x, y, gp.kernels.RBF(input_dim=1), Xu=x[::6].clone(),
        ...     likelihood=gp.likelihoods.Gaussian(), whiten=True)
        >>> # (train it here, e.g. with TraceMeanField_ELBO)
        >>> adapter = VariationalGPAdapter(vsgp)
        >>> result = pu.forget(adapter.model, adapter.guide, x, y, erased=range(5),
        ...                    plate=adapter.plate, num_steps=20, progress=False,
        ...                    method="rkl", loss_options={"proposal": "current", "anneal": 0.5})
    """

    def __init__(self, gp: VariationalSparseGP | VariationalGP, name_prefix: str = "gp") -> None:
        _check_gp(gp)
        if not isinstance(name_prefix, str) or not name_prefix:
            raise TypeError(f"name_prefix must be a non-empty str, got {name_prefix!r}")
        self.gp, self.name_prefix = gp, name_prefix
        inducing = gp.Xu if isinstance(gp, VariationalSparseGP) else gp.X
        self.inducing_inputs = inducing.detach().clone()
        self.guide = InducingValuesGuide(gp, name_prefix)

    @property
    def plate(self) -> str:
        """The data plate's name, for ``erased=idx, plate=adapter.plate``."""
        return f"{self.name_prefix}.data"

    @property
    def site(self) -> str:
        """The observed site's name."""
        return f"{self.name_prefix}.y"

    def project(self, x: torch.Tensor) -> _Projection:
        """p(f(x)|u) at the GP's current hyperparameters, without gradient. The kernel and mean
        function run against an empty param store, outside any trace: they register nothing."""
        gp, z = self.gp, self.inducing_inputs
        with torch.no_grad(), poutine.block(), ParamSnapshot().active():
            kzz = gp.kernel(z).contiguous()
            kzz = kzz + gp.jitter * torch.eye(len(z), dtype=kzz.dtype, device=kzz.device)
            kzx, kxx = gp.kernel(z, x), gp.kernel(x, diag=True)
            mean = gp.mean_function(x)
            chol = torch.linalg.cholesky(kzz)
            a = torch.linalg.solve_triangular(chol, kzx, upper=False)
            var = (kxx - a.square().sum(-2)).clamp_min(0.0)
            mean = torch.as_tensor(mean, dtype=a.dtype, device=a.device).expand(var.shape)
        return _Projection(a, mean, var, chol, bool(gp.whiten))

    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        """The generative model: u ~ p(u), then y_i with log p̃(y_i|u) in the data plate.

        Raises:
            ValueError: ``y`` with another number of rows than ``x``, inputs of another feature
                shape than the GP's, ``num_data`` below the rows given, or (under Pyro's
                validation) non-finite ``x`` or ``y``, named with the first row.
        """
        self._check_data(x, y, num_data)
        proj = self.project(x)
        u = pyro.sample(self.guide.site, proj.prior())
        if u.dim() > 1:  # batch dims of u (particles) end with the data plate's dim, size 1
            u = u.squeeze(-2)
        n = x.shape[0]
        size = n if num_data is None else int(num_data)
        subsample = None if size == n else torch.arange(n, device=x.device)
        fn = ExpectedLogDensity(self.gp.likelihood, proj.f_mean(u), proj.var)
        with pyro.plate(self.plate, size, subsample=subsample, dim=-1):
            return pyro.sample(self.site, fn, obs=y)

    def _check_data(self, x: Any, y: Any, num_data: Any) -> None:
        """Sizes always, finiteness under Pyro's validation (a pass over the data each step)."""
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise TypeError(f"x must be a tensor with one row per point, got {x!r}")
        features = tuple(self.inducing_inputs.shape[1:])
        if tuple(x.shape[1:]) != features:
            raise ValueError(
                f"x has shape {tuple(x.shape)}: the GP's inputs are (N, *{features}), as its "
                f"inducing inputs {tuple(self.inducing_inputs.shape)}"
            )
        n = x.shape[0]
        if y is not None and (not isinstance(y, torch.Tensor) or tuple(y.shape) != (n,)):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must have one entry per row of x ({n},), got {got}")
        if num_data is not None and check_positive_int("num_data", num_data) < n:
            raise ValueError(
                f"num_data={num_data} is the size of the data set x is a batch of: it cannot be "
                f"below the batch's {n} rows"
            )
        if is_validation_enabled():
            check_finite("x", x)
            if y is not None:
                check_finite("y", y)

    def freeze(self) -> FrozenPosterior:
        """q(u|D): :func:`~pyro_unlearn.freeze` of the guide, an independent copy."""
        return freeze(self.guide)

    @torch.no_grad()
    def fit_optimal(self, x: torch.Tensor, y: torch.Tensor) -> None:
        r"""Set the GP's q(u), in place, to the optimum of the bound on (x, y) at the fixed
        hyperparameters, in closed form (Gaussian likelihood; Titsias, 2009):

        .. math:: Λ = Λ_0 + Φ^\top Φ / σ^2, \qquad μ = Λ^{-1} Φ^\top (y - m(x)) / σ^2,

        with E[f(x)|u] = m(x) + Φu and Λ_0 the prior precision of u. Pyro's own
        ``VariationalSparseGP`` with a Gaussian likelihood scores y by the predictive
        N(y; E_q[f], Var_q[f] + σ²) instead of E_q[log N(y; f, σ²)], which leaves q(u) wider than
        this bound's optimum, often wider than p̃(D_e|u) allows dividing by (q(u|D)/p̃(D_e|u) not
        normalisable); call this after training, before freezing q(u|D). For other likelihoods,
        train q(u) with :class:`~pyro.infer.Trace_ELBO` on the adapter's ``model``/``guide``.

        Arguments:
            x, y: the training data D (all of it).

        Raises:
            TypeError: for a likelihood other than ``Gaussian``.

        References:
            M. Titsias. Variational Learning of Inducing Variables in Sparse Gaussian Processes.
            AISTATS 2009.
        """
        if not isinstance(self.gp.likelihood, Gaussian):
            raise TypeError(
                f"fit_optimal is closed form for a Gaussian likelihood, the GP's is "
                f"{type(self.gp.likelihood).__name__}: train q(u) with Trace_ELBO on the "
                "adapter's model and guide instead"
            )
        self._check_data(x, y, None)
        proj = self.project(x)
        phi = proj.a.T  # whitened: E[f|u] = m + aᵀu
        eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
        prior_precision = eye
        if not proj.whitened:  # E[f|u] = m + aᵀL⁻¹u, u ~ N(0, LLᵀ)
            inverse = torch.linalg.solve_triangular(proj.chol, eye, upper=False)
            phi, prior_precision = phi @ inverse, inverse.T @ inverse
        noise = self.gp.likelihood.variance.detach()
        precision = prior_precision + phi.T @ phi / noise
        chol = torch.linalg.cholesky(precision)
        loc = torch.cholesky_solve((phi.T @ (y - proj.mean) / noise).unsqueeze(-1), chol)
        covariance = torch.cholesky_inverse(chol)
        scale_tril = torch.linalg.cholesky(covariance)
        loc_tensor, raw = _q_tensors(self.gp)
        loc_tensor.copy_(loc.squeeze(-1))
        raw.copy_(transform_to(constraints.lower_cholesky).inv(scale_tril))


# -- reading q(u) ----------------------------------------------------------------------------------
def inducing_distribution(
    source: VariationalSparseGP | VariationalGP | VariationalGPAdapter | FrozenPosterior,
) -> dist.MultivariateNormal:
    """q(u) = N(loc, L Lᵀ), detached, of a GP, an adapter or a frozen q(u|D) (in the GP's space:
    whitened when the GP is).

    Arguments:
        source: the GP, its :class:`VariationalGPAdapter`, or the
            :class:`~pyro_unlearn.FrozenPosterior` of an adapter's guide.

    Returns:
        A :class:`pyro.distributions.MultivariateNormal` over the M inducing values.

    Example:
        >>> import pyro.contrib.gp as gp
        >>> x = torch.linspace(0, 1, 10)
        >>> vsgp = gp.models.VariationalSparseGP(
        ...     x, x, gp.kernels.RBF(input_dim=1), x[::3].clone(), gp.likelihoods.Gaussian())
        >>> inducing_distribution(vsgp).mean  # Pyro starts q(u) at N(0, I)
        tensor([0., 0., 0., 0.])
    """
    if isinstance(source, FrozenPosterior):
        if not isinstance(source.guide, InducingValuesGuide):
            raise TypeError("this FrozenPosterior was not frozen from a VariationalGPAdapter")
        source = source.guide.gp
    if isinstance(source, VariationalGPAdapter):
        source = source.gp
    if not isinstance(source, VariationalSparseGP | VariationalGP):
        raise TypeError(
            "source must be a VariationalSparseGP, VariationalGP, VariationalGPAdapter or its "
            f"frozen posterior, got {type(source).__name__}"
        )
    loc, raw = _q_tensors(source)
    with torch.no_grad():
        scale_tril = transform_to(constraints.lower_cholesky)(raw)
    return dist.MultivariateNormal(loc.detach().clone(), scale_tril=scale_tril.detach().clone())


def inducing_kl(p: Any, q: Any) -> torch.Tensor:
    """KL(q_p(u) ‖ q_q(u)) in closed form, between two of :func:`inducing_distribution`'s sources
    (e.g. an unlearned and a retrained GP), as Nguyen et al. (2020) report.

    Arguments:
        p, q: GPs, adapters or frozen posteriors with the same number of inducing values.

    Returns:
        A 0-dim tensor.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
    """
    q_p, q_q = inducing_distribution(p), inducing_distribution(q)
    if q_p.mean.shape != q_q.mean.shape:
        raise ValueError(
            f"p's q(u) has shape {tuple(q_p.mean.shape)}, q's {tuple(q_q.mean.shape)}: the KL "
            "compares two q(u) of the same inducing inputs"
        )
    return torch.distributions.kl_divergence(q_p, q_q)
