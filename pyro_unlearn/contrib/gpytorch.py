r"""Unlearning GPyTorch sparse variational GPs: from q(u|D) to q(u|D_r), through Pyro or in
GPyTorch's own idiom.

Given the inducing values u, a sparse variational GP's likelihood is, per point, the one its
evidence lower bound uses (GPyTorch's :class:`~gpytorch.mlls.VariationalELBO`):

.. math:: \log \tilde p(y_i|u) = \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)], \qquad
          p(f_i|u) = N\big(m(x_i) + a_i^\top v,\; k(x_i, x_i) - \|a_i\|^2\big)

with :math:`a_i = L^{-1} K_{Z x_i}`, :math:`L L^\top = K_{ZZ}` and :math:`v = u` for the whitened
:class:`~gpytorch.variational.VariationalStrategy` or :math:`v = L^{-1}(u - m(Z))` for the
:class:`~gpytorch.variational.UnwhitenedVariationalStrategy`. Since
:math:`\mathbb{E}_{q(u)}[\sum_i \log \tilde p(y_i|u)] - \mathrm{KL}(q(u)\|p(u))` *is* GPyTorch's
ELBO, q(u|D)/p̃(D_e|u) is the target of unlearning; with a Gaussian likelihood and the optimal
Gaussian q(u|D) it is exactly the optimal q(u|D_r).

Kernel, mean, likelihood hyperparameters and inducing inputs are held fixed: only q(u) moves (they
would otherwise move to make D_e unlikely). q(u) may be a Cholesky, mean-field or (GPyTorch
objectives with :class:`gpytorch.optim.NGD` only) natural-parameter Gaussian. Two ways in:

* **Pyro:** :class:`PyroSVGP` gives a ``model``/``guide`` pair in which y depends on the sampled
  u (GPyTorch's ``PyroGP.model`` draws f from q(f), independently of u: enough for the ELBO, but
  it leaves the unlearning losses nothing to reweight). Use it with
  :class:`~pyro_unlearn.Trace_EUBO`, :class:`~pyro_unlearn.ReverseKL`,
  :func:`~pyro_unlearn.unlearn` and :func:`~pyro_unlearn.forget`.
* **GPyTorch:** :class:`VariationalEUBO` and :class:`VariationalReverseKL` are shaped like
  :mod:`gpytorch.mlls`: ``loss = -objective(model(x_e), y_e, inputs=x_e)`` in the usual loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import gpytorch
import pyro
import pyro.distributions as dist
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.mlls import MarginalLogLikelihood
from gpytorch.variational import (
    CholeskyVariationalDistribution,
    MeanFieldVariationalDistribution,
    NaturalVariationalDistribution,
    TrilNaturalVariationalDistribution,
    UnwhitenedVariationalStrategy,
    VariationalStrategy,
)
from linear_operator.operators import DiagLinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky
from pyro.nn import PyroModule
from torch.distributions import constraints

from ..infer.adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from ..infer.reverse_kl import ImportanceWeights
from ..posterior import FrozenPosterior
from ..posterior import freeze as freeze_guide

__all__ = [
    "InducingGuide",
    "PyroSVGP",
    "VariationalEUBO",
    "VariationalReverseKL",
    "clone",
    "erased_log_likelihood",
    "freeze",
    "inducing_distribution",
    "inducing_kl",
    "set_inducing_distribution",
]

_STRATEGIES = (VariationalStrategy, UnwhitenedVariationalStrategy)
_NATURAL = (NaturalVariationalDistribution, TrilNaturalVariationalDistribution)
_DISTRIBUTIONS = (CholeskyVariationalDistribution, MeanFieldVariationalDistribution, *_NATURAL)


def _strategy(gp: gpytorch.models.ApproximateGP):
    strategy = getattr(gp, "variational_strategy", None)
    if strategy is None:
        raise TypeError(
            f"expected a gpytorch.models.ApproximateGP with a variational_strategy, got "
            f"{type(gp).__name__}"
        )
    if not isinstance(strategy, _STRATEGIES):
        raise TypeError(
            f"{type(strategy).__name__} is not supported: use VariationalStrategy (whitened) or "
            "UnwhitenedVariationalStrategy (a batch GP, with batch_shape, gives several outputs)"
        )
    if not isinstance(strategy._variational_distribution, _DISTRIBUTIONS):
        raise TypeError(
            f"{type(strategy._variational_distribution).__name__} is not supported: use "
            "CholeskyVariationalDistribution, MeanFieldVariationalDistribution, or (with "
            "gpytorch.optim.NGD and the mlls-style objectives) NaturalVariationalDistribution or "
            "TrilNaturalVariationalDistribution"
        )
    return strategy


# -- the conditional p(f|u) ------------------------------------------------------------------------
@dataclass
class _Projection:
    """p(f(x)|u) = N(mean + (v @ a), var) with v = u (whitened) or L⁻¹(u − m(Z)); constants only."""

    a: torch.Tensor  # L⁻¹ K_Zx, (*batch, M, N)
    mean: torch.Tensor  # m(x), (*batch, N)
    var: torch.Tensor  # k(x, x) − ‖a‖², (*batch, N)
    chol: torch.Tensor  # L, (*batch, M, M)
    mean_z: torch.Tensor  # m(Z), (*batch, M)
    whitened: bool

    def f_mean(self, u: torch.Tensor) -> torch.Tensor:
        """E[f(x)|u] for u of shape (..., *batch, M): (..., *batch, N), differentiable in u."""
        v = u
        if not self.whitened:
            v = torch.linalg.solve_triangular(
                self.chol, (u - self.mean_z).unsqueeze(-1), upper=False
            ).squeeze(-1)
        return self.mean + (v.unsqueeze(-2) @ self.a).squeeze(-2)

    def prior(self) -> dist.MultivariateNormal:
        """p(u): N(0, I) (whitened) or N(m(Z), K_ZZ)."""
        if self.whitened:
            eye = torch.eye(self.chol.shape[-1], dtype=self.a.dtype, device=self.a.device)
            return dist.MultivariateNormal(
                torch.zeros_like(self.mean_z), scale_tril=eye.expand_as(self.chol)
            )
        return dist.MultivariateNormal(self.mean_z, scale_tril=self.chol)


def _project(strategy, x: torch.Tensor) -> _Projection:
    """The kernel algebra of p(f(x)|u), with every hyperparameter held fixed (no gradient)."""
    with torch.no_grad():
        z = strategy.inducing_points
        batch = torch.broadcast_shapes(z.shape[:-2], x.shape[:-2])
        z = z.expand(*batch, *z.shape[-2:])
        x = x.expand(*batch, *x.shape[-2:])
        m = z.shape[-2]
        prior = strategy.model.forward(torch.cat([z, x], dim=-2))
        cov = prior.lazy_covariance_matrix
        kzz = cov[..., :m, :m].add_jitter(strategy.jitter_val).to_dense()
        kzx = cov[..., :m, m:].to_dense()
        kxx = cov[..., m:, m:].diagonal(dim1=-1, dim2=-2)
        chol = psd_safe_cholesky(kzz)
        a = torch.linalg.solve_triangular(chol, kzx, upper=False)
        whitened = isinstance(strategy, VariationalStrategy)
        var = kxx - a.square().sum(-2) + (strategy.jitter_val if whitened else 0.0)
        mean = prior.mean
        return _Projection(a, mean[..., m:], var.clamp_min(0.0), chol, mean[..., :m], whitened)


def _expected_log_prob(likelihood, target, mean, var) -> torch.Tensor:
    """E_{N(f; mean, var)}[log p(y|f)] per point, by GPyTorch's likelihood (closed form for a
    Gaussian likelihood, Gauss–Hermite quadrature for the others)."""
    var = var.expand_as(mean)
    # The likelihood's hyperparameters stay fixed: no gradient reaches them.
    params = [p for p in likelihood.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        with gpytorch.settings.debug(False):  # its shape checks don't know about particles
            f = MultivariateNormal(mean, DiagLinearOperator(var))
            return likelihood.expected_log_prob(target, f)
    finally:
        for p in params:
            p.requires_grad_(True)


def erased_log_likelihood(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    u: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    projections: list[_Projection] | None = None,
) -> torch.Tensor:
    r"""log p̃(D_e|u) = Σ_i E_{p(f_i|u)}[log p(y_i|f_i)] for each u in a batch ``(S, *batch, M)``:
    a tensor ``(S,)``, computed over chunks of ``chunk_size`` points so memory stays bounded.
    ``projections`` (internal) are the chunks' p(f|u) algebra, when already computed."""
    strategy = _strategy(gp)
    batch_dims = tuple(range(-len(strategy._variational_distribution.batch_shape) - 1, 0))
    total = u.new_zeros(u.shape[: u.dim() - len(batch_dims)])
    projections = projections or _projections(strategy, inputs, chunk_size)
    for start, proj in zip(range(0, inputs.shape[-2], chunk_size), projections, strict=True):
        y = targets[..., start : start + chunk_size]
        log_p = _expected_log_prob(likelihood, y, proj.f_mean(u), proj.var)
        total = total + log_p.sum(batch_dims)
    return total


def _projections(strategy, inputs: torch.Tensor, chunk_size: int) -> list[_Projection]:
    """p(f|u) for each chunk of ``chunk_size`` points of ``inputs`` (chunks, not points)."""
    n = inputs.shape[-2]
    return [_project(strategy, inputs[..., i : i + chunk_size, :]) for i in range(0, n, chunk_size)]


# -- through Pyro ---------------------------------------------------------------------------------
class _ExpectedLogLikelihood(dist.TorchDistribution):
    """y's distribution given u: log_prob(y) = E_{p(f|u)}[log p(y|f)] per point; the GP's batch
    dims (outputs) are moved to the right and summed as the event, so the data plate is dim −1."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, likelihood, mean, var, num_outputs_dims: int, validate_args=None):
        self.likelihood, self.mean_f, self.var_f = likelihood, mean, var.expand_as(mean)
        self.k = num_outputs_dims
        shape = mean.movedim(tuple(range(-self.k - 1, -1)), tuple(range(-self.k, 0))).shape
        super().__init__(shape[: len(shape) - self.k], shape[len(shape) - self.k :], False)

    def _to_gpytorch(
        self, value: torch.Tensor
    ) -> torch.Tensor:  # (..., N, *batch) → (..., *batch, N)
        return value.movedim(tuple(range(-self.k, 0)), tuple(range(-self.k - 1, -1)))

    def _from_gpytorch(self, value: torch.Tensor) -> torch.Tensor:
        return value.movedim(tuple(range(-self.k - 1, -1)), tuple(range(-self.k, 0)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_p = _expected_log_prob(
            self.likelihood, self._to_gpytorch(value), self.mean_f, self.var_f
        )
        log_p = self._from_gpytorch(log_p)
        return log_p.sum(tuple(range(-self.k, 0))) if self.k else log_p

    def sample(self, sample_shape=()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            f = torch.distributions.Normal(self.mean_f, self.var_f.sqrt()).sample(sample_shape)
            return self._from_gpytorch(self.likelihood(f).sample())

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        n = batch_shape[-1:]
        shape = batch_shape[:-1] + self.mean_f.shape[-self.k - 1 : -1] + n
        return _ExpectedLogLikelihood(
            self.likelihood, self.mean_f.expand(shape), self.var_f.expand(shape), self.k
        )


class InducingGuide(PyroModule):
    """The guide of :class:`PyroSVGP`: ``<prefix>.u ~ q(u)``, the GP's variational distribution,
    whose parameters (only) it registers in Pyro's param store as ``<prefix>.q_u$$$<name>``.

    Registration is checked: if the store already holds those names for *another* GP (Pyro's
    ``pyro.module`` keeps the first tensor registered under a name, so the second GP would
    silently never train), it raises instead of training the wrong tensors.
    """

    def __init__(self, strategy, name_prefix: str) -> None:
        super().__init__()
        # Not a submodule: PyroModule would register all of its parameters (inducing inputs too).
        object.__setattr__(self, "strategy", strategy)
        self.name_prefix = name_prefix

    def _clear_cache(self) -> None:
        """Drop the GP's cached tensors (a deepcopy, as :func:`~pyro_unlearn.freeze` makes,
        refuses them)."""
        _clear_caches(self.strategy.model)

    @property
    def site(self) -> str:
        return f"{self.name_prefix}.u"

    def forward(self, *args, **kwargs) -> torch.Tensor:
        variational = self.strategy._variational_distribution
        for name, param in variational.named_parameters():
            if not param.requires_grad:  # a frozen copy: nothing to train
                continue
            full_name = f"{self.name_prefix}.q_u$$${name}"
            if pyro.param(full_name, param) is not param:
                raise RuntimeError(
                    f"Pyro's param store already holds {full_name!r} from another GP, so this "
                    f"GP's q(u) would silently never train: call pyro.clear_param_store() or give "
                    f"this GP a distinct name_prefix (now {self.name_prefix!r})"
                )
        q = variational()  # a fresh distribution: the strategy's cached one holds a stale graph
        return pyro.sample(self.site, q.to_event(len(q.batch_shape)))


class PyroSVGP:
    r"""A Pyro model and guide for a trained GPyTorch ``ApproximateGP`` that unlearning can use.

    ``model(x, y, num_data=None)`` samples ``<prefix>.u ~ p(u)`` and observes ``<prefix>.y`` in
    the plate ``<prefix>.data`` (dim −1) with log p̃(y_i|u) (module docstring); ``num_data`` is
    the size of the data set when ``x`` is a mini-batch (Pyro scales the batch by
    num_data/len(x)). ``guide`` (an :class:`InducingGuide`) samples ``<prefix>.u ~ q(u)``. Trained
    with :class:`~pyro.infer.Trace_ELBO`, the pair is GPyTorch's variational ELBO. Outputs of a
    batch GP (``batch_shape``) are the event dims of y, which comes as ``(N, *batch)``.

    Example::

        >>> import gpytorch, torch, pyro
        >>> import pyro_unlearn as pu
        >>> from pyro_unlearn.contrib.gpytorch import PyroSVGP
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self, z):
        ...         q = gpytorch.variational.CholeskyVariationalDistribution(len(z))
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        ...         self.mean_module = gpytorch.means.ZeroMean()
        ...         self.covar_module = gpytorch.kernels.RBFKernel()
        ...     def forward(self, x):
        ...         return gpytorch.distributions.MultivariateNormal(
        ...             self.mean_module(x), self.covar_module(x))
        >>> x = torch.linspace(0, 1, 30).unsqueeze(-1); y = torch.sin(6 * x).squeeze(-1)
        >>> gp, likelihood = GP(x[::6].clone()), gpytorch.likelihoods.GaussianLikelihood()
        >>> _ = gp(x)  # (train it here; GPyTorch initialises q(u) on the first call)
        >>> svgp = PyroSVGP(gp, likelihood)
        >>> posterior = svgp.freeze()
        >>> result = pu.forget(svgp.model, svgp.guide, x, y, erased=range(5), plate=svgp.plate,
        ...                    posterior=posterior, num_steps=20, progress=False)
    """

    def __init__(
        self,
        gp: gpytorch.models.ApproximateGP,
        likelihood: gpytorch.likelihoods.Likelihood,
        name_prefix: str = "gp",
    ) -> None:
        strategy = _strategy(gp)
        if isinstance(strategy._variational_distribution, _NATURAL):
            raise TypeError(
                f"{type(strategy._variational_distribution).__name__} is for gpytorch.optim.NGD: "
                "Pyro's optimisers would take its natural gradients for plain ones. Through Pyro, "
                "use CholeskyVariationalDistribution; with NGD, use VariationalEUBO or "
                "VariationalReverseKL"
            )
        self.gp, self.likelihood, self.name_prefix = gp, likelihood, name_prefix
        self.guide = InducingGuide(strategy, name_prefix)

    @property
    def plate(self) -> str:
        """The data plate's name, for ``unlearn(..., plate=svgp.plate)``."""
        return f"{self.name_prefix}.data"

    @property
    def site(self) -> str:
        return f"{self.name_prefix}.y"

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        strategy = self.guide.strategy
        proj = _project(strategy, x)
        k = len(strategy._variational_distribution.batch_shape)
        u = pyro.sample(self.guide.site, proj.prior().to_event(k))
        if u.dim() > k + 1:  # batch dims of u (particles) end with the data plate's dim, size 1
            u = u.squeeze(-k - 2)
        n = x.shape[-2]
        size = n if num_data is None else int(num_data)
        subsample = None if size == n else torch.arange(n, device=x.device)
        fn = _ExpectedLogLikelihood(self.likelihood, proj.f_mean(u), proj.var, k)
        with pyro.plate(self.plate, size, subsample=subsample, dim=-1):
            return pyro.sample(self.site, fn, obs=y)

    def freeze(self) -> FrozenPosterior:
        """q(u|D): :func:`freeze` of this GP under this prefix."""
        return freeze(self.gp, self.name_prefix)


# -- freezing, copying, comparing ------------------------------------------------------------------
def clone(gp: gpytorch.models.ApproximateGP) -> gpytorch.models.ApproximateGP:
    """An independent copy of a (trained) GP, ``variational_params_initialized`` included.

    ``copy.deepcopy`` of a GP fails while its strategy caches tensors of the last call; the caches
    are cleared first (they are recomputed on the next call)."""
    _clear_caches(gp)
    return copy.deepcopy(gp)


def _clear_caches(gp: gpytorch.models.ApproximateGP) -> None:
    for module in gp.modules():
        clear = getattr(module, "_clear_cache", None)
        if callable(clear):
            clear()


def freeze(gp: gpytorch.models.ApproximateGP, name_prefix: str = "gp") -> FrozenPosterior:
    """Snapshot a trained GP's q(u|D) as the immutable posterior the unlearning losses start from.

    The snapshot is an independent copy (:func:`clone`), so later training of ``gp`` never
    changes it. Raises if the GP's q(u) was never initialised (GPyTorch would re-initialise it
    from the prior on the next call)."""
    strategy = _strategy(gp)
    if not bool(strategy.variational_params_initialized.item()):
        raise ValueError(
            "this GP's q(u) was never initialised (variational_params_initialized is 0): train it "
            "first, or copy a trained GP with load_state_dict (copying only the variational "
            "distribution leaves the flag 0, and GPyTorch re-initialises q(u) from the prior)"
        )
    return freeze_guide(InducingGuide(strategy, name_prefix))


def inducing_distribution(source: gpytorch.models.ApproximateGP | FrozenPosterior):
    """q(u) as a GPyTorch MultivariateNormal (detached): of a GP, or of a frozen posterior."""
    if isinstance(source, FrozenPosterior):
        if not isinstance(source.guide, InducingGuide):
            raise TypeError("this FrozenPosterior was not frozen from a GPyTorch GP")
        with source.context(), torch.no_grad():
            q = source.guide.strategy._variational_distribution()
    else:
        with torch.no_grad():
            q = _strategy(source)._variational_distribution()
    return MultivariateNormal(q.mean.detach(), q.lazy_covariance_matrix.detach())


@torch.no_grad()
def set_inducing_distribution(
    gp: gpytorch.models.ApproximateGP, mean: torch.Tensor, covariance: torch.Tensor
) -> None:
    """Set a GP's q(u) in place to N(mean, covariance), in its strategy's space (whitened for
    :class:`~gpytorch.variational.VariationalStrategy`), for every supported parameterisation
    (a mean-field q(u) takes the diagonal). E.g. to install a closed-form optimum::

        >>> import gpytorch, torch
        >>> from pyro_unlearn.contrib.gpytorch import (inducing_distribution,
        ...                                            set_inducing_distribution)
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self, z):
        ...         q = gpytorch.variational.NaturalVariationalDistribution(len(z))
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        ...         self.mean_module = gpytorch.means.ZeroMean()
        ...         self.covar_module = gpytorch.kernels.RBFKernel()
        ...     def forward(self, x):
        ...         return gpytorch.distributions.MultivariateNormal(
        ...             self.mean_module(x), self.covar_module(x))
        >>> gp = GP(torch.linspace(0, 1, 3).unsqueeze(-1))
        >>> set_inducing_distribution(gp, torch.ones(3), 0.5 * torch.eye(3))
        >>> q = inducing_distribution(gp)
        >>> q.mean.round(decimals=4).tolist(), q.variance.round(decimals=4).tolist()
        ([1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    """
    strategy = _strategy(gp)
    variational = strategy._variational_distribution
    param = next(variational.parameters())
    mean, covariance = mean.to(param), covariance.to(param)
    if isinstance(variational, CholeskyVariationalDistribution):
        variational.variational_mean.copy_(mean)
        variational.chol_variational_covar.copy_(torch.linalg.cholesky(covariance))
    elif isinstance(variational, MeanFieldVariationalDistribution):
        variational.variational_mean.copy_(mean)
        variational._variational_stddev.copy_(covariance.diagonal(dim1=-2, dim2=-1).sqrt())
    else:
        chol = torch.linalg.cholesky(covariance)
        precision = torch.cholesky_inverse(chol)
        variational.natural_vec.copy_((precision @ mean.unsqueeze(-1)).squeeze(-1))
        if isinstance(variational, NaturalVariationalDistribution):
            variational.natural_mat.copy_(-0.5 * precision)
        else:  # TrilNatural: natural_tril_mat = L⁻¹ with L Lᵀ = covariance
            eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
            variational.natural_tril_mat.copy_(
                torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
            )
    strategy.variational_params_initialized.fill_(1)
    _clear_caches(gp)


def inducing_kl(p, q) -> torch.Tensor:
    """KL(q_p(u) ‖ q_q(u)) in closed form (summed over a batch GP's outputs), for two GPs or
    frozen posteriors of the same shape: the paper's Table 1 metric."""
    kl = torch.distributions.kl_divergence(inducing_distribution(p), inducing_distribution(q))
    return kl.sum()


# -- GPyTorch's idiom -----------------------------------------------------------------------------
class _Objective(MarginalLogLikelihood):
    def __init__(
        self, likelihood, model, posterior: FrozenPosterior, num_erased: int, lam, samples
    ):
        super().__init__(likelihood, model)
        self.strategy = _strategy(model)
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(
                f"posterior must be the frozen q(u|D) from pyro_unlearn.contrib.gpytorch.freeze, "
                f"got {type(posterior).__name__}"
            )
        self.posterior = posterior
        self.q_data = inducing_distribution(posterior)
        shape = self.strategy._variational_distribution.shape()
        if self.q_data.mean.shape != shape:
            raise ValueError(
                f"the frozen q(u|D) has shape {tuple(self.q_data.mean.shape)}, this GP's q(u) "
                f"{tuple(shape)}"
            )
        if int(num_erased) < 1:
            raise ValueError(f"num_erased must be a positive integer, got {num_erased}")
        self.num_erased = int(num_erased)
        self.lam = check_lam(lam)
        self.num_samples = int(samples)
        self._batch_dims = tuple(range(-len(self.q_data.batch_shape), 0))
        with torch.no_grad():
            log_q_max = self._log_q_data(self.q_data.mean.unsqueeze(0))[0]
        self.log_threshold = log_threshold(self.lam, log_q_max)

    def _sum_batch(self, log_prob: torch.Tensor) -> torch.Tensor:
        """A batch GP's log-density of u: summed over its independent outputs."""
        return log_prob.sum(self._batch_dims) if self._batch_dims else log_prob

    def _log_q_data(self, u: torch.Tensor) -> torch.Tensor:
        return self._sum_batch(self.q_data.log_prob(u))


class VariationalEUBO(_Objective):
    r"""The EUBO in the shape of :class:`gpytorch.mlls.VariationalELBO`: it returns −U/|D_e|, so
    ``loss = -eubo(model(x_b), y_b, inputs=x_b)`` minimises

    .. math:: U(q_u) = \mathbb{E}_{q_u}[\log p_\mathrm{adj}(D_e|u)] + \mathrm{KL}(q_u \| q(u|D))

    over mini-batches ``x_b, y_b`` of D_e (scaled by |D_e|/batch: unbiased). The KL is exact; the
    expected log-likelihood is GPyTorch's closed form or quadrature on ``model(x_b)`` at λ = 0.
    For λ > 0 it is E[log p̃; inside], "inside" where log q(u|D) > log λ + log q* (p_adj is 1
    elsewhere), from ``num_samples`` draws u ~ q_u (this needs ``inputs``), as
    c·(closed form − MC of the outside part) + (1 − c)·(MC of the inside part), c the fraction
    of an independent set of draws that falls inside: each part is unbiased, and the mix is
    exact at both ends (all draws inside, or none), where either part alone would carry the
    whole likelihood's Monte-Carlo noise of thousands of points.

    Arguments:
        likelihood, model: the GP being unlearned (its q(u) is what the optimiser should train:
            ``model.variational_parameters()``).
        posterior: its frozen q(u|D) (:func:`freeze`).
        num_erased: |D_e|.
        lam: λ ∈ [0, 1].

    Natural gradients (GPyTorch's recipe for SVGPs): with a
    :class:`~gpytorch.variational.NaturalVariationalDistribution` q(u), step with
    ``gpytorch.optim.NGD(model.variational_parameters(), num_data=num_erased, lr=...)``. The
    step is η ← η − lr·(η + η_e − η_D), so at λ = 0 with a Gaussian likelihood one step on all of
    D_e at ``lr=1`` lands exactly on q(u|D)/p̃(D_e|u).
    """

    def __init__(self, likelihood, model, posterior, num_erased, lam=0.0, num_samples=64):
        super().__init__(likelihood, model, posterior, num_erased, lam, num_samples)

    def forward(self, output: MultivariateNormal, target: torch.Tensor, inputs=None, **kwargs):
        scale = self.num_erased / target.shape[-1]
        q_u = self.strategy._variational_distribution()
        kl = torch.distributions.kl_divergence(q_u, self.q_data).sum()
        log_lik = self.likelihood.expected_log_prob(target, output, **kwargs).sum()
        if self.lam > 0.0:
            if inputs is None:
                raise ValueError(
                    "VariationalEUBO with lam > 0 needs the batch's inputs (inputs=x_b): the "
                    "threshold is applied to samples of u, and p(f|u) needs x"
                )
            u = q_u.rsample(torch.Size([self.num_samples]))
            per_u = erased_log_likelihood(self.model, self.likelihood, u, inputs, target)
            log_q = self._log_q_data(u).detach()
            kept = adjusted_log_likelihood(per_u, log_q, self.log_threshold)
            with torch.no_grad():  # independent draws: the weight leaves both parts unbiased
                fresh = q_u.sample(torch.Size([self.num_samples]))
                c = (self._log_q_data(fresh) > self.log_threshold).to(per_u.dtype).mean()
            # E[log p̃; inside] two ways: closed form minus the outside part (exact when every
            # draw is inside), or the inside part directly (exact when none is)
            log_lik = c * (log_lik - (per_u - kept).mean()) + (1 - c) * kept.mean()
        return -(scale * log_lik + kl) / self.num_erased


class VariationalReverseKL(_Objective):
    r"""The reverse KL in GPyTorch's idiom: returns E_{p̃}[log q_v(u)]/|D_e| (to maximise), with
    p̃ ∝ q(u|D)/p_adj(D_e|u) reached by self-normalised importance sampling from q(u|D):
    ``num_samples`` draws u_s ~ q(u|D), weights w_s ∝ 1/p_adj(D_e|u_s) over **all** of D_e each
    step (the authors' choice; computed in chunks of ``chunk_size`` points, without gradient; the
    kernel algebra of D_e, L⁻¹K_Zx, is computed on the first call and reused while the same
    ``inputs`` tensor comes back: M × |D_e| numbers).
    Call it as ``loss = -rkl(None, y_e, inputs=x_e)`` (``output`` is not needed: the samples come
    from q(u|D), not from the GP). :attr:`ess` is the last step's effective sample size.

    ``proposal="current"`` draws u_s from the current q_v (detached) instead, with weights
    w_s ∝ q(u_s|D) / (p_adj(D_e|u_s) q_v(u_s)): the same objective and the same self-normalised
    estimator of its gradient (the wake-phase q update of reweighted wake-sleep), but the
    proposal follows q_v towards p̃. Use it when D_e is too informative for q(u|D) to propose
    (an ESS of a few draws from the start): q(u|D) is narrower than p̃, which removed data.
    ``anneal=f`` (with ``proposal="current"``) also tempers the target, p̃_β ∝ q(u|D) /
    p_adj(D_e|u)^β, raising β from 0 each step as far as the weights keep an ESS of f·S
    (:func:`~pyro_unlearn.infer.reverse_kl.next_temperature`); the loss is the rKL once
    :attr:`temperature` reaches 1, and a loop should not stop before. Thousands of erased
    points move log p(D_e|u) by tens of nats across draws, and no proposal survives that in
    one step.
    """

    def __init__(
        self,
        likelihood,
        model,
        posterior,
        num_erased,
        lam=0.0,
        num_samples=256,
        chunk_size=4096,
        proposal="posterior",
        anneal=None,
    ):
        super().__init__(likelihood, model, posterior, num_erased, lam, num_samples)
        self.weights = ImportanceWeights(proposal, anneal)
        self.chunk_size = int(chunk_size)
        self._cache: tuple | None = None  # (key of the inputs, their chunks' p(f|u) algebra)

    def _projections_of(self, inputs: torch.Tensor) -> list[_Projection]:
        """D_e's p(f|u) algebra, computed once: the hyperparameters are fixed, so it is constant
        while the same ``inputs`` tensor comes back unchanged every step."""
        key = (inputs.data_ptr(), tuple(inputs.shape), inputs._version, inputs.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, _projections(self.strategy, inputs, self.chunk_size))
        return self._cache[1]

    def forward(self, output, target: torch.Tensor, inputs=None, **kwargs):
        if inputs is None:
            raise ValueError(
                "VariationalReverseKL needs the erased inputs: rkl(None, y_e, inputs=x_e)"
            )
        if target.shape[-1] != self.num_erased:
            raise ValueError(
                f"VariationalReverseKL needs all of D_e each step (its weights are normalised over "
                f"it): got {target.shape[-1]} points, num_erased is {self.num_erased}"
            )
        q_v = self.strategy._variational_distribution()
        with torch.no_grad():
            source = self.q_data if self.weights.proposal == "posterior" else q_v
            u = source.sample(torch.Size([self.num_samples]))
            log_lik = erased_log_likelihood(
                self.model,
                self.likelihood,
                u,
                inputs,
                target,
                self.chunk_size,
                self._projections_of(inputs),
            )
            log_q_data = self._log_q_data(u)
            log_lik = adjusted_log_likelihood(log_lik, log_q_data, self.log_threshold)
        log_q_v = self._sum_batch(q_v.log_prob(u))
        return (self.weights(log_lik, log_q_data, log_q_v) * log_q_v).mean() / self.num_erased

    @property
    def ess(self) -> torch.Tensor | None:
        """The last step's effective sample size."""
        return self.weights.ess

    @property
    def temperature(self) -> torch.Tensor:
        """β of the annealed target (1 without ``anneal``)."""
        return self.weights.temperature
