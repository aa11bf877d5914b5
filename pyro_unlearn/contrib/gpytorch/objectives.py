"""The unlearning objectives in the shape of :mod:`gpytorch.mlls`: the EUBO and the reverse KL."""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.mlls._approximate_mll import _ApproximateMarginalLogLikelihood
from pyro.infer.util import is_validation_enabled

from ...infer.adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from ...infer.reverse_kl import ImportanceWeights
from ...posterior import FrozenPosterior
from ...validation import (
    check_finite,
    check_positive_int,
)
from .conditional import Projection, check_gp_data, per_output_log_likelihood, projections
from .inducing import inducing_distribution
from .strategy import variational_strategy

__all__ = ["VariationalEUBO", "VariationalReverseKL"]


class _UnlearningObjective(_ApproximateMarginalLogLikelihood):
    r"""GPyTorch's template for an approximate marginal log-likelihood, with the KL term taken to
    the frozen q(u|D) instead of the prior and ``|D_e|`` as ``num_data``: ``forward`` returns, per
    output of a batch GP,

    .. math:: \frac{1}{b}\,\text{data term} - \frac{1}{|D_e|}\,\text{KL term}

    over a batch of b erased points; each objective overrides :meth:`_log_likelihood_term` (the
    data term) and :meth:`_kl_term`. Kernel, mean and likelihood hyperparameters are held fixed,
    so their priors and added loss terms (constants in q(u)) are left out.
    """

    def __init__(
        self,
        likelihood: gpytorch.likelihoods.Likelihood,
        model: gpytorch.models.ApproximateGP,
        posterior: FrozenPosterior,
        num_erased: int,
        lam: float,
        num_samples: int,
        combine_terms: bool,
    ) -> None:
        num_erased = check_positive_int("num_erased", num_erased)
        num_samples = check_positive_int("num_samples", num_samples)
        if not isinstance(combine_terms, bool):
            raise TypeError(f"combine_terms must be a bool, got {combine_terms!r}")
        if not isinstance(likelihood, gpytorch.likelihoods.Likelihood):
            raise TypeError(
                f"likelihood must be a gpytorch.likelihoods.Likelihood, got "
                f"{type(likelihood).__name__}"
            )
        super().__init__(likelihood, model, num_erased, combine_terms=combine_terms)
        self.strategy = variational_strategy(model)
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(
                f"posterior must be the frozen q(u|D) from "
                f"pyro_unlearn.contrib.gpytorch.freeze_inducing, got {type(posterior).__name__}"
            )
        self.posterior = posterior
        self.q_data = inducing_distribution(posterior)
        shape = self.strategy._variational_distribution.shape()
        if self.q_data.mean.shape != shape:
            raise ValueError(
                f"the frozen q(u|D) has shape {tuple(self.q_data.mean.shape)}, this GP's q(u) "
                f"{tuple(shape)}"
            )
        self.lam = check_lam(lam)
        self.num_samples = num_samples
        self._batch_dims = tuple(range(-len(self.q_data.batch_shape), 0))
        with torch.no_grad():
            log_q_max = self._log_q_data(self.q_data.mean.unsqueeze(0))[0]
        self.log_threshold = log_threshold(self.lam, log_q_max)

    @property
    def num_erased(self) -> int:
        """``|D_e|`` (GPyTorch's ``num_data``)."""
        return self.num_data

    def _sum_batch(self, log_prob: torch.Tensor) -> torch.Tensor:
        """A batch GP's log-density of u, ``(S, *batch)`` → ``(S,)``: its outputs' u are one
        latent, thresholded and importance-weighted jointly (as the Pyro path's site is)."""
        return log_prob.sum(self._batch_dims) if self._batch_dims else log_prob

    def _per_draw(self, value: torch.Tensor) -> torch.Tensor:
        """``(S,)`` → ``(S, 1, …)``, broadcasting against ``(S, *batch)``."""
        return value.reshape(value.shape + (1,) * len(self._batch_dims))

    def _log_q_data(self, u: torch.Tensor) -> torch.Tensor:
        """log q(u|D) of each draw of u, ``(S,)``."""
        return self._sum_batch(self.q_data.log_prob(u))

    def _check_batch(
        self, output: MultivariateNormal | None, target: torch.Tensor, inputs: torch.Tensor | None
    ) -> None:
        """The batch's sizes against each other and ``num_erased`` (always: shapes only), then
        :meth:`_check_data`."""
        check_gp_data(self.strategy, inputs, target, finite=False)
        if target.shape[-1] > self.num_erased:
            raise ValueError(
                f"the batch has {target.shape[-1]} points, more than num_erased={self.num_erased}: "
                "num_erased is |D_e|, the number of erased points the batches are drawn from"
            )
        if output is not None:
            if not isinstance(output, MultivariateNormal):
                raise TypeError(
                    f"output must be the GP's q(f) at the batch's inputs (a gpytorch "
                    f"MultivariateNormal, model(x_b)), got {type(output).__name__}"
                )
            if output.event_shape[-1] != target.shape[-1]:
                raise ValueError(
                    f"output (q(f) at the batch's inputs) has {output.event_shape[-1]} points, "
                    f"target {target.shape[-1]}: call the GP on the batch's inputs"
                )
        self._check_data(output, target, inputs)

    def _check_data(
        self, output: MultivariateNormal | None, target: torch.Tensor, inputs: torch.Tensor | None
    ) -> None:
        """Non-finite inputs, targets or q(f) named with their first row, on every step under
        Pyro's validation (``pyro.enable_validation(False)`` skips it)."""
        if not is_validation_enabled():
            return
        check_gp_data(self.strategy, inputs, target)
        if output is not None:
            check_finite("output (q(f) at the batch's inputs) mean", output.mean.movedim(-1, 0))

    def _kl_term(self) -> torch.Tensor:
        mean = self.q_data.mean
        return torch.zeros(self.q_data.batch_shape, dtype=mean.dtype, device=mean.device)

    def forward(
        self,
        output: MultivariateNormal | None,
        target: torch.Tensor,
        inputs: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The objective (to maximise) on a batch of D_e: ``output`` q(f) at its inputs (the
        GP's call on them), ``target`` its targets ``(*batch, b)``, ``inputs`` its inputs (needed
        where u is sampled), ``kwargs`` passed to the likelihood's ``expected_log_prob``.
        Returns a tensor of the GP's batch shape, or (data term, KL term) with
        ``combine_terms=False``.

        Raises:
            ValueError: a batch of another size than ``num_erased`` allows, inputs, target and
                output of inconsistent sizes, or (under Pyro's validation, see
                :meth:`_check_data`) non-finite data, named with their first row."""
        self._check_batch(output, target, inputs)
        num_batch = target.shape[-1]
        data_term = self._log_likelihood_term(output, target, inputs=inputs, **kwargs)
        data_term = data_term.div(num_batch)
        kl_term = self._kl_term().div(self.num_data / self.beta)
        if self.combine_terms:
            return data_term - kl_term
        return data_term, kl_term


class VariationalEUBO(_UnlearningObjective):
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
    ) -> None:
        super().__init__(likelihood, model, posterior, num_erased, lam, num_samples, combine_terms)
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
        closed = self.likelihood.expected_log_prob(target, output, **kwargs).sum(-1)
        if self.lam == 0.0:
            return -closed
        if inputs is None:
            raise ValueError(
                "VariationalEUBO with lam > 0 needs the batch's inputs (inputs=x_b): the "
                "threshold is applied to samples of u, and p(f|u) needs x"
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


class VariationalReverseKL(_UnlearningObjective):
    r"""The reverse-KL unlearning objective of Nguyen et al. (2020) for a sparse variational GP,
    in GPyTorch's idiom: ``-rkl(None, y_e, inputs=x_e)`` (all of D_e each step) is
    KL(p̃ ‖ q_v)/``|D_e|`` up to a constant, p̃(u) ∝ q(u|D)/p_adj(D_e|u), by the self-normalised
    importance-sampling estimate

    .. math:: \frac{1}{|D_e|} \frac{1}{S} \sum_s w_s \log q_v(u_s), \qquad
              u_s \sim q(u|D), \quad w_s \propto 1/p_\mathrm{adj}(D_e|u_s)

    (its value, to maximise; the weights carry no gradient). ``output`` is not needed: the draws
    come from q(u|D), not from the GP. The weights use all of D_e (the authors' choice), computed
    in chunks of ``chunk_size`` points; D_e's kernel algebra, L⁻¹K_Zx (M × ``|D_e|`` numbers), is
    computed on the first call and reused while the same ``inputs`` tensor comes back. A batch
    GP's outputs keep their own values (sum them to train), weighted jointly.

    Arguments:
        likelihood: the GP's likelihood (held fixed).
        model: the GP being unlearned (train ``model.variational_parameters()``).
        posterior: its frozen q(u|D) (:func:`~pyro_unlearn.contrib.gpytorch.freeze_inducing`).
        num_erased: ``|D_e|``.
        lam: λ ∈ [0, 1] of the adjusted likelihood.
        num_samples: S, the draws per step.
        chunk_size: erased points per chunk.
        proposal: ``"posterior"`` (u_s ~ q(u|D), the paper's) or ``"current"``: u_s ~ q_v
            (detached), w_s ∝ q(u_s|D)/(p_adj(D_e|u_s) q_v(u_s)), with a control variate; for
            D_e too informative for q(u|D), narrower than p̃, to propose.
        anneal: with ``proposal="current"``, an ESS fraction f ∈ (0, 1): the target is tempered,
            p̃_β ∝ q(u|D)/p_adj(D_e|u)^β, β raised each step as far as the weights keep an ESS of
            f·S (:func:`~pyro_unlearn.infer.reverse_kl.next_temperature`); the loss is the rKL
            once β = 1, and a loop should not stop before.
        combine_terms: ``False`` returns (the weighted term, a zero KL term).

    Returns:
        Called as ``rkl(output, target, inputs=x_e)``: the estimate above, of the GP's batch
        shape; :meth:`diagnostics` then holds the step's ESS and temperature.

    Raises:
        TypeError, ValueError: as :class:`VariationalEUBO`, and a batch other than all of D_e;
            non-finite D_e is named (with its first row) once per distinct inputs and target
            tensors, and on every step under Pyro's validation.

    References:
        - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
        - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
          Classification. AISTATS 2015.

    Example::

        rkl = VariationalReverseKL(likelihood, gp, freeze_inducing(gp), num_erased=len(y_e),
                                   proposal="current", anneal=0.5)
        optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=len(y_e), lr=0.05)
        while True:
            optimizer.zero_grad()
            (-rkl(None, y_e, inputs=x_e)).backward()
            optimizer.step()
            if rkl.diagnostics()["temperature"] == 1.0 and converged():
                break
    """

    def __init__(
        self,
        likelihood: gpytorch.likelihoods.Likelihood,
        model: gpytorch.models.ApproximateGP,
        posterior: FrozenPosterior,
        num_erased: int,
        lam: float = 0.0,
        num_samples: int = 256,
        chunk_size: int = 4096,
        proposal: str = "posterior",
        anneal: float | None = None,
        combine_terms: bool = True,
    ) -> None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
        super().__init__(likelihood, model, posterior, num_erased, lam, num_samples, combine_terms)
        self.weights = ImportanceWeights(proposal, anneal)
        self.chunk_size = chunk_size
        self._cache: tuple | None = None  # (key of the inputs, their chunks' p(f|u) algebra)
        self._checked: tuple | None = None  # keys of the last data found finite

    @staticmethod
    def _key(value: torch.Tensor | None) -> tuple | None:
        """The identity of a tensor and its contents' version: the same key, the same data."""
        if value is None:
            return None
        return (value.data_ptr(), tuple(value.shape), value._version, value.device)

    def _check_data(
        self, output: MultivariateNormal | None, target: torch.Tensor, inputs: torch.Tensor | None
    ) -> None:
        """Non-finite inputs or targets named with their first row, once per distinct pair of
        tensors (D_e comes back unchanged every step, as its cached algebra does), and on every
        step under Pyro's validation."""
        key = (self._key(inputs), self._key(target))
        if key != self._checked or is_validation_enabled():
            check_gp_data(self.strategy, inputs, target)
            self._checked = key

    def _projections_of(self, inputs: torch.Tensor) -> list[Projection]:
        """D_e's p(f|u) algebra, computed once: the hyperparameters are fixed, so it is constant
        while the same ``inputs`` tensor comes back unchanged every step."""
        key = self._key(inputs)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, projections(self.strategy, inputs, self.chunk_size))
        return self._cache[1]

    def _log_likelihood_term(
        self,
        output: MultivariateNormal | None,
        target: torch.Tensor,
        inputs: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """mean_s[w_s log q_v(u_s)], per output of a batch GP."""
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
            log_lik = per_output_log_likelihood(
                self.model, self.likelihood, u, inputs, target, self.chunk_size,
                self._projections_of(inputs),
            )  # fmt: skip
            log_q_data = self._log_q_data(u)
            log_lik = adjusted_log_likelihood(
                self._sum_batch(log_lik), log_q_data, self.log_threshold
            )
        log_q_v = q_v.log_prob(u)  # (S, *batch)
        weights = self.weights(log_lik, log_q_data, self._sum_batch(log_q_v))
        return (self._per_draw(weights) * log_q_v).mean(0)

    @property
    def ess(self) -> torch.Tensor | None:
        """The last step's effective sample size (``None`` before the first)."""
        return self.weights.ess

    @property
    def temperature(self) -> torch.Tensor:
        """β of the annealed target (1 without ``anneal``)."""
        return self.weights.temperature

    def diagnostics(self) -> dict[str, float]:
        """The last step's diagnostics, ``{"ess": ..., "temperature": ...}`` (the keys of
        :class:`~pyro_unlearn.ReverseKL`'s); ``{}`` before the first step."""
        if self.weights.ess is None:
            return {}
        return {"ess": float(self.weights.ess), "temperature": float(self.weights.temperature)}
