"""q(u) of a sparse variational GP: its Pyro guide, the frozen q(u|D), reading and writing q(u)."""

from __future__ import annotations

import gpytorch
import pyro
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.variational import (
    CholeskyVariationalDistribution,
    MeanFieldVariationalDistribution,
    NaturalVariationalDistribution,
    VariationalStrategy,
)
from pyro.nn import PyroModule

from ...posterior import FrozenPosterior, freeze
from ...validation import check_finite
from .strategy import clear_caches, variational_strategy

__all__ = [
    "InducingGuide",
    "freeze_inducing",
    "inducing_distribution",
    "inducing_kl",
    "restore_inducing",
    "set_inducing_distribution",
]


class InducingGuide(PyroModule):
    """A Pyro guide ``<prefix>.u ~ q(u)``: the GP's variational distribution, whose parameters
    (only) it registers in Pyro's param store as ``<prefix>.q_u$$$<name>``.

    Registration is checked: if the store already holds those names for *another* GP (Pyro's
    ``pyro.module`` keeps the first tensor registered under a name, so the second GP would
    silently never train), it raises instead of training the wrong tensors.

    Arguments:
        strategy: the GP's (supported) variational strategy.
        name_prefix: the prefix of its site and parameter names.
    """

    def __init__(self, strategy: VariationalStrategy, name_prefix: str) -> None:
        super().__init__()
        # Not a submodule: PyroModule would register all of its parameters (inducing inputs too).
        object.__setattr__(self, "strategy", strategy)
        self.name_prefix = name_prefix

    def _clear_cache(self) -> None:
        """Drop the GP's cached tensors (a deepcopy, as :func:`~pyro_unlearn.freeze` makes,
        refuses them)."""
        clear_caches(self.strategy.model)

    @property
    def site(self) -> str:
        """The name of the sample site of u."""
        return f"{self.name_prefix}.u"

    def restore_into(self, posterior: FrozenPosterior, target: object) -> bool:
        """The hook of :meth:`FrozenPosterior.restore <pyro_unlearn.FrozenPosterior.restore>`
        for GPyTorch targets: ``posterior.restore(gp)`` (or a :class:`PyroSVGP` of it) writes
        q(u|D) into the GP's q(u) (:func:`restore_inducing`); a Pyro guide (this class's live
        guide included) is left to the generic path.

        Arguments:
            posterior: the frozen q(u|D) this guide belongs to.
            target: what :meth:`~pyro_unlearn.FrozenPosterior.restore` was given.

        Returns:
            ``True`` when it wrote q(u|D) into ``target``.
        """
        gp = getattr(target, "gp", target)  # a PyroSVGP holds its GP as .gp
        if not isinstance(gp, gpytorch.models.ApproximateGP):
            return False
        restore_inducing(gp, posterior)
        return True

    def unlearning_lr(self, posterior: FrozenPosterior, fraction: float = 0.02) -> float:
        """A learning rate for :func:`~pyro_unlearn.forget` on this guide: ``fraction`` of
        q(u|D)'s smallest standard deviation. ``forget`` asks a guide for it when no ``lr`` or
        ``optim`` is given (:meth:`PyroSVGP.unlearning_lr
        <pyro_unlearn.contrib.gpytorch.PyroSVGP.unlearning_lr>` says why).

        Arguments:
            posterior: the frozen q(u|D) (or a GP, for its q(u) now).
            fraction: the share of the smallest standard deviation, in (0, 1].

        Returns:
            The learning rate, a float.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"fraction must be a float in (0, 1], got {fraction!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        q = inducing_distribution(posterior)
        smallest_variance = torch.linalg.eigvalsh(q.covariance_matrix).min()
        return float(fraction * smallest_variance.clamp_min(0.0).sqrt())

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


def freeze_inducing(
    gp: gpytorch.models.ApproximateGP,
    name_prefix: str = "gp",
    *,
    likelihood: gpytorch.likelihoods.Likelihood | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_data: int | None = None,
) -> FrozenPosterior:
    """Snapshot a trained GP's q(u|D) as the immutable posterior the unlearning objectives start
    from: :func:`~pyro_unlearn.freeze` of its :class:`InducingGuide`.

    The snapshot is an independent copy, so later training of ``gp`` never changes it. Given
    the ``likelihood`` and ``data`` = (x, y), D or a sample of it (then ``num_data`` = ``|D|``),
    it first measures how far q(u|D) is from the ELBO's optimum for the current
    hyperparameters (:func:`~pyro_unlearn.contrib.gpytorch.inducing_gap`) and warns with that
    number: :func:`~pyro_unlearn.contrib.gpytorch.converge_inducing` puts it there.

    Arguments:
        gp: a trained, supported ``ApproximateGP``.
        name_prefix: the prefix of the guide's site ``<prefix>.u`` (that of a :class:`PyroSVGP`
            using the same GP).
        likelihood: the GP's likelihood, with ``data``.
        data: ``(x, y)``, to measure q(u|D)'s distance to its optimum.
        num_data: ``|D|`` when ``data`` is a sample of D.

    Warns:
        InducingGapWarning: q(u|D) is more than
            :data:`~pyro_unlearn.contrib.gpytorch.optimum.GAP_TOLERANCE` nats from its optimum.

    Returns:
        The frozen q(u|D), a :class:`~pyro_unlearn.FrozenPosterior`.

    Raises:
        ValueError: if the GP's q(u) was never initialised (GPyTorch would re-initialise it from
            the prior on the next call).

    Example::

        >>> import gpytorch, torch
        >>> from pyro_unlearn.contrib.gpytorch import freeze_inducing, inducing_kl
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self, z):
        ...         q = gpytorch.variational.CholeskyVariationalDistribution(len(z))
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        ...         self.mean_module = gpytorch.means.ZeroMean()
        ...         self.covar_module = gpytorch.kernels.RBFKernel()
        ...     def forward(self, x):
        ...         return gpytorch.distributions.MultivariateNormal(
        ...             self.mean_module(x), self.covar_module(x))
        >>> x = torch.linspace(0, 1, 10).unsqueeze(-1)
        >>> gp = GP(x[::3].clone())
        >>> _ = gp(x)  # (train it here; GPyTorch initialises q(u) on the first call)
        >>> posterior = freeze_inducing(gp)
        >>> round(float(inducing_kl(posterior, gp)), 6)  # the snapshot is q(u|D) itself
        0.0
    """
    strategy = variational_strategy(gp)
    if not bool(strategy.variational_params_initialized.item()):
        raise ValueError(
            "this GP's q(u) was never initialised (variational_params_initialized is 0): train it "
            "first, or copy a trained GP with load_state_dict (copying only the variational "
            "distribution leaves the flag 0, and GPyTorch re-initialises q(u) from the prior)"
        )
    if (likelihood is None) != (data is None):
        raise TypeError("freeze_inducing measures q(u|D) given both likelihood= and data=(x, y)")
    if data is not None:
        from .optimum import inducing_gap  # (it builds on this module)

        if not isinstance(data, tuple | list) or len(data) != 2:
            raise TypeError(f"data must be (x, y), got {type(data).__name__}")
        inducing_gap(gp, likelihood, *data, num_data=num_data, stacklevel=3)
    return freeze(InducingGuide(strategy, name_prefix))


def inducing_distribution(
    source: gpytorch.models.ApproximateGP | FrozenPosterior,
) -> MultivariateNormal:
    """q(u) as a (detached) GPyTorch ``MultivariateNormal``, of a GP or of a frozen q(u|D)
    (:func:`freeze_inducing`), in the strategy's space (whitened for ``VariationalStrategy``).

    Arguments:
        source: a supported ``ApproximateGP`` or a frozen posterior of one.

    Returns:
        q(u), with the GP's batch shape (a batch GP's outputs) as its batch shape.
    """
    if isinstance(source, FrozenPosterior):
        if not isinstance(source.guide, InducingGuide):
            raise TypeError("this FrozenPosterior was not frozen from a GPyTorch GP")
        with source.context(), torch.no_grad():
            q = source.guide.strategy._variational_distribution()
    else:
        with torch.no_grad():
            q = variational_strategy(source)._variational_distribution()
    return MultivariateNormal(q.mean.detach(), q.lazy_covariance_matrix.detach())


@torch.no_grad()
def set_inducing_distribution(
    gp: gpytorch.models.ApproximateGP, mean: torch.Tensor, covariance: torch.Tensor
) -> None:
    """Set a GP's q(u) in place to N(mean, covariance), in its strategy's space, in any of the
    four parameterisations (a mean-field q(u) takes the diagonal), and mark it initialised.

    Arguments:
        gp: a supported ``ApproximateGP``.
        mean: ``(*batch, M)``.
        covariance: ``(*batch, M, M)``, positive definite.

    Example: installing a closed-form optimum ::

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
    strategy = variational_strategy(gp)
    variational = strategy._variational_distribution
    param = next(variational.parameters())
    mean, covariance = _checked_gaussian(variational.shape(), mean, covariance)
    mean, covariance = mean.to(param), covariance.to(param)
    chol, info = torch.linalg.cholesky_ex(covariance)
    if bool((info != 0).any()):
        raise ValueError("covariance is not positive definite (its Cholesky factorisation fails)")
    if isinstance(variational, CholeskyVariationalDistribution):
        values = {"variational_mean": mean, "chol_variational_covar": chol}
    elif isinstance(variational, MeanFieldVariationalDistribution):
        std = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
        values = {"variational_mean": mean, "_variational_stddev": std}
    else:
        precision = torch.cholesky_inverse(chol)
        values = {"natural_vec": (precision @ mean.unsqueeze(-1)).squeeze(-1)}
        if isinstance(variational, NaturalVariationalDistribution):
            values["natural_mat"] = -0.5 * precision
        else:  # TrilNatural: natural_tril_mat = L⁻¹ with L Lᵀ = covariance
            eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
            values["natural_tril_mat"] = torch.linalg.solve_triangular(
                chol, eye.expand_as(chol), upper=False
            )
    for name, value in values.items():  # all computed and checked: written together
        getattr(variational, name).copy_(value)
    strategy.variational_params_initialized.fill_(1)
    clear_caches(gp)


def _checked_gaussian(
    shape: torch.Size, mean: torch.Tensor, covariance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` ``(*batch, M)`` and ``covariance`` ``(*batch, M, M)`` of q(u)'s shape, finite."""
    for name, value, want in (
        ("mean", mean, shape),
        ("covariance", covariance, shape + shape[-1:]),
    ):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        if value.shape != want:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, this GP's q(u) needs {tuple(want)}"
            )
        check_finite(name, value)
    return mean, covariance


def inducing_kl(
    p: gpytorch.models.ApproximateGP | FrozenPosterior,
    q: gpytorch.models.ApproximateGP | FrozenPosterior,
) -> torch.Tensor:
    """KL(q_p(u) ‖ q_q(u)) in closed form, summed over a batch GP's outputs: the distance between
    an unlearned and a retrained q(u) reported by Nguyen et al. (2020).

    Arguments:
        p, q: two GPs or frozen posteriors of the same shape (:func:`inducing_distribution`).

    Returns:
        A 0-dim tensor.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
    """
    q_p, q_q = inducing_distribution(p), inducing_distribution(q)
    if q_p.mean.shape != q_q.mean.shape:
        raise ValueError(
            f"p's q(u) has shape {tuple(q_p.mean.shape)}, q's {tuple(q_q.mean.shape)}: the KL "
            "compares two q(u) of the same GP structure"
        )
    kl = torch.distributions.kl_divergence(q_p, q_q)
    return kl.sum()


def restore_inducing(gp: gpytorch.models.ApproximateGP, posterior: FrozenPosterior) -> None:
    """Write a frozen q(u|D) back into a live GP's q(u), in place (any of the four
    parameterisations): serve each new deletion request from the original posterior, as
    :meth:`~pyro_unlearn.FrozenPosterior.restore` does for Pyro guides (which takes a guide, not
    a GPyTorch model). Nothing is written when the shapes differ.

    Arguments:
        gp: a supported ``ApproximateGP`` of the structure frozen.
        posterior: its frozen q(u|D) (:func:`freeze_inducing`).

    Raises:
        TypeError: ``posterior`` not frozen from a GPyTorch GP.
        ValueError: a q(u|D) of another shape than the GP's q(u).

    ``posterior.restore(gp)`` does the same (:meth:`InducingGuide.restore_into`).

    Example::

        posterior = freeze_inducing(gp)  # q(u|D)
        ...  # unlearn one request: gp's q(u) moves
        restore_inducing(gp, posterior)  # back to q(u|D) for the next request
        posterior.restore(gp)  # the same, as for Pyro guides
    """
    q = inducing_distribution(posterior)
    want = variational_strategy(gp)._variational_distribution.shape()
    if q.mean.shape != want:
        raise ValueError(
            f"the frozen q(u|D) has shape {tuple(q.mean.shape)}, this GP's q(u) {tuple(want)}: "
            "restore it into a GP of the structure it was frozen from"
        )
    set_inducing_distribution(gp, q.mean, q.covariance_matrix)
