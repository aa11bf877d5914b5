"""1-D sine regression with a Bayesian neural network: Laplace (L-BUN) against variational (EUBO,
rKL) unlearning (Rawat et al. 2022, the L-BUN paper: Sec. 3, Figs. 1–2).

300 noisy points of y = sin(4x) on [−1, 1] (σ = 0.1); the 200 central points are deleted, so
D_r is two clusters of 50 with a gap between them. The network (:class:`SineNet`) has one hidden
layer of 50 tanh units, a zero-mean N(0, 1) prior on every weight and the known noise 0.1; all
posteriors are diagonal Gaussians (``AutoDiagonalNormal``), as in the paper:

* **Laplace** on D and on D_r (:func:`laplace_posterior`): the MAP by L-BFGS from a seeded
  random start, and the precision 1/s² + diag H of −log p(D|θ) at the MAP, H the Hessian
  (``"diag"``, from Hessian-vector products) or the generalised Gauss–Newton (``"ggn_diag"``).
  Unlearned by L-BUN, ``pu.laplace_unlearn``, over a λ_L sweep.
* **Mean-field VI** on D and on D_r (:func:`vi_posterior`): ``Trace_ELBO`` from the Laplace MAP
  of the same data, a small initial scale. Unlearned by ``pu.forget`` with the EUBO and the rKL
  ("V-BUN") over a λ sweep, each run from q(θ|D).

The metric compares each posterior's predictive with the one *retrained* on D_r by the same
inference scheme. Predictives are Gaussians N(m(x), v(x)): for Laplace the linearised (GLM)
predictive (Monte-Carlo draws from a diagonal Laplace posterior of a network put a predictive sd
of 2–3 everywhere on this data: useless), for VI moment-matched Monte-Carlo network draws, each
plus the noise variance; ``kl_gap`` is the mean of KL[retrained ‖ unlearned]
over the test grid inside the gap (the deleted region), ``rmse_gap`` the RMS difference of the
means there, and ``kl_remaining`` the mean KL at D_r's inputs. Membership inference
(:func:`~pyro_unlearn.metrics.membership_attack`, not in the paper): the per-point predictive
NLL of D_e against the 200 central points of an independent draw (the same region), ``mia_*``
columns; 0.5 is chance.

References:
    A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of Bayesian
    Unlearning. ICML 2022 Workshop on Updatable Machine Learning (arXiv:2207.03227).

    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, init_to_value
from pyro.nn import PyroModule, PyroSample
from torch.distributions import Normal, kl_divergence
from tqdm import tqdm

import pyro_unlearn as pu
from pyro_unlearn.exact import NotNormalizableError
from pyro_unlearn.guides import LatentLayout, latent_layout, read_gaussian, write_gaussian
from pyro_unlearn.infer.curvature import ErasedLogLikelihood
from pyro_unlearn.metrics import MembershipAttack, membership_attack

from . import json_safe, trust_columns
from .datasets import SineData, sine

__all__ = [
    "LAPLACE_LAMBDAS",
    "QUICK",
    "VI_LAMBDAS",
    "SineNet",
    "curve_key",
    "laplace_posterior",
    "linearized_moments",
    "map_estimate",
    "plot_predictives",
    "predictive_moments",
    "run",
    "vi_posterior",
]

#: λ_L of L-BUN: the weight of log q(θ|D) in the search for θ*. Below ~30 the objective has no
#: maximum on this network (the diagonal Λ_D is outweighed by the erased data's correlated
#: curvature) or Λ̃ is not positive definite: the sweep shows where it breaks.
LAPLACE_LAMBDAS = (100.0, 30.0, 10.0, 1.0)
#: λ of the EUBO and rKL (the adjusted likelihood's threshold).
VI_LAMBDAS = (1e-3, 1e-9, 0.0)
#: The membership-inference columns of every row (``MembershipAttack.columns``).
MIA_COLUMNS = MembershipAttack.column_names()
#: Settings of ``--quick`` and of the tutorial's smoke mode.
QUICK = dict(
    curvatures=("ggn_diag",),
    laplace_lambdas=(100.0, 1.0),
    vi_lambdas=(1e-9, 0.0),
    map_steps=500,
    lbun_steps=100,
    vi_steps=300,
    unlearn_steps=150,
    num_particles=8,
    rkl_particles=64,
    num_samples=200,
    diagnose_samples=300,
)


class SineNet(PyroModule):
    """f(x) = w₂ᵀ tanh(W₁ x + b₁) + b₂, every weight ~ N(0, ``prior_scale``²), and
    y ~ N(f(x), ``noise_scale``²) in the plate ``"data"``.

    The latents ``w1`` (H, 1), ``b1`` (H,), ``w2`` (H,), ``b2`` () may carry batch dimensions
    on their left, ending in the data plate's slot (Pyro's vectorised particles: (S, 1)), and
    the forward pass broadcasts over them. The prior
    follows the module's device and dtype (a buffer), so ``SineNet().to(device)`` is all.

    Example::

        >>> net = SineNet(hidden=3)
        >>> with pyro.poutine.trace() as tr:
        ...     f = net(torch.zeros(5, 1))
        >>> f.shape, tr.trace.nodes["w1"]["value"].shape
        (torch.Size([5]), torch.Size([3, 1]))
    """

    def __init__(self, hidden: int = 50, prior_scale: float = 1.0, noise_scale: float = 0.1):
        super().__init__()
        self.hidden, self.prior_scale, self.noise_scale = hidden, prior_scale, noise_scale
        self.register_buffer("zero", torch.zeros(()))
        self.w1 = PyroSample(lambda net: net._prior(net.hidden, 1))
        self.b1 = PyroSample(lambda net: net._prior(net.hidden))
        self.w2 = PyroSample(lambda net: net._prior(net.hidden))
        self.b2 = PyroSample(lambda net: net._prior())

    def _prior(self, *shape: int) -> dist.Distribution:
        return dist.Normal(self.zero, self.prior_scale).expand(shape).to_event(len(shape))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w1, b1, w2, b2 = self.w1, self.b1, self.w2, self.b2
        # Pyro's convention: the latents' batch dims end with a slot (size 1) for each plate
        # inside, so the data dim of x (N, 1, D) lines up with the latents' rightmost one.
        h = torch.tanh((x.unsqueeze(-2) * w1).sum(-1) + b1)  # (..., N, H)
        f = (h * w2).sum(-1) + b2  # (..., N)
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("y", dist.Normal(f, self.noise_scale), obs=y)
        return f


# -- posteriors on D and on D_r ------------------------------------------------------------------
def map_estimate(
    net: SineNet, x: torch.Tensor, y: torch.Tensor, steps: int = 1000, seed: int = 0
) -> torch.Tensor:
    """θ_MAP (flat, unconstrained: the AutoDiagonalNormal layout) by L-BFGS on
    −log p(y|θ) − log p(θ) from θ₀ ~ N(0, 1) (seeded)."""
    layout, loc = _layout(net, x, y)
    loglik = ErasedLogLikelihood(net, layout, x, y)  # erased=None: all of (x, y)
    prior_precision = net.prior_scale**-2
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(loc.shape, generator=g, dtype=torch.float64)
    theta = theta.to(loc).requires_grad_(True)
    optim = torch.optim.LBFGS(
        [theta], max_iter=steps, tolerance_grad=1e-7, history_size=50, line_search_fn="strong_wolfe"
    )

    def closure():
        with torch.no_grad():
            value, gradient = loglik.value_and_grad(theta.detach())
        theta.grad = prior_precision * theta.detach() - gradient
        return 0.5 * prior_precision * theta.detach().square().sum() - value

    optim.step(closure)
    return theta.detach()


def laplace_posterior(
    net: SineNet,
    x: torch.Tensor,
    y: torch.Tensor,
    curvature: str = "ggn_diag",
    theta_map: torch.Tensor | None = None,
    steps: int = 1000,
    seed: int = 0,
) -> AutoDiagonalNormal:
    """A diagonal Laplace approximation N(θ_MAP, diag(1/s² + h)⁻¹) of p(θ|x, y), h the diagonal
    of the Hessian (``"diag"``, from Hessian-vector products) or of the generalised Gauss–Newton
    (``"ggn_diag"``) of −log p(y|θ) at θ_MAP (:func:`map_estimate` unless ``theta_map`` is
    given); neither forms a P×P matrix. The guide holds its parameters as buffers (as Pyro's
    ``laplace_approximation()`` does), so it never touches the param store.

    Example::

        >>> from pyro_unlearn.experiments.datasets import sine
        >>> data, net = sine(num_data=20, num_erased=10), SineNet(hidden=4)
        >>> guide = laplace_posterior(net, data.x, data.y, "ggn_diag", steps=50)
        >>> guide.loc.shape, bool((guide.scale > 0).all())
        (torch.Size([13]), True)
    """
    if curvature not in ("diag", "ggn_diag"):
        raise ValueError(f"curvature must be 'diag' or 'ggn_diag', got {curvature!r}")
    layout, _ = _layout(net, x, y)
    theta = map_estimate(net, x, y, steps, seed) if theta_map is None else theta_map
    loglik = ErasedLogLikelihood(net, layout, x, y)  # erased=None: all of (x, y)
    with torch.no_grad():
        h = loglik.curvature(theta, curvature)  # of −log p(y|θ), diagonal
        precision = net.prior_scale**-2 + h
        if not bool((precision > 0).all()):
            raise NotNormalizableError(
                f"the Laplace precision has {int((precision <= 0).sum())} non-positive entries "
                f"at θ_MAP (curvature={curvature!r}): the MAP search did not reach a minimum; "
                "use curvature='ggn_diag', which is positive by construction"
            )
        guide = AutoDiagonalNormal(net)
        guide._setup_prototype(x, y)  # Pyro's set-up, without reading the parameters
        return write_gaussian(guide, theta, scale=precision.rsqrt(), buffers=True)


def vi_posterior(
    net: SineNet,
    x: torch.Tensor,
    y: torch.Tensor,
    init: torch.Tensor,
    steps: int = 4000,
    lr: float = 0.01,
    num_particles: int = 16,
    init_scale: float = 0.01,
    progress: bool = False,
    desc: str = "VI",
) -> AutoDiagonalNormal:
    """Mean-field VI: an ``AutoDiagonalNormal`` trained by ``Trace_ELBO`` (vectorised particles,
    ClippedAdam with the learning rate decaying tenfold), its mean started at ``init`` (flat θ,
    e.g. the Laplace MAP of the same data)."""
    layout, _ = _layout(net, x, y)
    guide = AutoDiagonalNormal(
        net, init_loc_fn=init_to_value(values=layout.values(init)), init_scale=init_scale
    )
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(net, guide, optim, elbo)
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        svi.step(x, y)
    return guide


def _layout(net: SineNet, x: torch.Tensor, y: torch.Tensor) -> tuple[LatentLayout, torch.Tensor]:
    """The flat unconstrained layout of ``net``'s latents and an untrained AutoDiagonalNormal's
    loc (its dtype and device), read in a scope of its own: its parameters never reach the
    param store."""
    with pyro.get_param_store().scope():
        guide = AutoDiagonalNormal(net)
        guide._setup_prototype(x, y)
        return latent_layout(guide), read_gaussian(guide, diagonal=True)[0]


# -- predictives and their comparison -----------------------------------------------------------
def predictive_moments(
    net: SineNet, guide, x: torch.Tensor, num_samples: int = 1000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the Monte-Carlo predictive p(y|x) = E_q N(y | f_θ(x), σ²):
    ``num_samples`` draws of θ ~ q through the network at once (a vectorised particle plate),
    moment-matched. The predictive of VI."""
    with torch.no_grad(), pyro.plate("samples", num_samples, dim=-2):
        pyro.set_rng_seed(seed)
        trace = pyro.poutine.trace(guide).get_trace(x)
        f = pyro.poutine.replay(net, trace=trace)(x)  # (S, N)
    return f.mean(0), f.var(0) + net.noise_scale**2


def linearized_moments(net: SineNet, guide: AutoDiagonalNormal, x: torch.Tensor):
    """Mean and variance of the linearised (GLM) predictive of a Laplace posterior N(μ, diag s²):
    f(x) ≈ f_μ(x) + J(x)(θ − μ), so N(f_μ(x), Σ_p J_p(x)² s_p² + σ²), J by ``torch.func.jacrev``.
    The predictive a Laplace approximation is meant for (Immer et al., 2021): Monte-Carlo
    draws from a diagonal Laplace posterior of a network underfit badly."""
    dummy = x.new_zeros(x.shape[-2])  # observed, so that f draws no random numbers
    layout, _ = _layout(net, x, dummy)

    def f(theta):
        return pyro.poutine.condition(net, data=layout.values(theta))(x, dummy)

    with torch.no_grad(), pyro.validation_enabled(False):
        loc, scale = guide.loc.detach(), guide.scale.detach()
        mean, jacobian = f(loc), torch.func.jacrev(f)(loc)  # (N,), (N, P)
    return mean, (jacobian * scale).square().sum(-1) + net.noise_scale**2


def _compare(moments, reference, gap_mask, n_grid, n_keep) -> dict[str, float]:
    m, v = moments
    m_r, v_r = reference
    kl = kl_divergence(Normal(m_r, v_r.sqrt()), Normal(m, v.sqrt()))
    grid, train = kl[:n_grid], kl[n_grid : n_grid + n_keep]
    return {
        "kl_gap": float(grid[gap_mask].mean()),
        "rmse_gap": float((m - m_r)[:n_grid][gap_mask].square().mean().sqrt()),
        "kl_remaining": float(train.mean()),
    }


def _lbun(
    net, full, x, y, erased, lam: float, curvature: str, steps: int, diagnose_samples: int
) -> tuple:
    """L-BUN at one λ_L as the study records it: the guide (None on failure) and the outcome,
    ``failed`` (the NotNormalizableError's message), ``repaired`` (a retry with
    ``repair="clip"`` succeeded: a stand-in, not the division), ``warnings`` (their messages,
    e.g. L-BFGS short of a stationary point), ``converged`` and the trust columns
    (:func:`~pyro_unlearn.experiments.trust_columns`, from ``diagnose_samples`` draws)."""
    kwargs = dict(erased=erased, plate="data", retention=lam, curvature=curvature, steps=steps)
    kwargs["diagnose_samples"] = diagnose_samples
    outcome = dict(failed=None, repaired=False, converged=False, warnings=[], **trust_columns())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = pu.laplace_unlearn(net, full, x, y, **kwargs)
        except NotNormalizableError as error:
            outcome["failed"] = str(error)
            try:
                result = pu.laplace_unlearn(net, full, x, y, repair="clip", **kwargs)
            except NotNormalizableError:
                result = None
    outcome["warnings"] = [str(w.message) for w in caught]
    if result is None:
        return None, outcome
    outcome.update(repaired=result.repaired, converged=result.converged, **trust_columns(result))
    return result.guide, outcome


def curve_key(scheme: str, method: str, lam: float | None) -> str:
    """The key of a predictive in ``run(...)["curves"]``: "scheme/method" or "scheme/method/λ"."""
    if lam is None or math.isnan(lam):
        return f"{scheme}/{method}"
    return f"{scheme}/{method}/{lam:g}"


# -- the study ----------------------------------------------------------------------------------
class _Study:
    """The bookkeeping of :func:`run`: where every predictive is evaluated (the test grid, D_r's
    inputs, D_e and the non-members), how it is scored against the retrained one of its scheme
    (:meth:`record`), and the rows and curves so far.

    The non-members of membership inference are the central points of an independent draw of
    the data (seed ``seed + 1``): the region D_e comes from."""

    def __init__(self, net: SineNet, data: SineData, seed: int, num_samples: int):
        x, y, erased, keep = data.x, data.y, data.erased, data.remaining
        self.net, self.seed, self.num_samples = net, seed, num_samples
        lo, hi = data.gap
        grid = data.x_test
        self.gap_mask = (grid[:, 0] >= lo) & (grid[:, 0] <= hi)
        fresh = sine(len(y), len(erased), data.noise_scale, seed=seed + 1, device=x.device)
        outside_x, outside_y = (
            t.to(x.dtype) for t in (fresh.x[fresh.erased], fresh.y[fresh.erased])
        )
        self.inputs = torch.cat([grid, x[keep], x[erased], outside_x])
        self.n_grid, self.n_keep, self.n_erased = len(grid), len(keep), len(erased)
        self.targets = torch.cat([y[erased], outside_y])
        self.rows: list[dict] = []
        self.curves: dict[str, dict[str, list[float]]] = {}

    def predict(self, scheme: str, guide) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictive's (mean, variance) at every input: Monte Carlo for VI, the linearised
        predictive for Laplace."""
        if scheme == "vi":
            return predictive_moments(self.net, guide, self.inputs, self.num_samples, self.seed)
        return linearized_moments(self.net, guide, self.inputs)

    def record(
        self,
        scheme: str,
        method: str,
        lam: float,
        guide,
        reference: tuple[torch.Tensor, torch.Tensor],
        seconds: float,
        failed: str | None = None,
        moments: tuple[torch.Tensor, torch.Tensor] | None = None,
        **extra,
    ) -> dict:
        """Add the row of one posterior (``guide``; None: a failed run, NaN metrics) compared
        with the retrained predictive ``reference``, and its curve on the test grid; the trust
        columns are ``extra``'s, else not diagnosed (``full``, ``retrained``)."""
        row = dict(scheme=scheme, method=method, lam=lam, seconds=seconds, failed=failed)
        row.update(trust_columns(), **extra)
        if guide is None:
            row.update(kl_gap=math.nan, rmse_gap=math.nan, kl_remaining=math.nan)
            row.update(dict.fromkeys(MIA_COLUMNS, math.nan))
        else:
            moments = self.predict(scheme, guide) if moments is None else moments
            n_grid, n_keep, n_erased = self.n_grid, self.n_keep, self.n_erased
            row.update(_compare(moments, reference, self.gap_mask, n_grid, n_keep))
            m, v = (t[n_grid + n_keep :] for t in moments)
            losses = -Normal(m, v.sqrt()).log_prob(self.targets)
            attack = membership_attack(losses[:n_erased], losses[n_erased:], seed=self.seed)
            row.update(attack.columns("mia"))
            m, v = (t[:n_grid] for t in moments)
            self.curves[curve_key(scheme, method, lam)] = {
                "mean": m.tolist(),
                "sd": v.sqrt().tolist(),
            }
        self.rows.append(row)
        return row


def _timed(fit, *args, **kwargs) -> tuple:
    """``fit(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    result = fit(*args, **kwargs)
    return result, time.perf_counter() - start


def _maps(net: SineNet, data: SineData, steps: int, seed: int) -> tuple[dict, dict]:
    """Step 1: θ_MAP on D and on D_r (:func:`map_estimate`), and the seconds each took."""
    keep = data.remaining
    theta, seconds = {}, {}
    theta["D"], seconds["D"] = _timed(map_estimate, net, data.x, data.y, steps, seed)
    theta["D_r"], seconds["D_r"] = _timed(
        map_estimate, net, data.x[keep], data.y[keep], steps, seed
    )
    return theta, seconds


def _laplace_scheme(
    study: _Study,
    data: SineData,
    maps: tuple[dict, dict],
    curvature: str,
    lambdas: Sequence[float],
    lbun_steps: int,
    diagnose_samples: int,
    bar: tqdm,
) -> None:
    """Laplace with one curvature: fit on D and on D_r from the MAPs (step 2), unlearn D_e by
    L-BUN at every λ_L (step 3), each recorded against the retrained predictive (step 4)."""
    net, scheme = study.net, f"laplace-{curvature}"
    x, y, erased, keep = data.x, data.y, data.erased, data.remaining
    theta, map_seconds = maps
    full, t_full = _timed(laplace_posterior, net, x, y, curvature, theta["D"])
    bar.update()
    ret, t_ret = _timed(laplace_posterior, net, x[keep], y[keep], curvature, theta["D_r"])
    bar.update()
    reference = study.predict(scheme, ret)
    study.record(
        scheme, "retrained", math.nan, ret, reference, t_ret + map_seconds["D_r"], moments=reference
    )
    study.record(scheme, "full", math.nan, full, reference, t_full + map_seconds["D"])
    for lam in lambdas:
        (guide, outcome), seconds = _timed(
            _lbun, net, full, x, y, erased, lam, curvature, lbun_steps, diagnose_samples
        )
        study.record(scheme, "lbun", lam, guide, reference, seconds, **outcome)
        bar.update()


def _vi_fits(
    study: _Study,
    data: SineData,
    theta: dict,
    *,
    steps: int,
    num_particles: int,
    seed: int,
    progress: bool,
    bar: tqdm,
) -> tuple[AutoDiagonalNormal, tuple[torch.Tensor, torch.Tensor]]:
    """Mean-field VI on D_r (in a param store of its own) and on D, each started at the Laplace
    MAP of the same data (step 2); returns q(θ|D) and the retrained predictive."""
    x, y, keep, net = data.x, data.y, data.remaining, study.net
    pyro.clear_param_store()
    with pyro.get_param_store().scope():  # the retrained guide's params stay apart
        pyro.set_rng_seed(seed)
        ret, t_ret = _timed(
            vi_posterior, net, x[keep], y[keep], theta["D_r"], steps,
            num_particles=num_particles, progress=progress, desc="VI on D_r",
        )  # fmt: skip
        bar.update()
        reference = study.predict("vi", ret)
        study.record("vi", "retrained", math.nan, ret, reference, t_ret, moments=reference)
    pyro.set_rng_seed(seed)
    full, t_full = _timed(
        vi_posterior, net, x, y, theta["D"], steps,
        num_particles=num_particles, progress=progress, desc="VI on D",
    )  # fmt: skip
    bar.update()
    study.record("vi", "full", math.nan, full, reference, t_full)
    return full, reference


def _vi_unlearn(
    study: _Study,
    data: SineData,
    full: AutoDiagonalNormal,
    reference: tuple[torch.Tensor, torch.Tensor],
    *,
    lambdas: Sequence[float],
    steps: int,
    num_particles: int,
    rkl_particles: int,
    lr: float,
    seed: int,
    diagnose_samples: int,
    bar: tqdm,
) -> None:
    """Unlearn D_e from q(θ|D) with the EUBO and the rKL at every λ, each from q(θ|D) (step 3),
    recorded against the retrained predictive (step 4) with its trust columns."""
    x, y, erased, net = data.x, data.y, data.erased, study.net
    posterior = pu.freeze(full, x, y)
    for method in ("eubo", "rkl"):
        for lam in lambdas:
            pyro.set_rng_seed(seed)
            with warnings.catch_warnings():  # the paper's rKL may collapse here: as published
                warnings.simplefilter("ignore", pu.WeightCollapseWarning)
                # the paper's λ grid, as published: at M = 151 weights a λ > 0 keeps almost none
                # of q(θ|D)'s mass (the rows show nothing moved, and the verdict says so)
                warnings.simplefilter("ignore", pu.SmallKeptMassWarning)
                result = pu.forget(
                    net, full, x, y, erased=erased, plate="data", method=method, lam=lam,
                    posterior=posterior, lr=lr, num_steps=steps, window=steps,
                    num_particles=num_particles if method == "eubo" else rkl_particles,
                    progress=False, max_plate_nesting=1, diagnose_samples=diagnose_samples,
                )  # fmt: skip
            study.record(
                "vi", method, lam, full, reference, result.seconds, **trust_columns(result)
            )
            bar.update()
    posterior.restore(full)


def _report(study: _Study, data: SineData, settings: dict) -> dict:
    """Step 5: the result of :func:`run` (NaN as None: strict JSON)."""
    x, y, erased, net = data.x, data.y, data.erased, study.net
    return {
        "rows": [{k: json_safe(v) for k, v in row.items()} for row in study.rows],
        "curves": study.curves,
        "data": {
            "x": x[:, 0].tolist(),
            "y": y.tolist(),
            "erased": erased.tolist(),
            "grid": data.x_test[:, 0].tolist(),
            "gap": list(data.gap),
        },
        "settings": {
            "num_data": len(y),
            "num_erased": len(erased),
            "hidden": net.hidden,
            "prior_scale": net.prior_scale,
            "noise_scale": net.noise_scale,
            **settings,
            "device": str(x.device),
            "dtype": str(x.dtype),
        },
    }


def run(
    *,
    data: SineData | None = None,
    laplace_lambdas: Sequence[float] = LAPLACE_LAMBDAS,
    vi_lambdas: Sequence[float] = VI_LAMBDAS,
    curvatures: Sequence[str] = ("diag", "ggn_diag"),
    map_steps: int = 1000,
    lbun_steps: int = 200,
    vi: bool = True,
    vi_steps: int = 4000,
    unlearn_steps: int = 1000,
    num_particles: int = 16,
    rkl_particles: int = 256,
    lr: float = 0.005,
    num_samples: int = 1000,
    diagnose_samples: int = 1000,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Fit Laplace (each curvature) and mean-field VI on D and on D_r, unlearn D_e with L-BUN
    over ``laplace_lambdas`` and with the EUBO and rKL over ``vi_lambdas``, and compare every
    predictive with the retrained one of its scheme.

    The steps: the MAPs on D and on D_r; per scheme, the posteriors on D and on D_r, the
    unlearning runs, and each posterior's row; the report.

    Returns ``{"rows": [...], "curves": {...}, "data": {...}, "settings": {...}}``: per row the
    ``scheme`` ("laplace-diag", "laplace-ggn_diag", "vi"), ``method`` ("full", "retrained",
    "lbun", "eubo", "rkl"), ``lam``, ``kl_gap``, ``rmse_gap``, ``kl_remaining``, ``seconds``,
    ``failed`` (the error's message, or None), for L-BUN ``repaired``, and the trust check of
    every unlearned posterior, judged without D_r from ``diagnose_samples`` draws
    (:data:`~pyro_unlearn.experiments.TRUST_COLUMNS`: ``verdict``, ``pareto_k``,
    ``kl_to_target``; None for ``full``, ``retrained`` and failed runs); ``curves`` holds
    each row's predictive mean and sd on the test grid, keyed by :func:`curve_key`. NaN
    (no λ, or no number for a failed run) is ``None``, so the result is strict JSON.

    References:
        A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of Bayesian
        Unlearning. ICML 2022 Workshop on Updatable Machine Learning (arXiv:2207.03227).

        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example (not run: minutes on a CPU)::

        results = run(**QUICK)
        [(r["scheme"], r["method"], r["lam"], r["kl_gap"]) for r in results["rows"]]
    """
    data = data or sine(seed=seed, device=device)
    net = SineNet(noise_scale=data.noise_scale).to(device=data.x.device, dtype=data.x.dtype)
    study = _Study(net, data, seed, num_samples)
    bar = tqdm(
        total=len(curvatures) * (2 + len(laplace_lambdas)) + vi * (2 + 2 * len(vi_lambdas)),
        desc="sine study",
        disable=not progress,
    )
    maps = _maps(net, data, map_steps, seed)
    for curvature in curvatures:
        _laplace_scheme(
            study, data, maps, curvature, laplace_lambdas, lbun_steps, diagnose_samples, bar
        )
    if vi:  # mean-field VI, started at the Laplace MAP of the same data
        full, reference = _vi_fits(
            study, data, maps[0], steps=vi_steps, num_particles=num_particles, seed=seed,
            progress=progress, bar=bar,
        )  # fmt: skip
        _vi_unlearn(
            study, data, full, reference, lambdas=vi_lambdas, steps=unlearn_steps,
            num_particles=num_particles, rkl_particles=rkl_particles, lr=lr, seed=seed,
            diagnose_samples=diagnose_samples, bar=bar,
        )  # fmt: skip
    bar.close()
    settings = dict(
        map_steps=map_steps, vi_steps=vi_steps, unlearn_steps=unlearn_steps,
        num_particles=num_particles, lr=lr, num_samples=num_samples, seed=seed,
        diagnose_samples=diagnose_samples,
    )  # fmt: skip
    return _report(study, data, settings)


def plot_predictives(
    results: dict, scheme: str, methods: Sequence[tuple[str, float]] | None = None
):
    """Predictive mean ± 2 sd on the test grid, one panel per (method, λ) of ``scheme``, with the
    retrained predictive dashed in every panel and D_e in grey."""
    import matplotlib.pyplot as plt

    curves, d = results["curves"], results["data"]
    if methods is None:
        methods = [
            (r["method"], r["lam"])
            for r in results["rows"]
            if r["scheme"] == scheme and r["method"] != "retrained"
        ]
    keys = [curve_key(scheme, m, lam) for m, lam in methods]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), sharey=True, squeeze=False)
    x, y = torch.tensor(d["x"]), torch.tensor(d["y"])
    erased = torch.zeros(len(x), dtype=torch.bool)
    erased[d["erased"]] = True
    grid = d["grid"]
    ref = curves.get(curve_key(scheme, "retrained", None))
    for ax, key, (method, lam) in zip(axes[0], keys, methods, strict=True):
        ax.scatter(x[erased], y[erased], s=4, c="0.75", label="D_e")
        ax.scatter(x[~erased], y[~erased], s=4, c="k", label="D_r")
        if ref is not None:
            m, s = torch.tensor(ref["mean"]), torch.tensor(ref["sd"])
            ax.plot(grid, m, "--", c="tab:orange", lw=1, label="retrained")
            ax.plot(grid, m + 2 * s, ":", c="tab:orange", lw=1)
            ax.plot(grid, m - 2 * s, ":", c="tab:orange", lw=1)
        if key in curves:
            m, s = torch.tensor(curves[key]["mean"]), torch.tensor(curves[key]["sd"])
            ax.plot(grid, m, c="tab:blue", lw=1.5)
            ax.fill_between(grid, m - 2 * s, m + 2 * s, color="tab:blue", alpha=0.25)
        else:
            ax.text(0.5, 0.5, "failed", transform=ax.transAxes, ha="center")
        title = method if lam is None or math.isnan(lam) else f"{method}, λ={lam:g}"
        if (
            method == "lbun"
            and key in curves
            and any(
                r["repaired"] for r in results["rows"] if curve_key(scheme, method, r["lam"]) == key
            )
        ):
            title += " (repaired)"
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-3, 3)
        ax.set_xlabel("x")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"sine, {scheme}: predictive mean ± 2 sd", fontsize=10)
    fig.tight_layout()
    return fig
