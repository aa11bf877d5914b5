"""A Pyro model and guide for a GPyTorch sparse variational GP, y depending on the sampled u."""

from __future__ import annotations

import warnings

import gpytorch
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.util import is_validation_enabled
from torch.distributions import constraints

from ...posterior import FrozenPosterior
from ...validation import check_finite, check_positive_int
from .conditional import check_gp_data, expected_log_prob, gp_inputs, missing_allowed, project
from .inducing import InducingGuide, freeze_inducing
from .strategy import NATURAL_DISTRIBUTIONS, variational_strategy

__all__ = ["ExpectedLogLikelihood", "PyroSVGP", "check_not_pyro_gp", "gpytorch_layout"]


class ExpectedLogLikelihood(dist.TorchDistribution):
    """y's distribution given u, scored as the SVGP bound scores it: log_prob(y) =
    E_{p(f|u)}[log p(y|f)] per point. A batch GP's batch dims (its outputs) are moved to the right
    and summed as the event, so the data plate is dim −1.

    Arguments:
        likelihood: the GP's GPyTorch likelihood.
        mean, var: E[f|u] and Var[f|u], ``(..., *batch, N)``.
        num_outputs_dims: the number of the GP's batch dims.
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(
        self,
        likelihood: gpytorch.likelihoods.Likelihood,
        mean: torch.Tensor,
        var: torch.Tensor,
        num_outputs_dims: int,
        validate_args: bool | None = None,
    ) -> None:
        self.likelihood, self.mean_f, self.var_f = likelihood, mean, var.expand_as(mean)
        self.k = num_outputs_dims
        shape = mean.movedim(tuple(range(-self.k - 1, -1)), tuple(range(-self.k, 0))).shape
        super().__init__(shape[: len(shape) - self.k], shape[len(shape) - self.k :], False)

    def _to_gpytorch(self, value: torch.Tensor) -> torch.Tensor:
        """(..., N, *batch) → (..., *batch, N)."""
        return value.movedim(tuple(range(-self.k, 0)), tuple(range(-self.k - 1, -1)))

    def _from_gpytorch(self, value: torch.Tensor) -> torch.Tensor:
        return value.movedim(tuple(range(-self.k - 1, -1)), tuple(range(-self.k, 0)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_p = expected_log_prob(
            self.likelihood, self._to_gpytorch(value), self.mean_f, self.var_f
        )
        log_p = self._from_gpytorch(log_p)
        return log_p.sum(tuple(range(-self.k, 0))) if self.k else log_p

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            f = torch.distributions.Normal(self.mean_f, self.var_f.sqrt()).sample(sample_shape)
            return self._from_gpytorch(self.likelihood(f).sample())

    def expand(
        self, batch_shape: torch.Size, _instance: ExpectedLogLikelihood | None = None
    ) -> ExpectedLogLikelihood:
        batch_shape = torch.Size(batch_shape)
        n = batch_shape[-1:]
        shape = batch_shape[:-1] + self.mean_f.shape[-self.k - 1 : -1] + n
        return ExpectedLogLikelihood(
            self.likelihood, self.mean_f.expand(shape), self.var_f.expand(shape), self.k
        )


def gpytorch_layout(y: torch.Tensor, batch: torch.Size, n: int) -> torch.Tensor:
    """Targets of a GP of batch shape ``batch`` at ``n`` inputs in GPyTorch's layout
    ``(*batch, n)``; the rows-first layout of 0.1, ``(n, *batch)``, is moved there with a
    ``FutureWarning`` where the shapes tell the two apart.

    Raises:
        ValueError: any other shape, naming the expected one.

    Example:
        >>> gpytorch_layout(torch.zeros(2, 5), torch.Size([2]), 5).shape
        torch.Size([2, 5])
    """
    if not isinstance(y, torch.Tensor) or y.dim() == 0:
        raise TypeError(f"y must be a tensor of the points' targets, got {y!r}")
    expected = (*batch, n)
    if tuple(y.shape) == expected:
        return y
    if batch and tuple(y.shape) == (n, *batch):
        warnings.warn(
            f"y has shape {tuple(y.shape)}, rows first: PyroSVGP now takes a batch GP's targets in "
            f"GPyTorch's layout (*batch, N) = {expected}, as gp(x).mean and VariationalELBO have "
            "them (and the mlls-style objectives); pass y.movedim(0, -1) (y.T for one batch "
            "dim). The rows-first layout will be refused in a later release",
            FutureWarning,
            stacklevel=4,
        )
        return y.movedim(0, -1)
    raise ValueError(
        f"y has shape {tuple(y.shape)}: this GP (batch shape {tuple(batch)}) at {n} inputs takes "
        f"targets of shape (*batch, N) = {expected}, GPyTorch's layout: one row per row of x "
        f"({n})"
    )


class PyroSVGP:
    r"""A Pyro model and guide for a trained GPyTorch ``ApproximateGP`` that unlearning can use.

    ``model(x, y, num_data=None)`` samples ``<prefix>.u ~ p(u)`` and observes ``<prefix>.y`` in
    the plate ``<prefix>.data`` (dim −1) with

    .. math:: \log \tilde p(y_i|u) = \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)],

    ``num_data`` being the size of the data set when ``x`` is a mini-batch (Pyro scales the batch
    by num_data/len(x)). ``guide`` (an :class:`InducingGuide`) samples ``<prefix>.u ~ q(u)``.
    Trained with :class:`~pyro.infer.Trace_ELBO`, the pair is GPyTorch's variational ELBO
    (Hensman et al., 2015); unlearned with :func:`~pyro_unlearn.forget`, it is the sparse GP
    unlearning of Nguyen et al. (2020). GPyTorch's own ``PyroGP.model`` draws f from q(f),
    independently of u: enough for the ELBO, but it leaves the unlearning losses nothing to
    reweight. A batch GP's targets (several outputs, ``batch_shape``) come in GPyTorch's layout,
    ``(*batch, N)`` as ``gp(x).mean`` and ``VariationalELBO`` have them (also the
    mlls-style objectives' layout); inside the model they are the event dims of the observed
    site, the data plate indexing the rows. The layout of 0.1, ``(N, *batch)``, is accepted with
    a ``FutureWarning`` where its shape tells it apart (a square ``(N, N)`` target is read as
    GPyTorch's).

    Arguments:
        gp: a supported ``ApproximateGP`` with a Cholesky or mean-field q(u) (Pyro's optimisers
            would take a natural-parameter q(u)'s natural gradients for plain ones).
        likelihood: its GPyTorch likelihood.
        name_prefix: the prefix of the site, plate and parameter names.

    References:
        - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
          Classification. AISTATS 2015.
        - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        >>> import gpytorch, torch, pyro
        >>> pyro.clear_param_store()  # one GP per name_prefix in the store
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
        ...                    posterior=posterior, num_steps=20, progress=False, method="rkl",
        ...                    loss_options={"proposal": "current", "anneal": 0.5})
    """

    def __init__(
        self,
        gp: gpytorch.models.ApproximateGP,
        likelihood: gpytorch.likelihoods.Likelihood,
        name_prefix: str = "gp",
    ) -> None:
        strategy = variational_strategy(gp)
        if not isinstance(likelihood, gpytorch.likelihoods.Likelihood):
            raise TypeError(
                f"likelihood must be a gpytorch.likelihoods.Likelihood, got "
                f"{type(likelihood).__name__}"
            )
        if not isinstance(name_prefix, str) or not name_prefix:
            raise TypeError(f"name_prefix must be a non-empty str, got {name_prefix!r}")
        if isinstance(strategy._variational_distribution, NATURAL_DISTRIBUTIONS):
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
        """The observed site's name."""
        return f"{self.name_prefix}.y"

    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        """The generative model: u ~ p(u), then y_i with log p̃(y_i|u) in the data plate.

        Returns:
            y (observed, or sampled), ``(*batch, N)`` as GPyTorch lays targets out.

        Raises:
            ValueError: ``y`` of another shape than ``(*batch, N)`` (naming it), ``num_data``
                below N, or (under Pyro's validation) non-finite ``x`` or ``y``, named with the
                first row.
        """
        strategy = self.guide.strategy
        y = self._check_data(x, y, num_data)
        x = gp_inputs(x)
        proj = project(strategy, x)
        k = len(strategy._variational_distribution.batch_shape)
        u = pyro.sample(self.guide.site, proj.prior().to_event(k))
        if u.dim() > k + 1:  # batch dims of u (particles) end with the data plate's dim, size 1
            u = u.squeeze(-k - 2)
        n = x.shape[-2]
        size = n if num_data is None else int(num_data)
        subsample = None if size == n else torch.arange(n, device=x.device)
        fn = ExpectedLogLikelihood(self.likelihood, proj.f_mean(u), proj.var, k)
        obs = None if y is None else fn._from_gpytorch(y)  # rows first, outputs as the event
        with pyro.plate(self.plate, size, subsample=subsample, dim=-1):
            value = pyro.sample(self.site, fn, obs=obs)
        return fn._to_gpytorch(value)

    def _check_data(
        self, x: torch.Tensor, y: torch.Tensor | None, num_data: int | None
    ) -> torch.Tensor | None:
        """Sizes always, finiteness under Pyro's validation (a pass over the data each step);
        returns ``y`` in GPyTorch's layout ``(*batch, N)``."""
        strategy = self.guide.strategy
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        n = gp_inputs(x).shape[-2]
        if y is not None:
            y = gpytorch_layout(y, strategy._variational_distribution.batch_shape, n)
            check_gp_data(strategy, x, y, finite=False)
        if num_data is not None and check_positive_int("num_data", num_data) < n:
            raise ValueError(
                f"num_data={num_data} is the size of the data set x is a batch of: it cannot be "
                f"below the batch's {n} rows"
            )
        if is_validation_enabled():
            check_finite("x", gp_inputs(x).movedim(-2, 0))
            if y is not None:  # NaN marks a cell left out under GPyTorch's "mask" policy
                rows = y.movedim(-1, 0)
                check_finite(
                    "y", torch.where(rows.isnan(), 0.0, rows) if missing_allowed() else rows
                )
        return y

    def unlearning_lr(
        self, posterior: FrozenPosterior | None = None, fraction: float = 0.02
    ) -> float:
        r"""A learning rate for :func:`~pyro_unlearn.forget` on this pair: ``fraction`` of q(u|D)'s
        smallest standard deviation (in the strategy's space, where the guide's parameters live).

        Adam moves every parameter by about ``lr`` per step whatever its scale, so on a noisy
        Monte-Carlo gradient it random-walks q(u) by about ``lr`` per coordinate. A sparse GP's
        q(u|D) is far narrower than forget's default 0.01 along the directions the data
        determine (whitened: std ≈ σ/√(N/M)): at that lr the reverse KL made q(u) worse on a
        random erasure (KL to q(u|D_r) 0.35 → 0.77 at M = 20, N = 200; 0.19 → 4.3 at M = 100,
        N = 1000), where ``lr=unlearning_lr()`` improved it (→ 0.06 and → 0.08).
        :func:`~pyro_unlearn.forget` uses it when given neither ``lr`` nor ``optim``.

        Arguments:
            posterior: the frozen q(u|D) (default: this GP's q(u) now).
            fraction: the share of the smallest standard deviation, in (0, 1].

        Returns:
            The learning rate, a float.
        """
        return self.guide.unlearning_lr(self.gp if posterior is None else posterior, fraction)

    def freeze(
        self, x: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> FrozenPosterior:
        """q(u|D): :func:`freeze_inducing` of this GP under this prefix; given D = (``x``,
        ``y``), it first measures q(u|D)'s distance to the ELBO's optimum and warns
        (:class:`~pyro_unlearn.contrib.gpytorch.optimum.InducingGapWarning`) with it."""
        if (x is None) != (y is None):
            raise TypeError("svgp.freeze(x, y) measures q(u|D) given both x and y")
        if x is None:
            return freeze_inducing(self.gp, self.name_prefix)
        batch = self.guide.strategy._variational_distribution.batch_shape
        y = gpytorch_layout(y, batch, gp_inputs(x).shape[-2])
        return freeze_inducing(self.gp, self.name_prefix, likelihood=self.likelihood, data=(x, y))


def check_not_pyro_gp(*fns: object) -> None:
    """Refuse GPyTorch's own :class:`gpytorch.models.PyroGP` ``model``/``guide``: its model draws
    f from q(f), built from q(u)'s parameters, independently of the sampled u, so the unlearning
    losses reweight draws that the erased likelihood does not score through u, and a run
    "converges" without unlearning. :class:`PyroSVGP` gives the pair in which y depends on u.

    Arguments:
        fns: the callables handed to an unlearning loss (a model, a guide).

    Raises:
        TypeError: when one is a bound method of a ``PyroGP``, naming :class:`PyroSVGP`.

    Example:
        >>> check_not_pyro_gp(lambda: None)  # anything else passes
    """
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, gpytorch.models.PyroGP):
            raise TypeError(
                f"{type(owner).__name__}.{getattr(fn, '__name__', 'model')} is GPyTorch's PyroGP, "
                "whose model draws f from q(f) independently of the sampled u: unlearning would "
                "run and change nothing. Wrap the GP instead: svgp = "
                "pyro_unlearn.contrib.gpytorch.PyroSVGP(gp, likelihood), then "
                "pu.forget(svgp.model, svgp.guide, x_e, y_e, posterior=svgp.freeze(), ...)"
            )
