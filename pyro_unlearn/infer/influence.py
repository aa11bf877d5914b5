"""BIF: influence-function forgetting, Newton steps on a guide's variational parameters γ."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from pyro.infer.autoguide import AutoGuide
from tqdm import tqdm

from ..params import ParamSnapshot
from ..posterior import FrozenPosterior, freeze
from ..results import UnlearningResult
from ..traces import vectorization_problem
from ..validation import (
    check_finite_data,
    check_nonnegative,
    check_nonnegative_int,
    check_positive_int,
)
from .influence_objective import GuideParameters, InfluenceObjective, remaining_batches
from .newton import SOLVERS, HessianSolver, IndefiniteHessianError

if TYPE_CHECKING:
    from ..trust import Caveats, TrustDiagnostics

__all__ = ["IndefiniteHessianError", "InfluenceUnlearnResult", "influence_unlearn"]


@dataclass(kw_only=True)
class InfluenceUnlearnResult(UnlearningResult):
    """What :func:`influence_unlearn` returns.

    Attributes:
        posterior: the unlearned guide, frozen (its own tensors: it shares nothing with the input
            guide or the param store). Sample it like a guide, read its moments with
            :func:`~pyro_unlearn.guides.read_gaussian`, or write it into a live guide of the
            same structure with ``result.posterior.restore(guide)``. ``result.guide`` is the
            same object.
        step: the total change of every parameter, γ − γ_D, in the param store's unconstrained
            space, by param-store name.
        steps: Newton steps taken.
        solver: "cg" or "lissa".
        iterations: CG iterations (LiSSA recursions) of each Newton step.
        residuals: ‖(H_r + δI)Δ − b‖ / ‖b‖ of each Newton step's solve.
        converged: whether every solve met its tolerance (CG: ``cg_tol``; LiSSA: a relative
            residual ≤ 0.1); a miss also warns.
        gradient_mismatch: ‖∇F_r(γ_D) + ∇h(γ_D)‖ / ‖∇h(γ_D)‖ under the step's noise: 0 when
            q(θ|D) is a stationary point of −ELBO(γ; D) (BIF's premise); large values mean the
            guide was not trained to convergence on D (or the estimate is noisy).
        lissa_scale: LiSSA's scale (``None`` for CG).
        num_batches: mini-batches of D_r per pass.
        model_evaluations: forward runs of the model on a D_r mini-batch (each vectorised over
            ``num_particles``); a pass over D_r is ``num_batches`` of them.
        hessian_vector_products: Hessian-vector products with H_r (each over all of D_r, except
            LiSSA's, each over one mini-batch).
        seconds: wall time.
    """

    posterior: FrozenPosterior
    step: dict[str, torch.Tensor]
    steps: int
    solver: str
    iterations: list[int] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    gradient_mismatch: float = math.nan
    lissa_scale: float | None = None
    num_batches: int = 0
    model_evaluations: int = 0
    hessian_vector_products: int = 0

    @property
    def guide(self) -> FrozenPosterior:
        """The unlearned posterior (an alias of :attr:`posterior`)."""
        return self.posterior


# -- the steps ------------------------------------------------------------------------------------
def _positive(name: str, value: Any) -> float:
    if not check_nonnegative(name, value) > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


def _check_settings(
    num_particles: Any,
    antithetic: bool,
    steps: Any,
    solver: str,
    damping: Any,
    cg_tol: Any,
    cg_max_iter: Any,
    lissa_scale: Any,
    lissa_depth: Any,
) -> tuple[int, int, HessianSolver]:
    """Validate the settings; return ``(num_particles, steps, solver)``."""
    num_particles = check_positive_int("num_particles", num_particles)
    steps = check_positive_int("steps", steps)
    lissa_depth = check_positive_int("lissa_depth", lissa_depth)
    if antithetic and num_particles % 2:
        raise ValueError(
            f"antithetic=True pairs particles: num_particles must be even, got {num_particles}"
        )
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    damping = check_nonnegative("damping", damping)
    if cg_max_iter is not None:
        cg_max_iter = check_positive_int("cg_max_iter", cg_max_iter)
    if cg_tol is not None:
        cg_tol = _positive("cg_tol", cg_tol)
    if lissa_scale is not None:
        lissa_scale = _positive("lissa_scale", lissa_scale)
    solve = HessianSolver(solver, damping, cg_tol, cg_max_iter, lissa_scale, lissa_depth)
    return num_particles, steps, solve


@dataclass
class _Progress:
    """The running totals of the Newton steps."""

    total: torch.Tensor
    products: int = 0
    num_batches: int = 0
    mismatch: float = math.nan


def _newton_steps(
    objective: InfluenceObjective,
    solve: HessianSolver,
    steps: int,
    seed: int,
    retain_graph: bool,
    bar: tqdm,
) -> _Progress:
    """BIF's step γ ← γ + H_r⁻¹ ∇h(γ_D), then ``steps − 1`` Newton steps on F_r, each with ε
    fixed by its own seed; γ is updated in place."""
    params = objective.params
    done = _Progress(torch.zeros(params.size, dtype=params.dtype, device=params.device))
    for k in range(1, steps + 1):
        hessian = objective.hessian(seed + k, solve.damping, retain_graph)
        if k == 1:  # BIF: b = ∇h(γ_D), which equals −∇F_r(γ_D) at a trained γ_D
            b = objective.erased_gradient(seed + k)
            norm_b = float(torch.linalg.vector_norm(b))
            if norm_b > 0:
                done.mismatch = float(torch.linalg.vector_norm(hessian.gradient + b)) / norm_b
        else:  # Newton on F_r
            b = -hessian.gradient
        delta = solve(hessian, b, k, bar)
        done.products += hessian.products
        done.num_batches = hessian.num_batches
        del hessian  # frees the double-backprop graphs
        params.add_(delta)
        done.total += delta
    return done


def _unlearn(
    model: Callable,
    guide: Callable | FrozenPosterior,
    batches: Iterable,
    erased_args: tuple,
    kwargs: dict,
    settings: dict[str, Any],
    solve: HessianSolver,
) -> tuple[GuideParameters, InfluenceObjective, _Progress, FrozenPosterior]:
    """The Newton steps on an independent copy of the guide, in a private param store."""
    params = GuideParameters(guide, erased_args, kwargs)
    with (
        params.context(),
        torch.enable_grad(),
        tqdm(
            desc="BIF Hessian-vector products", disable=not settings["progress"], leave=False
        ) as bar,
    ):
        objective = InfluenceObjective(
            model,
            params,
            batches,
            erased_args,
            kwargs,
            settings["erased"],
            settings["plate"],
            settings["num_particles"],
            settings["antithetic"],
        )
        done = _newton_steps(
            objective, solve, settings["steps"], settings["seed"], settings["retain_graph"], bar
        )
        unlearned = freeze(params.guide, *erased_args, **kwargs)
    return params, objective, done, unlearned


# -- the public function ---------------------------------------------------------------------------
def influence_unlearn(
    model: Callable,
    guide: Callable | FrozenPosterior,
    *args,
    remaining: tuple | Iterable[tuple],
    erased: Any = None,
    plate: str | Mapping[str, str] | None = None,
    num_particles: int = 64,
    antithetic: bool = True,
    steps: int = 1,
    solver: str = "cg",
    damping: float = 0.0,
    cg_tol: float | None = None,
    cg_max_iter: int | None = None,
    lissa_scale: float | None = None,
    lissa_depth: int = 1000,
    retain_graph: bool = True,
    seed: int | None = None,
    progress: bool = True,
    diagnose: bool = True,
    diagnose_samples: int = 1000,
    **kwargs,
) -> InfluenceUnlearnResult:
    r"""BIF: forget D_e by Newton steps on the guide's variational parameters γ.

    With F_r(γ) = −ELBO(γ; D_r) and h(γ) = E_q[−log p(D_e|θ)], the full objective is
    −ELBO(γ; D) = F_r(γ) + h(γ); at the trained γ_D, ∇F_r(γ_D) = −∇h(γ_D), so one Newton step on
    F_r from γ_D is the influence-function update

    .. math:: γ_r ≈ γ_D + H_r^{-1} ∇_γ h(γ_D), \qquad H_r = ∇^2_γ F_r(γ_D).

    γ is every parameter the guide reads from the param store (AutoNormal, AutoDiagonalNormal,
    AutoMultivariateNormal, a hand-written guide using ``pyro.param``, ...), in the store's
    unconstrained space. F_r and h are Monte Carlo estimates over ``num_particles`` vectorised
    θ(γ, ε) with common random numbers: ε is fixed for a whole Newton step (gradient and every
    Hessian-vector product), so H_r is one symmetric matrix; ``antithetic`` pairs ε with −ε (for
    Gaussian guide sites), which makes every term linear in ε vanish: for a Gaussian guide at the
    ELBO optimum of a linear-Gaussian model the mean update is then exact. H_r⁻¹v comes from
    Hessian-vector products (double backprop) by conjugate gradients or the LiSSA recursion,
    never a dense inverse. Further ``steps`` are plain Newton steps on F_r,
    γ ← γ − H_r⁻¹ ∇F_r(γ), each with a fresh ε: they repair what BIF's premise gets wrong when
    q(θ|D) was not trained to convergence (``gradient_mismatch``), but they also move the scale
    parameters to the minimiser of that step's sample-average −ELBO, O(1/√num_particles) off;
    raise ``num_particles`` with them.

    Cost, against :class:`~pyro_unlearn.Trace_EUBO` and :class:`~pyro_unlearn.ReverseKL`, which
    read only D_e and q(θ|D): each Newton step runs the model once on every mini-batch of D_r
    and takes one backward pass over D_r per Hessian-vector product (CG: at most about the
    number of parameters, often far fewer). Its cost grows with ``|D_r|`` and the parameter count,
    theirs with ``|D_e|`` × the number of SVI steps; in exchange one BIF step is near exact when
    −ELBO is near quadratic in γ. The input guide and its param-store entries are never
    modified, also when the call fails (e.g. on an indefinite H_r): BIF works on an independent
    copy, returned frozen. The options, D_e and D_r (a tuple or a sequence of mini-batches, up
    front; other iterables as each mini-batch is read) are checked first; non-finite data are
    named with the argument and the first bad row.

    Then the result is checked without D_r (``diagnose=True``,
    :func:`pyro_unlearn.trust.attach_trust`) against p̃ ∝ q(θ|D)/p(D_e|θ). The verdict is at
    most ``"approximate"`` when a solve missed its tolerance, or when the one BIF step is
    first-order in erased data that are influential (the PSIS k̂ of 1/p(D_e|θ) under q(θ|D)
    ≥ 0.5, as PSIS-LOO flags them); ``None`` for a model the diagnostics cannot take.

    Arguments:
        model: the Pyro model.
        guide: the guide trained on D (a live guide, or the :class:`~pyro_unlearn.FrozenPosterior`
            q(θ|D) of a lazy, from-the-original request).
        *args, **kwargs: D_e as the model takes it, as for the SVI losses: the erased data
            alone (``erased=None``) or the full data with the ``erased`` rows of ``plate``;
            ``kwargs`` go to every call of the model and guide.
        remaining: D_r as the model's arguments: one tuple, or a re-iterable of mini-batch
            tuples on which the model scales its data plate as in mini-batch SVI
            (``pyro.plate("data", size=len(D_r), subsample=idx)``); mini-batches are weighted by
            their share of D_r, so a partition of D_r gives F_r exactly.
        erased: the erased rows of ``plate`` (``None``: ``*args`` are D_e alone).
        plate: the data plate's name (or a mapping of observed site to plate name).
        num_particles: the particles θ_s of the Monte Carlo estimates (even if ``antithetic``).
        antithetic: pair particle s + S/2 with particle s, ε ↦ −ε.
        steps: Newton steps: the BIF step, then ``steps − 1`` Newton steps on F_r.
        solver: ``"cg"`` (conjugate gradients) or ``"lissa"``.
        damping: δ ≥ 0: solve with H_r + δI (overparameterised or flow guides need it; an
            indefinite H_r + δI raises :class:`IndefiniteHessianError`).
        cg_tol: CG's tolerance on ‖(H_r + δI)x − b‖ / ‖b‖ (default √eps of the dtype).
        cg_max_iter: CG's most iterations (default twice the number of parameters).
        lissa_scale: LiSSA's scale, above half of H_r's largest eigenvalue (default 1.1 × a
            20-step power-iteration estimate).
        lissa_depth: LiSSA's recursions, one mini-batch's Hessian-vector product each.
        retain_graph: keep the double-backprop graphs of all of D_r for a Newton step's products
            (memory); ``False`` re-runs the model per product instead.
        seed: the seed of the Monte Carlo noise (drawn if ``None``); the caller's RNG state is
            left as it was.
        progress: show a progress bar.
        diagnose: attach the trust diagnostics and verdict to the result.
        diagnose_samples: draws from each of the result and q(θ|D) for them (at least
            :data:`pyro_unlearn.trust.MIN_SAMPLES`).

    Returns:
        An :class:`InfluenceUnlearnResult`: ``posterior`` (the unlearned guide, frozen), the
        total ``step`` γ − γ_D by param-store name, the solver's diagnostics; ``verdict``,
        ``trust`` and ``summary()``.

    Raises:
        IndefiniteHessianError: when H_r + δI is not positive definite at γ.

    References:
        S. Fu, F. He, Y. Xu, D. Tao. Bayesian Inference Forgetting. 2021.

        P. W. Koh, P. Liang. Understanding Black-box Predictions via Influence Functions.
        ICML 2017.

        A. Vehtari, A. Gelman, J. Gabry. Practical Bayesian Model Evaluation Using
        Leave-One-Out Cross-Validation and WAIC. Statistics and Computing 27, 2017.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def guide(y):  # q(θ|D) = p(µ|D) = N(1, 1/3) for D = {1, 2}
        ...     loc = pyro.param("loc", torch.tensor(1.0, dtype=y.dtype))
        ...     scale = pyro.param("scale", torch.tensor(3.0, dtype=y.dtype) ** -0.5,
        ...                        constraint=dist.constraints.positive)
        ...     pyro.sample("mu", dist.Normal(loc, scale))
        >>> y = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> guide(y)
        >>> result = influence_unlearn(model, guide, y[1:], remaining=(y[:1],), progress=False)
        >>> round(float(result.step["loc"]), 6)  # p(µ|D_r) = N(1/2, 1/2): the mean is exact
        -0.5
        >>> result.converged, pyro.param("loc").item()  # the live guide is untouched
        (True, 1.0)
    """
    from ..trust import attach_trust, check_diagnose_options  # trust imports this package

    start = time.perf_counter()
    diagnose_samples = check_diagnose_options(diagnose, diagnose_samples)
    num_particles, steps, solve = _check_settings(
        num_particles,
        antithetic,
        steps,
        solver,
        damping,
        cg_tol,
        cg_max_iter,
        lissa_scale,
        lissa_depth,
    )
    batches = remaining_batches(remaining)
    if not args and not kwargs:
        raise ValueError("pass D_e: the model's arguments for the erased data (*args)")
    check_finite_data(args, kwargs)
    problem = None  # an untrained guide is refused below, by name: probe a private store
    if not isinstance(guide, AutoGuide) or guide.prototype_trace is not None:
        with ParamSnapshot.of_store(clone=False).active():
            problem = vectorization_problem(model, guide, args, kwargs, 2)
    if problem is not None:
        raise ValueError(
            f"influence_unlearn draws θ in a pyro.plate of particles, which the model cannot "
            f"take: {problem}; laplace_unlearn or forget (by torch.func.vmap) run such a model"
        )
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    seed = check_nonnegative_int("seed", seed)
    settings = dict(
        erased=erased,
        plate=plate,
        num_particles=num_particles,
        antithetic=antithetic,
        steps=steps,
        seed=seed,
        retain_graph=retain_graph,
        progress=progress,
    )
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):  # seeded draws; the user's RNG stays as it was
        torch.manual_seed(seed)
        params, objective, done, unlearned = _unlearn(
            model, guide, batches, args, kwargs, settings, solve
        )
    result = InfluenceUnlearnResult(
        posterior=unlearned,
        step=dict(zip(params.names, (d.clone() for d in params.split(done.total)), strict=True)),
        steps=steps,
        solver=solver,
        iterations=solve.iterations,
        residuals=solve.residuals,
        converged=solve.converged,
        gradient_mismatch=done.mismatch,
        lissa_scale=solve.lissa_scale,
        num_batches=done.num_batches,
        model_evaluations=objective.evaluations,
        hessian_vector_products=done.products,
        seconds=time.perf_counter() - start,
    )
    if not diagnose:
        result.explanation = "not diagnosed: influence_unlearn(..., diagnose=False)"
        return result
    return attach_trust(
        result,
        model,
        guide,
        args,
        kwargs,
        erased=erased,
        plate=plate,
        num_samples=diagnose_samples,
        vmap=True,  # a model that cannot take the particle plate (a PyroModule) is run by vmap
        caveats=lambda trust: _caveats(result, trust),
    )


def _caveats(result: InfluenceUnlearnResult, trust: TrustDiagnostics) -> Caveats:
    """What BIF cannot vouch for: a missed solve, one first-order step on influential data."""
    from ..trust import GOOD_PARETO_K, Caveats

    approximate = []
    if not result.converged:
        worst = max(result.residuals, default=math.nan)
        approximate.append(f"a Hessian solve missed its tolerance (residual {worst:.2g})")
    if result.steps == 1 and not trust.update_pareto_k < GOOD_PARETO_K:
        approximate.append(
            f"BIF's one step is first-order in the erased data, which are influential here "
            f"(k̂ of 1/p(D_e|θ) under q(θ|D) = {trust.update_pareto_k:.2f} ≥ {GOOD_PARETO_K}); "
            "more steps, or forget, may do better"
        )
    return Caveats(approximate=approximate)
