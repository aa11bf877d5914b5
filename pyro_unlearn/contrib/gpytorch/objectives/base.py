"""The template the GPyTorch unlearning objectives share: GPyTorch's approximate marginal
log-likelihood, its KL term taken to the frozen q(u|D), and the checks of a batch."""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.likelihoods import _GaussianLikelihoodBase
from gpytorch.mlls._approximate_mll import _ApproximateMarginalLogLikelihood
from pyro.infer.util import is_validation_enabled

from ....exact import NotNormalizableError
from ....infer.adjusted_likelihood import check_lam, log_threshold
from ....posterior import FrozenPosterior
from ....trust import TrustDiagnostics
from ....validation import check_finite, check_positive_int
from ..conditional import Projection, check_gp_data, inputs_of
from ..inducing import inducing_distribution
from ..optimum import check_precision
from ..strategy import variational_strategy
from ..trust import diagnose_inducing, erased_precision_share
from .guards import FixedParameters, train_mode

__all__ = ["NO_INPUTS", "UnlearningObjective"]

#: Why an output may not carry its inputs (said by the errors asking for ``inputs=``).
NO_INPUTS = (
    "GPyTorch keeps them in the output's lazily evaluated kernel matrix for the whitened "
    "VariationalStrategy, not for UnwhitenedVariationalStrategy nor under "
    "gpytorch.settings.lazily_evaluate_kernels(False)"
)


class UnlearningObjective(_ApproximateMarginalLogLikelihood):
    r"""GPyTorch's template for an approximate marginal log-likelihood, with the KL term taken to
    the frozen q(u|D) instead of the prior and ``|D_e|`` as ``num_data``: ``forward`` returns, per
    output of a batch GP,

    .. math:: \frac{1}{b}\,\text{data term} - \frac{1}{|D_e|}\,\text{KL term}

    over a batch of b erased points; each objective overrides :meth:`_log_likelihood_term` (the
    data term) and :meth:`_kl_term`. Kernel, mean and likelihood hyperparameters are held fixed,
    so their priors and added loss terms (constants in q(u)) are left out. The subclasses are
    :class:`~pyro_unlearn.contrib.gpytorch.VariationalEUBO` and
    :class:`~pyro_unlearn.contrib.gpytorch.VariationalReverseKL`.

    Arguments:
        likelihood: the GP's likelihood (held fixed).
        model: the GP being unlearned.
        posterior: its frozen q(u|D) (:func:`~pyro_unlearn.contrib.gpytorch.freeze_inducing`).
        num_erased: ``|D_e|`` (GPyTorch's ``num_data``).
        lam: λ ∈ [0, 1] of the adjusted likelihood.
        num_samples: draws of u per step.
        combine_terms: ``False`` returns (data term, KL term), as GPyTorch's objectives.
        num_data: GPyTorch's name for ``num_erased``, accepted as ``VariationalELBO`` takes it;
            it must equal ``|D_e|`` (the training set's size would scale the KL term wrongly).
        beta: the KL term's weight, as GPyTorch's β (1: the objective of Nguyen et al.).

    Raises:
        TypeError, ValueError: an option of the wrong type or out of range, or a frozen q(u|D)
            of another shape than the GP's q(u).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        class Objective(UnlearningObjective):
            def _log_likelihood_term(self, output, target, inputs=None, **kwargs):
                return self.likelihood.expected_log_prob(target, output, **kwargs).sum(-1)
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
        num_data: int | None = None,
        beta: float = 1.0,
    ) -> None:
        num_erased = check_positive_int("num_erased", num_erased)
        if num_data is not None and check_positive_int("num_data", num_data) != num_erased:
            raise ValueError(
                f"num_data={num_data} but num_erased={num_erased}: here GPyTorch's num_data is "
                "|D_e| (the objectives are per erased point), not the training set's size"
            )
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
            raise (TypeError if not isinstance(beta, int | float) else ValueError)(
                f"beta must be a positive float (GPyTorch's KL weight), got {beta!r}"
            )
        num_samples = check_positive_int("num_samples", num_samples)
        if not isinstance(combine_terms, bool):
            raise TypeError(f"combine_terms must be a bool, got {combine_terms!r}")
        if not isinstance(likelihood, gpytorch.likelihoods.Likelihood):
            raise TypeError(
                f"likelihood must be a gpytorch.likelihoods.Likelihood, got "
                f"{type(likelihood).__name__}"
            )
        super().__init__(
            likelihood, model, num_erased, beta=float(beta), combine_terms=combine_terms
        )
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
        check_precision(posterior, stacklevel=4)
        self.lam = check_lam(lam)
        self.num_samples = num_samples
        self._batch_dims = tuple(range(-len(self.q_data.batch_shape), 0))
        with torch.no_grad():
            log_q_max = self._log_q_data(self.q_data.mean.unsqueeze(0))[0]
        self.log_threshold = log_threshold(self.lam, log_q_max)
        self._fixed = FixedParameters(model, likelihood)
        self._divided: tuple | None = None  # (key, inputs, target) of the D_e checked

    #: Whether a λ = 0 call on all of D_e checks the division first (:meth:`check_division`).
    divides = True

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
        self,
        output: MultivariateNormal | None,
        target: torch.Tensor,
        inputs: torch.Tensor | None,
        inputs_name: str = "inputs",
    ) -> None:
        """The batch's sizes against each other and ``num_erased`` (always: shapes only), then
        :meth:`_check_data` (``inputs_name``: what its errors call the inputs)."""
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
        self._check_data(output, target, inputs, inputs_name)

    def _check_data(
        self,
        output: MultivariateNormal | None,
        target: torch.Tensor,
        inputs: torch.Tensor | None,
        inputs_name: str = "inputs",
    ) -> None:
        """Non-finite inputs, targets or q(f) named with their first row, on every step under
        Pyro's validation (``pyro.enable_validation(False)`` skips it)."""
        if not is_validation_enabled():
            return
        check_gp_data(self.strategy, inputs, target, inputs_name=inputs_name)
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
        where u is sampled; by default read from ``output`` where it carries them,
        :func:`~pyro_unlearn.contrib.gpytorch.conditional.inputs_of`), ``kwargs`` passed to the
        likelihood's ``expected_log_prob``.
        Returns a tensor of the GP's batch shape, or (data term, KL term) with
        ``combine_terms=False``.

        The GP and likelihood are put in ``train()`` mode for the call and given their mode
        back: after ``gp.eval()`` an ``output`` comes from the caches of the last prediction, so
        it is recomputed from ``inputs`` (required then). A hyperparameter, mean, inducing input
        or likelihood parameter that moved since construction (an optimiser built on
        ``model.parameters()``) is put back and refused.

        Raises:
            ValueError: a batch of another size than ``num_erased`` allows, inputs, target and
                output of inconsistent sizes, an ``output`` computed in eval mode without
                ``inputs``, or (under Pyro's validation) non-finite data, named with their first
                row (:meth:`_check_data`), or a non-finite value (q(u) diverged).
            RuntimeError: when the optimiser moved the fixed parameters (put back first).
            NotNormalizableError: (the EUBO) at λ = 0 with a Gaussian likelihood, on the first
                call with all of D_e, when q(u|D)/p̃(D_e|u) is not a distribution
                (:meth:`check_division`)."""
        self._fixed.check()
        name = "inputs"
        if inputs is None and output is not None:
            inputs = inputs_of(output)  # None where the output does not carry them
            name = "output q(f)'s inputs"
        self._check_batch(output, target, inputs, name)
        stale = output is not None and not (self.model.training and self.likelihood.training)
        if stale and inputs is None:
            raise ValueError(
                "the GP (or its likelihood) is in eval() mode, where output = gp(x_b) comes from "
                "the caches of its last prediction and q(u)'s covariance gets no gradient, and "
                f"this output does not carry its inputs ({NO_INPUTS}): call gp.train() and "
                "likelihood.train() before unlearning, or pass inputs=x_b (the objective then "
                "recomputes output in train mode and gives the modes back)"
            )
        with train_mode(self.model, self.likelihood):
            if stale:
                output = self.model(inputs)
            num_batch = target.shape[-1]
            data_term = self._log_likelihood_term(output, target, inputs=inputs, **kwargs)
            self._check_division_once(target, inputs)
            data_term = data_term.div(num_batch)
            kl_term = self._kl_term().div(self.num_data / self.beta)
        finite = torch.isfinite(data_term).all() & torch.isfinite(kl_term).all()
        if is_validation_enabled() and not bool(finite):  # one synchronisation per step
            raise ValueError(
                f"{type(self).__name__} is not finite at this q(u) (data term "
                f"{data_term.detach().tolist()}, KL term {kl_term.detach().tolist()}): q(u) has "
                "diverged, typically because q(u|D)/p(D_e|u) is not a distribution (q(u|D) short "
                "of its optimum, or a mean-field q(u|D) facing a cluster); check "
                "objective.diagnose(x_e, y_e) (precision_share ≥ 1: retrain) or use lam > 0"
            )
        if self.combine_terms:
            return data_term - kl_term
        return data_term, kl_term

    def _projections_of(self, inputs: torch.Tensor) -> list[Projection] | None:
        """D_e's cached p(f|u) algebra where an objective keeps one (``None``: computed anew)."""
        return None

    def _check_division_once(self, target: torch.Tensor, inputs: torch.Tensor | None) -> None:
        """:meth:`check_division` on the first call that holds all of D_e (λ = 0, Gaussian
        likelihood: where the division is exact and the objective diverges without it)."""
        if (
            not self.divides
            or self.lam != 0.0
            or inputs is None
            or target.shape[-1] != self.num_erased
            or not isinstance(self.likelihood, _GaussianLikelihoodBase)
        ):
            return
        key = (inputs.data_ptr(), tuple(inputs.shape), inputs._version, target.data_ptr())
        if self._divided is not None and key != self._divided[0]:
            # inputs read from gp(x_e) are a new tensor every call: the same data, checked
            old_inputs, old_target = self._divided[1:]
            same = (
                old_inputs.shape == inputs.shape
                and old_target.shape == target.shape
                and bool(torch.equal(old_inputs, inputs))
                and bool(torch.isclose(old_target, target, 0.0, 0.0, equal_nan=True).all())
            )
            if same:
                self._divided = (key, old_inputs, old_target)
        if self._divided is None or key != self._divided[0]:
            self.check_division(inputs, target)
            self._divided = (key, inputs.detach().clone(), target.detach().clone())

    def check_division(self, inputs: torch.Tensor, target: torch.Tensor) -> float:
        r"""Refuse a q(u|D) that the erased data cannot be divided out of: the share s of
        q(u|D)'s precision they carry (:func:`~pyro_unlearn.contrib.gpytorch.\
erased_precision_share`, L-BUN's test) must be below 1, else q(u|D)/p̃(D_e|u) is no
        distribution and the λ = 0 EUBO diverges (to an unbounded KL, or NGD to
        ``NotPSDError``). The EUBO runs it on its first call holding all of D_e at λ = 0 with a
        Gaussian likelihood; call it on all of D_e when stepping on mini-batches. The reverse
        KL's weights stay finite there (its answer is bounded by q(u|D)'s draws) and it does not
        run it: :meth:`diagnose` reports it (``precision_positive_definite``).

        Arguments:
            inputs: all of D_e's inputs.
            target: their targets.

        Returns:
            s, when below 1.

        Raises:
            NotNormalizableError: a ``ValueError``, when s ≥ 1, with the remedies.

        References:
            A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of
            Bayesian Unlearning. ICML 2022 Workshop on Updatable Machine Learning.
        """
        share = erased_precision_share(
            self.model, self.likelihood, self.posterior, inputs, target,
            getattr(self, "chunk_size", 4096), chunks=self._projections_of(inputs),
            finite=is_validation_enabled(),
        )  # fmt: skip
        if share >= 1.0:
            raise NotNormalizableError(
                f"the erased data carry {share:.3g} ≥ 1 of q(u|D)'s precision along their most "
                "informative direction, so q(u|D)/p(D_e|u) is not a distribution and unlearning "
                "at lam=0 would diverge. If q(u|D) is short of its optimum (as training loops "
                "leave it), put it there first (Gaussian likelihood: one gpytorch.optim.NGD step "
                "at lr=1 on all of D with the hyperparameters fixed) and freeze again; a "
                "mean-field q(u|D) cannot carry a cluster's correlations. Otherwise use lam > 0 "
                "or retrain on D_r"
            )
        return share

    def diagnose(
        self,
        inputs: torch.Tensor,
        target: torch.Tensor,
        num_samples: int = 1000,
        precision: bool | None = None,
    ) -> TrustDiagnostics:
        """How far to trust the GP's current q(u) as the answer of this objective:
        :func:`~pyro_unlearn.contrib.gpytorch.diagnose_inducing` with this objective's GP,
        likelihood, q(u|D) and λ, on all of D_e; pass the result to
        :func:`pyro_unlearn.trust.verdict`.

        Arguments:
            inputs: all of D_e's inputs.
            target: their targets.
            num_samples: draws from each of q(u) and q(u|D).
            precision: the precision test (``None``: for a Gaussian likelihood).

        Returns:
            :class:`pyro_unlearn.trust.TrustDiagnostics`.
        """
        return diagnose_inducing(
            self.model, self.likelihood, self.posterior, inputs, target, lam=self.lam,
            num_samples=num_samples, chunk_size=getattr(self, "chunk_size", 4096),
            precision=precision,
        )  # fmt: skip
