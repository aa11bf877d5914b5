"""The evidence upper bound (EUBO) of Nguyen et al. (2020) for a sparse variational GP, shaped
like :class:`gpytorch.mlls.VariationalELBO`."""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal

from ....infer.adjusted_likelihood import adjusted_log_likelihood
from ....posterior import FrozenPosterior
from ..conditional import observed_cells, per_output_log_likelihood
from .base import NO_INPUTS, UnlearningObjective

__all__ = ["VariationalEUBO"]


class VariationalEUBO(UnlearningObjective):
    r"""The evidence upper bound (EUBO) of Nguyen et al. (2020) for a sparse variational GP, in
    the shape of :class:`gpytorch.mlls.VariationalELBO`: ``-eubo(model(x_b), y_b, inputs=x_b)``
    on mini-batches of D_e is an unbiased estimate of :math:`U(q_u)/|D_e|`, where

    .. math:: U(q_u) = \mathbb{E}_{q_u}[\log p_\mathrm{adj}(D_e|u)] + \mathrm{KL}(q_u \| q(u|D))

    is minimised over q(u) (its minimum at λ = 0 is q(u|D)/p̃(D_e|u), and with a Gaussian
    likelihood the optimal q(u|D_r)). The KL is exact; the expected log-likelihood is GPyTorch's
    closed form or quadrature on ``model(x_b)`` at λ = 0. For λ > 0 it is E[log p̃; inside],
    "inside" where log q(u|D) > log λ + log q* (p_adj is 1 elsewhere), from ``num_samples``
    draws u ~ q_u, as c·(closed form − MC of the outside part) + (1 − c)·(MC of the inside part),
    c the fraction of an independent set of draws that falls inside: each part is unbiased, and
    the mix is exact when every draw or none is inside. A batch GP's outputs keep their own
    values (sum them to train); their u is thresholded jointly.

    With a :class:`~gpytorch.variational.NaturalVariationalDistribution` q(u), step with
    ``gpytorch.optim.NGD(model.variational_parameters(), num_data=num_erased, lr=...)``: at λ = 0
    with a Gaussian likelihood one step on all of D_e at ``lr=1`` lands exactly on
    q(u|D)/p̃(D_e|u).

    Arguments:
        likelihood: the GP's likelihood (held fixed).
        model: the GP being unlearned; the optimiser should train only
            ``model.variational_parameters()``.
        posterior: its frozen q(u|D) (:func:`~pyro_unlearn.contrib.gpytorch.freeze_inducing`).
        num_erased: ``|D_e|``.
        lam: λ ∈ [0, 1] of the adjusted likelihood.
        num_samples: draws of u per step for λ > 0.
        num_data, beta: as GPyTorch's ``VariationalELBO`` takes them (``num_data`` must be
            ``|D_e|``; β weighs the KL term).
        combine_terms: ``False`` returns (−E[log p_adj]/b, KL/``|D_e|``), as GPyTorch's objectives.

    Returns:
        Called as ``eubo(output, target, inputs=None, **kwargs)``: −U/``|D_e|`` (to maximise),
        of the GP's batch shape.

    Raises:
        TypeError, ValueError: on construction, an option of the wrong type or out of range;
            on a call, a batch larger than ``num_erased``, inputs, target and output of
            inconsistent sizes, or (each step, under Pyro's validation) non-finite data named
            with the first row.

    References:
        - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
        - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
          Classification. AISTATS 2015.

    Example::

        >>> import gpytorch, torch
        >>> from pyro_unlearn.contrib.gpytorch import VariationalEUBO, freeze_inducing
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self, z):
        ...         q = gpytorch.variational.CholeskyVariationalDistribution(len(z))
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        ...         self.mean_module = gpytorch.means.ZeroMean()
        ...         self.covar_module = gpytorch.kernels.RBFKernel()
        ...     def forward(self, x):
        ...         return gpytorch.distributions.MultivariateNormal(
        ...             self.mean_module(x), self.covar_module(x))
        >>> x = torch.linspace(0, 1, 20).unsqueeze(-1); y = torch.sin(6 * x).squeeze(-1)
        >>> gp, likelihood = GP(x[::4].clone()), gpytorch.likelihoods.GaussianLikelihood()
        >>> _ = gp(x)  # (train it here; GPyTorch initialises q(u) on the first call)
        >>> eubo = VariationalEUBO(likelihood, gp, freeze_inducing(gp), num_erased=5, lam=1e-3)
        >>> optimizer = torch.optim.Adam(gp.variational_parameters(), lr=0.01)
        >>> x_e, y_e = x[:5], y[:5]
        >>> loss = -eubo(gp(x_e), y_e, inputs=x_e)
        >>> loss.backward(); optimizer.step()
        >>> sorted(eubo.diagnostics())
        ['inside_fraction']
    """

    def __init__(
        self,
        likelihood: gpytorch.likelihoods.Likelihood,
        model: gpytorch.models.ApproximateGP,
        posterior: FrozenPosterior,
        num_erased: int,
        lam: float = 0.0,
        num_samples: int = 64,
        combine_terms: bool = True,
        num_data: int | None = None,
        beta: float = 1.0,
    ) -> None:
        super().__init__(
            likelihood, model, posterior, num_erased, lam, num_samples, combine_terms,
            num_data, beta,
        )  # fmt: skip
        self._inside_fraction: torch.Tensor | None = None

    def _kl_term(self) -> torch.Tensor:
        """KL(q_u ‖ q(u|D)), of the GP's batch shape."""
        q_u = self.strategy._variational_distribution()
        return torch.distributions.kl_divergence(q_u, self.q_data)

    def _log_likelihood_term(
        self,
        output: MultivariateNormal,
        target: torch.Tensor,
        inputs: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """−E_{q_u}[log p_adj(D_b|u)] of the batch (the erased likelihood enters negated)."""
        if output is None:
            raise ValueError(
                "VariationalEUBO needs the GP's q(f) at the batch's inputs: "
                "eubo(model(x_b), y_b, inputs=x_b)"
            )
        filled, observed = observed_cells(target)  # NaN: a cell not erased (mask policy)
        with gpytorch.settings.observation_nan_policy("ignore"):
            closed = self.likelihood.expected_log_prob(filled, output, **kwargs)
        closed = (closed if observed is None else closed * observed).sum(-1)
        if self.lam == 0.0:
            return -closed
        if inputs is None:
            raise ValueError(
                "VariationalEUBO with lam > 0 needs the batch's inputs (inputs=x_b): the "
                "threshold is applied to samples of u, and p(f|u) needs x; this output does not "
                f"carry them ({NO_INPUTS})"
            )
        q_u = self.strategy._variational_distribution()
        u = q_u.rsample(torch.Size([self.num_samples]))
        per_u = per_output_log_likelihood(self.model, self.likelihood, u, inputs, target)
        log_q = self._per_draw(self._log_q_data(u).detach())
        kept = adjusted_log_likelihood(per_u, log_q, self.log_threshold)
        with torch.no_grad():  # independent draws: the weight leaves both parts unbiased
            fresh = q_u.sample(torch.Size([self.num_samples]))
            c = (self._log_q_data(fresh) > self.log_threshold).to(per_u.dtype).mean()
        self._inside_fraction = c
        # E[log p̃; inside] two ways: closed form minus the outside part (exact when every draw
        # is inside), or the inside part directly (exact when none is)
        return -(c * (closed - (per_u - kept).mean(0)) + (1 - c) * kept.mean(0))

    def diagnostics(self) -> dict[str, float]:
        """The last step's diagnostics: for λ > 0, ``"inside_fraction"``, the fraction c of draws
        of q_u inside the threshold (0: the erased data are ignored, λ is too large for q_u);
        ``{}`` at λ = 0 or before the first step."""
        if self._inside_fraction is None:
            return {}
        return {"inside_fraction": float(self._inside_fraction)}
