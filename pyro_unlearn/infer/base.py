"""The contract the unlearning losses share: λ, the frozen posterior, particles, diagnostics."""

from __future__ import annotations

import numbers
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine import Trace
from pyro.util import warn_if_inf, warn_if_nan

from ..handlers import ERASED, is_erased
from ..posterior import FrozenPosterior
from ..traces import latent_sites, particle_dim_of, preserved_rng
from ..validation import check_bool, check_finite, check_finite_data, check_positive_int
from .adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from .particle_paths import VmappedModel, choose_particle_path, plate_nesting

__all__ = [
    "UnlearningLoss",
    "check_erased_data_finite",
    "check_likelihood_connected",
    "check_likelihood_varies",
    "check_loss_flags",
    "check_site_shapes",
    "check_sites_match",
]

#: What a non-finite loss most often means, appended to Pyro's NaN / inf warnings.
NOT_NORMALISABLE = (
    "the unlearning loss: the target q(θ|D)/p_adj(D_e|θ) may not be normalisable here (erased "
    "data too informative for q(θ|D)); try a larger lam, ReverseKL, or more particles"
)


#: What a likelihood that ignores the sampled latents means, and where to turn.
INDEPENDENT_LIKELIHOOD = (
    "the erased observations' likelihood does not depend on the latent sites the guide samples, "
    "so no unlearning loss can move the guide (the model computes it from something else, e.g. "
    "pyro.contrib.gp's VariationalSparseGP and VariationalGP compute f from the variational "
    "parameters, not from the sampled u: unlearn them through the adapter "
    "pyro_unlearn.contrib.pyro_gp.VariationalGPAdapter)"
)


def _flags_erased_rows(model_trace: Trace) -> bool:
    """Whether some observed site of the trace holds an erased row in this step."""
    for site in model_trace.nodes.values():
        flag = site.get("infer", {}).get(ERASED) if site["type"] == "sample" else None
        if flag is True or (isinstance(flag, torch.Tensor) and bool(flag.any())):
            return True
    return False


def check_likelihood_varies(log_lik: torch.Tensor, log_q: torch.Tensor) -> None:
    """Raise if log p(D_e|θ_s) is the same at every particle although the θ_s differ (their log
    q(θ_s|D) do): a likelihood that does not depend on the sampled latents.

    Arguments:
        log_lik: log p(D_e|θ_s) per particle, ``(S,)``.
        log_q: log q(θ_s|D) per particle, ``(S,)``, telling distinct draws apart.

    Raises:
        ValueError: naming the constant value.

    Example:
        >>> check_likelihood_varies(torch.tensor([-1.0, -2.0]), torch.tensor([0.1, 0.2]))
        >>> check_likelihood_varies(torch.tensor([-1.0, -1.0]), torch.tensor([0.1, 0.2]))
        Traceback (most recent call last):
        ...
        ValueError: log p(D_e|θ) is -1 at all 2 distinct draws of θ: the erased observations' ...
    """
    log_lik, log_q = log_lik.detach(), log_q.detach()
    if log_lik.numel() < 2 or not bool((log_q != log_q[0]).any()):
        return  # fewer than two distinct draws: nothing to compare
    if not bool((log_lik != log_lik[0]).any()):
        raise ValueError(
            f"log p(D_e|θ) is {float(log_lik[0]):.6g} at all {log_lik.numel()} distinct draws of "
            f"θ: {INDEPENDENT_LIKELIHOOD}"
        )


def check_likelihood_connected(model_trace: Trace, log_lik: torch.Tensor) -> None:
    """Raise if log p(D_e|θ) has no gradient with respect to the model's latent values drawn by
    a reparameterised guide (those that require grad); does nothing when none does (draws
    without gradient, as the reverse KL's).

    Arguments:
        model_trace: the model's trace at the guide's draws.
        log_lik: log p(D_e|θ_s) computed from it.

    Raises:
        ValueError: when the gradient is absent or zero at every latent value.
    """
    values = [
        site["value"]
        for site in model_trace.nodes.values()
        if site["type"] == "sample"
        and not site["is_observed"]
        and isinstance(site["value"], torch.Tensor)
        and site["value"].requires_grad
    ]
    if not values:
        return
    grads = [None] * len(values)
    if log_lik.requires_grad:
        grads = torch.autograd.grad(log_lik.sum(), values, allow_unused=True, retain_graph=True)
    if all(g is None or not bool(g.any()) for g in grads):
        raise ValueError(
            f"log p(D_e|θ) has no gradient with respect to the sampled latent values: "
            f"{INDEPENDENT_LIKELIHOOD}"
        )


def check_sites_match(guide_sites: list[str], posterior_sites: list[str]) -> None:
    """Raise unless the frozen posterior scores exactly the sites the guide samples.

    Arguments:
        guide_sites: the latent (auxiliary) sites of a guide trace
            (:func:`~pyro_unlearn.traces.latent_sites`).
        posterior_sites: :attr:`FrozenPosterior.sites <pyro_unlearn.FrozenPosterior>`.

    Raises:
        ValueError: when the two sets differ.

    Example:
        >>> check_sites_match(["mu"], ["mu"])
        >>> check_sites_match(["mu"], ["sigma"])
        Traceback (most recent call last):
        ...
        ValueError: the frozen posterior cannot score this guide: ...
    """
    if set(guide_sites) != set(posterior_sites):
        raise ValueError(
            "the frozen posterior cannot score this guide: the guide's sites "
            f"{sorted(guide_sites)} differ from the posterior's {sorted(posterior_sites)}; "
            "freeze a trained guide of the same structure (same class, model and name)"
        )


def check_loss_flags(
    vectorize_particles: bool, max_plate_nesting: float, retain_graph: bool | None
) -> None:
    """Raise unless the options every Pyro-style loss takes have usable values.

    Arguments:
        vectorize_particles: a ``bool``.
        max_plate_nesting: a non-negative integer, or ``float("inf")`` (guessed on first use).
        retain_graph: ``None`` or a ``bool``.

    Raises:
        TypeError: for a value of the wrong type (a string, a fraction).
        ValueError: for a negative ``max_plate_nesting``.

    Example:
        >>> check_loss_flags(True, float("inf"), None)
        >>> check_loss_flags("yes", 1, None)
        Traceback (most recent call last):
        ...
        TypeError: vectorize_particles must be True or False, got 'yes' (str)
    """
    check_bool("vectorize_particles", vectorize_particles)
    if retain_graph is not None:
        check_bool("retain_graph", retain_graph)
    if max_plate_nesting == float("inf") and not isinstance(max_plate_nesting, bool):
        return
    if isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, numbers.Integral):
        raise TypeError(
            "max_plate_nesting must be a non-negative integer or float('inf'), got "
            f"{max_plate_nesting!r} ({type(max_plate_nesting).__name__})"
        )
    if max_plate_nesting < 0:
        raise ValueError(
            f"max_plate_nesting must be a non-negative integer, got {max_plate_nesting}"
        )


def check_erased_data_finite(model_trace: Trace) -> None:
    """Raise a ``ValueError`` naming the observed site and its first row if the value of a site
    flagged by :func:`~pyro_unlearn.unlearn` holds NaN or ±inf: non-finite data, which would
    otherwise surface as a non-finite loss blamed on the target.

    Arguments:
        model_trace: a trace of the wrapped model.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro_unlearn import unlearn
        >>> def model(y):
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        >>> trace = pyro.poutine.trace(unlearn(model)).get_trace(torch.tensor([0.0, float("inf")]))
        >>> check_erased_data_finite(trace)
        Traceback (most recent call last):
        ...
        ValueError: observed site 'y' has a non-finite value (inf) at row 1: the data must be finite
    """
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and is_erased(name, site):
            check_finite(f"observed site {name!r}", site["value"])


def check_site_shapes(guide_trace: Trace, posterior_trace: Trace, sites: list[str]) -> None:
    """Raise unless the frozen posterior's distribution at every site has the guide's shape
    (batch and event): a posterior frozen from a model whose site has another shape would
    otherwise be broadcast against the guide's draws.

    Arguments:
        guide_trace: a trace of the live guide.
        posterior_trace: a trace of the frozen posterior at the same θ.
        sites: the sites to compare.

    Raises:
        ValueError: naming the first site whose shapes differ.
    """
    for name in sites:
        ours, theirs = guide_trace.nodes[name]["fn"], posterior_trace.nodes[name]["fn"]
        if (ours.batch_shape, ours.event_shape) != (theirs.batch_shape, theirs.event_shape):
            raise ValueError(
                f"the frozen posterior cannot score this guide: site {name!r} has shape "
                f"{tuple(ours.batch_shape + ours.event_shape)} in the guide but "
                f"{tuple(theirs.batch_shape + theirs.event_shape)} in the posterior (frozen from "
                "a model whose site has another shape?); freeze a guide of this model"
            )


class UnlearningLoss(ELBO):
    r"""Base of :class:`~pyro_unlearn.Trace_EUBO` and :class:`~pyro_unlearn.ReverseKL`.

    A drop-in loss for :class:`pyro.infer.SVI`: ``loss``, ``loss_and_grads`` and
    ``differentiable_loss`` behave as Pyro's, with ``num_particles``, ``vectorize_particles``,
    ``max_plate_nesting`` and ``retain_graph`` as in :class:`pyro.infer.Trace_ELBO`. The model's
    own parameters are hidden from the optimiser; only the guide's are trained. The model must be
    wrapped by :func:`~pyro_unlearn.unlearn`, which flags the erased observations D_e.

    Both losses move a guide q_u, started at q(θ|D), towards

    .. math:: \tilde p_\mathrm{adj}(θ) \propto q(θ|D) \,/\, p_\mathrm{adj}(D_e|θ; λ),

    the approximate posterior of the remaining data D_r, where the adjusted likelihood
    (:func:`~pyro_unlearn.adjusted_log_likelihood`) is 1 where q(θ|D) ≤ λ·max q.

    The contract, as in Pyro's losses:

    * ``_get_trace(model, guide, args, kwargs)`` (Pyro's hook) returns the traces of one
      particle, or of all vectorised particles: ``(model_trace, guide_trace,
      posterior_trace)``, the model, the guide and the frozen posterior run at the same θ. A
      subclass draws θ and runs the three programs in :meth:`_trace_programs`.
    * Checks that cost a little every step (the model's arguments and erased observations are
      finite, the guide's sites and their shapes against the posterior's, the subclass's own in
      :meth:`_check_traces`) run only under
      :func:`pyro.infer.util.is_validation_enabled` (on by default, off with
      ``pyro.enable_validation(False)`` for speed).
    * A NaN or infinite loss is reported as Pyro reports it, with a warning
      (:func:`pyro.util.warn_if_nan`, :func:`pyro.util.warn_if_inf`; also on the gradients).
    * :meth:`diagnostics` reports the last step's per-step diagnostics by name.
    * Particles fit the model: with ``vectorize_particles=True`` the first step checks once
      (per model) that the model takes Pyro's particle plate
      (:func:`~pyro_unlearn.traces.vectorization_problem`: a vectorised trace that raises, or
      whose log-likelihood is broadcast or mixed across particles), else runs the model at every
      particle by ``torch.func.vmap`` (:class:`~pyro_unlearn.infer.particle_paths.VmappedModel`),
      else one particle at a time; :attr:`particles` says which (logged once at INFO on the
      ``pyro_unlearn`` logger). ``max_plate_nesting`` is read off the first traces, quietly.
    * Under validation, the first step also checks that log p(D_e|θ) depends on the sampled θ:
      it differs between distinct draws and (for a reparameterised guide) has a gradient with
      respect to them; a likelihood computed from something else is a ``ValueError``.

    Arguments:
        posterior: the frozen q(θ|D) from :func:`pyro_unlearn.freeze`.
        lam: λ ∈ [0, 1]; 0 is the plain likelihood, 1 unlearns nothing.
        num_particles: draws of θ per step, a positive integer.
        vectorize_particles: draw them in one vectorised plate instead of a Python loop.
        max_plate_nesting: as in Pyro's losses (guessed on the first step when infinite).
        retain_graph: passed to ``backward`` in :meth:`loss_and_grads`.

    Raises:
        TypeError: for a ``posterior`` that is not a :class:`~pyro_unlearn.FrozenPosterior`, or
            an option of the wrong type (a string, a fractional ``num_particles``).
        ValueError: for an option out of range (``num_particles`` < 1, λ outside [0, 1]); on
            the first step (under validation), for a likelihood that does not depend on the
            sampled latents.

    Attributes:
        particles: ``"vectorized"``, ``"vmap"`` or ``"sequential"``
            (:data:`~pyro_unlearn.traces.PARTICLE_PATHS`), set on the first step; ``None``
            before.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
    """

    def __init__(
        self,
        posterior: FrozenPosterior,
        lam: float = 0.0,
        *,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        max_plate_nesting: float = float("inf"),
        retain_graph: bool | None = None,
    ) -> None:
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(
                f"posterior must be a FrozenPosterior from pyro_unlearn.freeze(guide), got "
                f"{type(posterior).__name__}; a live guide would move with the optimiser"
            )
        num_particles = check_positive_int("num_particles", num_particles)
        check_loss_flags(vectorize_particles, max_plate_nesting, retain_graph)
        self.posterior = posterior
        self.lam = check_lam(lam)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )
        self.particles: str | None = None
        self._path_for: Callable | None = None
        self._prototype: Trace | None = None
        self._dependence_checked = False

    @property
    def log_threshold(self) -> torch.Tensor:
        """log λ + log q*, the adjusted likelihood's threshold on log q(θ|D)."""
        return log_threshold(self.lam, self.posterior.log_q_max)

    def diagnostics(self) -> dict[str, float]:
        """The per-step diagnostics of the last evaluated step, by name.

        A loss reports what its estimator needs watched; :func:`~pyro_unlearn.forget` records
        every key at every step without knowing the loss's class. Names with a shared meaning:

        * ``"ess"``: the effective sample size of self-normalised importance weights;
        * ``"temperature"``: β of an annealed target; the loss is its objective only at β = 1,
          and :func:`~pyro_unlearn.forget` does not count a run as converged before.

        Returns:
            A dict of floats; empty for a loss without diagnostics (the EUBO).
        """
        return {}

    def _adjusted(self, log_lik: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """log p_adj(D_e|θ; λ) per particle. λ = 0 is the plain likelihood: no threshold, so
        log q* is never needed (a flow posterior's numeric mode search is skipped)."""
        if self.lam == 0.0:
            return log_lik
        return adjusted_log_likelihood(log_lik, log_q, self.log_threshold)

    # -- particles that fit the model -----------------------------------------------------------
    def _guess_max_plate_nesting(self, model, guide, args, kwargs) -> None:
        """Pyro's guess, without its INFO line on every new loss."""
        nesting = plate_nesting(model, guide, args, kwargs)
        self.max_plate_nesting = nesting + int(self.vectorize_particles and self.num_particles > 1)

    def _choose_particles(self, model, guide, args, kwargs) -> None:
        """Once per model: the plate nesting, and the particle path (:attr:`particles`)."""
        if self._path_for is model:
            return
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        vectorize = self.vectorize_particles and self.num_particles > 1
        path = "vectorized" if self.vectorize_particles else "sequential"
        if vectorize:
            nesting = int(self.max_plate_nesting) - 1
            path = choose_particle_path(
                model, guide, args, kwargs, self.num_particles, nesting, type(self).__name__
            )
        if path == "vmap":
            with preserved_rng(args, kwargs), torch.no_grad(), poutine.block():
                self._prototype = poutine.trace(model).get_trace(*args, **kwargs)
        self.particles, self._path_for = path, model

    # -- Pyro's hooks: ELBO._get_traces dispatches particles (loop or vectorised plate) ---------
    def _get_traces(self, model, guide, args, kwargs):
        """The traces of all particles: one vectorised trace (the model in the plate, or by
        vmap inside it), or one per particle."""
        if self.particles is None:  # called directly, not through a loss method
            self._choose_particles(model, guide, args, kwargs)
        if self.particles == "sequential":
            for _ in range(self.num_particles):
                yield self._get_trace(model, guide, args, kwargs)
            return
        if self.particles == "vmap":
            dim = -int(self.max_plate_nesting)
            model = VmappedModel(model, self._prototype, self.num_particles, dim, "erased")
        yield self._get_vectorized_trace(model, guide, args, kwargs)

    def _get_trace(self, model, guide, args, kwargs) -> tuple[Trace, Trace, Trace]:
        """The traces of one particle: ``(model_trace, guide_trace, posterior_trace)``."""
        return self._checked_traces(model, guide, self.posterior, args, kwargs)

    def _get_vectorized_trace(self, model, guide, args, kwargs) -> tuple[Trace, Trace, Trace]:
        """The traces of all particles at once, each program inside the particle plate."""
        wrap = self._vectorized_num_particles
        return self._checked_traces(wrap(model), wrap(guide), wrap(self.posterior), args, kwargs)

    def _checked_traces(self, model, guide, posterior, args, kwargs):
        traces = self._trace_programs(model, guide, posterior, args, kwargs)
        if is_validation_enabled():
            self._check_traces(*traces)
        return traces

    def _check_traces(self, model_trace: Trace, guide_trace: Trace, posterior_trace: Trace):
        """Per-step checks, run under validation only; subclasses add theirs (call super)."""
        check_erased_data_finite(model_trace)

    def _check_pair(self, guide_trace: Trace, posterior_trace: Trace) -> None:
        """Under validation: the guide's sites and their shapes against the frozen posterior's.
        Subclasses call it as soon as both traces exist, before any log-density is computed (a
        site of another shape would otherwise be broadcast or fail inside Pyro)."""
        if is_validation_enabled():
            check_sites_match(latent_sites(guide_trace), self.posterior.sites)
            check_site_shapes(guide_trace, posterior_trace, self.posterior.sites)

    @abstractmethod
    def _trace_programs(
        self, model: Callable, guide: Callable, posterior: Callable, args, kwargs
    ) -> tuple[Trace, Trace, Trace]:
        """Draw θ and run the model, the guide and the frozen posterior at it; ``log_prob`` must
        be computed on what :meth:`_particle_terms` reads (the sites of ``self.posterior``, the
        model's erased observations)."""

    @abstractmethod
    def _particle_terms(
        self,
        model_trace: Trace,
        guide_trace: Trace,
        posterior_trace: Trace,
        particle_dim: int | None,
        num_particles: int,
    ) -> dict[str, torch.Tensor]:
        """The per-particle terms of one ``_get_trace`` result, tensors of shape
        ``(num_particles,)``."""

    @abstractmethod
    def _objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Combine the per-particle terms of all particles into the differentiable loss."""

    # -- the loss -------------------------------------------------------------------------------
    def _terms(self, model, guide, args, kwargs) -> dict[str, torch.Tensor]:
        check = is_validation_enabled()
        if check:  # non-finite data named as such, not as a non-finite loss
            check_finite_data(args, kwargs)
        blocked = poutine.block(model, hide_types=["param"])  # never train the model's params
        self._choose_particles(model, guide, args, kwargs)
        check = check and not self._dependence_checked
        particles = []
        for traces in self._get_traces(blocked, guide, args, kwargs):
            particles.append(self._particle_terms(*traces, *self._particle_layout()))
            if check and len(particles) == 1:
                # a batch with no erased row (subsample="batch") says nothing: check a later one
                check = _flags_erased_rows(traces[0])
                if check:
                    check_likelihood_connected(traces[0], particles[0]["log_lik"])
        terms = {k: torch.cat([p[k] for p in particles]) for k in particles[0]}
        if check:
            check_likelihood_varies(terms["log_lik"], terms["log_q"])
            self._dependence_checked = True
        return terms

    def _particle_layout(self) -> tuple[int | None, int]:
        """(the batch dim that indexes particles or ``None``, particles per trace)."""
        if self.particles == "sequential":
            return None, 1
        dim = particle_dim_of(self.num_particles, True, self.max_plate_nesting)
        return dim, self.num_particles

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The loss as a differentiable tensor (Pyro's ``differentiable_loss``)."""
        return _warn_if_not_finite(self._objective(self._terms(model, guide, args, kwargs)))

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, without gradients (nor annealing: see ``ReverseKL``)."""
        with torch.no_grad():
            loss = self._objective(self._terms(model, guide, args, kwargs))
        return _warn_if_not_finite(torch_item(loss))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, after ``backward`` on it (what :class:`pyro.infer.SVI` calls)."""
        loss = self._objective(self._terms(model, guide, args, kwargs))
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return _warn_if_not_finite(torch_item(loss))


def _warn_if_not_finite(loss):
    # Pyro's convention: warn (and register the same check on the gradient), never raise.
    return warn_if_inf(warn_if_nan(loss, NOT_NORMALISABLE), NOT_NORMALISABLE)
