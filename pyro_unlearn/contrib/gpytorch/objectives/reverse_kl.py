"""The reverse-KL unlearning objective of Nguyen et al. (2020) for a sparse variational GP, in
GPyTorch's idiom: self-normalised importance weights over draws of u."""

from __future__ import annotations

import warnings

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal
from pyro.infer.util import is_validation_enabled

from ....forget import WeightCollapseWarning, collapsed_ess_threshold
from ....infer.adjusted_likelihood import adjusted_log_likelihood
from ....infer.reverse_kl import ImportanceWeighted, ImportanceWeights
from ....posterior import FrozenPosterior
from ....validation import check_positive_int
from ..conditional import Projection, check_gp_data, per_output_log_likelihood, projections
from .base import NO_INPUTS, UnlearningObjective

__all__ = ["COLLAPSE_WINDOW", "VariationalReverseKL"]

#: Training steps whose median ESS is judged for a weight collapse.
COLLAPSE_WINDOW = 10


class VariationalReverseKL(ImportanceWeighted, UnlearningObjective):
    r"""The reverse-KL unlearning objective of Nguyen et al. (2020) for a sparse variational GP,
    in GPyTorch's idiom: ``-rkl(None, y_e, inputs=x_e)`` (or ``-rkl(gp(x_e), y_e)``; all of D_e
    each step) is KL(p̃ ‖ q_v)/``|D_e|`` up to a constant, p̃(u) ∝ q(u|D)/p_adj(D_e|u), by the
    self-normalised importance-sampling estimate

    .. math:: \frac{1}{|D_e|} \frac{1}{S} \sum_s w_s \log q_v(u_s), \qquad
              u_s \sim q(u|D), \quad w_s \propto 1/p_\mathrm{adj}(D_e|u_s)

    (its value, to maximise; the weights carry no gradient). ``output`` is not needed (the draws
    come from q(u|D), not from the GP), only the inputs: ``inputs=x_e``, or read from
    ``output = gp(x_e)`` where it carries them (the whitened ``VariationalStrategy``). The
    weights use all of D_e (the authors' choice), computed in chunks of ``chunk_size`` points;
    D_e's kernel algebra, L⁻¹K_Zx (M × ``|D_e|`` numbers), is computed on the first call and
    reused while the same inputs come back. A batch
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
        num_data, beta: as GPyTorch's ``VariationalELBO`` takes them (``num_data`` must be
            ``|D_e|``; β weighs the KL term).
        combine_terms: ``False`` returns (the weighted term, a zero KL term).

    Returns:
        Called as ``rkl(output, target, inputs=x_e)``: the estimate above, of the GP's batch
        shape; :meth:`diagnostics` then holds the step's ESS and temperature.

    Warns:
        WeightCollapseWarning: (a :class:`~pyro_unlearn.LowESSWarning`), once, when the median
            ESS of :data:`COLLAPSE_WINDOW` training steps falls below max(2, 1 % of
            ``num_samples``) (:func:`~pyro_unlearn.forget.collapsed_ess_threshold`, the rule of
            :func:`~pyro_unlearn.forget`); :attr:`collapsed` then stays ``True`` until a window
            recovers. A collapsed reverse KL stops far from its target while its loss looks flat.

    Raises:
        TypeError, ValueError: as
            :class:`~pyro_unlearn.contrib.gpytorch.objectives.eubo.VariationalEUBO`, and a batch
            other than all of D_e; non-finite D_e is named (with its first row) once per distinct
            inputs and target tensors, and on every step under Pyro's validation.

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

    divides = False  # its weights stay finite where q(u|D)/p(D_e|u) is no distribution

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
        num_data: int | None = None,
        beta: float = 1.0,
    ) -> None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
        super().__init__(
            likelihood, model, posterior, num_erased, lam, num_samples, combine_terms,
            num_data, beta,
        )  # fmt: skip
        self.weights = ImportanceWeights(proposal, anneal)
        self.chunk_size = chunk_size
        self._cache: tuple | None = None  # (key, the chunks' p(f|u) algebra, the inputs)
        self._checked: tuple | None = None  # keys of the last data found finite
        self._recent_ess: list[torch.Tensor] = []  # the ESS of the training steps since a check
        self.collapsed = False

    @staticmethod
    def _key(value: torch.Tensor | None) -> tuple | None:
        """The identity of a tensor and its contents' version: the same key, the same data."""
        if value is None:
            return None
        return (value.data_ptr(), tuple(value.shape), value._version, value.device)

    def _check_data(
        self,
        output: MultivariateNormal | None,
        target: torch.Tensor,
        inputs: torch.Tensor | None,
        inputs_name: str = "inputs",
    ) -> None:
        """Non-finite inputs or targets named with their first row, once per distinct pair of
        tensors (D_e comes back unchanged every step, as its cached algebra does), and on every
        step under Pyro's validation."""
        key = (self._key(inputs), self._key(target))
        if key != self._checked or is_validation_enabled():
            check_gp_data(self.strategy, inputs, target, inputs_name=inputs_name)
            self._checked = key

    def _projections_of(self, inputs: torch.Tensor) -> list[Projection]:
        """D_e's p(f|u) algebra, computed once: the hyperparameters are fixed, so it is constant
        while the same ``inputs`` tensor comes back unchanged every step."""
        key = self._key(inputs)
        if self._cache is not None and self._cache[0] != key:
            cached = self._cache[2]  # inputs read from an output are a new tensor every call
            if cached.shape == inputs.shape and bool(torch.equal(cached, inputs)):
                self._cache = (key, *self._cache[1:])
        if self._cache is None or self._cache[0] != key:
            chunks = projections(self.strategy, inputs, self.chunk_size)
            self._cache = (key, chunks, inputs.detach().clone())
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
                "VariationalReverseKL needs the erased inputs (its draws of u are scored through "
                "p(f|u), which depends on them): rkl(None, y_e, inputs=x_e), or rkl(gp(x_e), y_e) "
                f"where the output carries them ({NO_INPUTS})"
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
        if torch.is_grad_enabled():
            self._watch(self.weights.ess)
        return (self._per_draw(weights) * log_q_v).mean(0)

    def _watch(self, ess: torch.Tensor) -> None:
        """Warn once when the median ESS of :data:`COLLAPSE_WINDOW` training steps falls below
        max(2, 1 % of the draws) (read once per window: no synchronisation per step)."""
        self._recent_ess.append(ess.detach())
        if len(self._recent_ess) < COLLAPSE_WINDOW:
            return
        median = float(torch.stack(self._recent_ess).median())
        self._recent_ess = []
        if median >= collapsed_ess_threshold(self.num_samples):
            self.collapsed = False
            return
        if not self.collapsed:
            warnings.warn(
                f"VariationalReverseKL's importance weights have collapsed: a median ESS of "
                f"{median:.1f} of {self.num_samples} draws over the last {COLLAPSE_WINDOW} steps, "
                "so one draw carries each step and q(u) will not reach q(u|D)/p(D_e|u). The "
                "erased data move q(u) further than draws from q(u|D) reach: use "
                "proposal='current', anneal=0.5 (its weights follow q(u)); "
                "objective.diagnose(x_e, y_e) says how large the update is",
                WeightCollapseWarning,
                stacklevel=4,
            )
        self.collapsed = True

    def diagnostics(self) -> dict[str, float]:
        """The last step's diagnostics, ``{"ess": ..., "temperature": ...}`` (the keys of
        :class:`~pyro_unlearn.ReverseKL`'s); ``{}`` before the first step."""
        if self.weights.ess is None:
            return {}
        return {"ess": float(self.weights.ess), "temperature": float(self.weights.temperature)}
