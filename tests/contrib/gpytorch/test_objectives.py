"""VariationalEUBO and VariationalReverseKL, the objectives shaped like gpytorch.mlls, against
closed-form targets; the batch shape of a batch GP is kept."""

from __future__ import annotations

import copy

import gpytorch
import pyro
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.contrib import gpytorch as pug
from pyro_unlearn.exact import NotNormalizableError, gaussian_linear_unlearn
from tests.contrib.gpytorch.closed_form import (
    GP,
    KINDS,
    NOISE,
    features,
    gaussian_likelihood,
    kl_to,
    mean_cov,
    optimal,
    trained,
)


def _unlearn_mll(gp, likelihood, posterior, x, y, method, lam, steps, lr=0.02, samples=256):
    cls = pug.VariationalEUBO if method == "eubo" else pug.VariationalReverseKL
    objective = cls(likelihood, gp, posterior, num_erased=len(y), lam=lam, num_samples=samples)
    optimizer = torch.optim.Adam(gp.variational_parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.1 ** (1 / steps))  # as pu.forget
    for _ in range(steps):
        optimizer.zero_grad()
        output = gp(x) if method == "eubo" else None
        (-objective(output, y, inputs=x)).backward()
        optimizer.step()
        decay.step()
    return objective


@pytest.mark.parametrize("whitened", [True, False], ids=["whitened", "unwhitened"])
def test_eubo_objective_at_lam_zero_reaches_the_closed_form(data, whitened):
    """λ = 0 on a Gaussian likelihood: q(u|D)/p̃(D_e|u) is the optimal q(u|D_r), in closed form."""
    x, y, erased, keep = data
    gp, likelihood = trained(x, y, whitened), gaussian_likelihood()
    target = optimal(gp, x[keep], y[keep])
    posterior = pug.freeze_inducing(gp)
    full_kl = kl_to(gp, *target)
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(erased), lam=0.0)
    optimizer = torch.optim.LBFGS(list(gp.variational_parameters()), max_iter=500)

    def closure():
        optimizer.zero_grad()
        loss = -eubo(gp(x[erased]), y[erased])
        loss.backward()
        return loss

    optimizer.step(closure)
    assert full_kl > 1.0  # the erased cluster moved q(u)
    assert kl_to(gp, *target) < 1e-6
    # the frozen q(u|D) is untouched
    assert float(pug.inducing_kl(posterior, trained(x, y, whitened))) < 1e-10
    assert eubo.diagnostics() == {}  # λ = 0: no threshold to report on


@pytest.mark.parametrize("kind", ["natural", "tril_natural"])
def test_natural_gradient_eubo_step_lands_on_the_closed_form(data, kind):
    """With a natural-parameter q(u) and GPyTorch's NGD at lr = 1 on all of D_e, one λ = 0 EUBO
    step is η ← η_D − η_e: exactly q(u|D)/p̃(D_e|u) for the natural parameterisation; the
    triangular one takes a first-order step in its factor, so it needs a few."""
    x, y, erased, keep = data
    gp = GP(x[::6].clone(), kind=KINDS[kind]).double()
    gp(x)
    pug.set_inducing_distribution(gp, *mean_cov(optimal(gp, x, y)))
    likelihood, target = gaussian_likelihood(), optimal(gp, x[keep], y[keep])
    posterior = pug.freeze_inducing(gp)
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(erased), lam=0.0)
    optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=len(erased), lr=1.0)
    kls = [kl_to(gp, *target)]
    for _ in range(10):
        optimizer.zero_grad()
        (-eubo(gp(x[erased]), y[erased])).backward()
        optimizer.step()
        kls.append(kl_to(gp, *target))
    assert kls[0] > 1.0
    if kind == "natural":
        assert kls[1] < 1e-8
    assert kls[-1] < 1e-6


@pytest.mark.parametrize("method", ["eubo", "rkl"])
def test_pyro_and_mlls_paths_reach_the_same_q(data, method):
    """Both ways in, same data and settings, λ = 0: the same q(u), near the closed form.

    The reverse KL gets a spread-out erasure: the cluster is so informative that even 200 000
    draws from q(u|D) leave an effective sample size of 58 and a moment-matched KL of 1.6 to the
    target: the limit of the paper's proposal (``proposal="current", anneal=...`` lifts it, see
    test_annealed_reverse_kl_unlearns_the_cluster_importance_sampling_from_qD_cannot)."""
    x, y, erased, _ = data
    if method == "rkl":
        erased = torch.arange(2, 60, 5)
    keep = torch.tensor(sorted(set(range(60)) - set(erased.tolist())))
    likelihood = gaussian_likelihood()
    target = optimal(trained(x, y), x[keep], y[keep])

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svgp = pug.PyroSVGP(trained(x, y), likelihood)
    result = pu.forget(
        svgp.model, svgp.guide, x[erased], y[erased], posterior=svgp.freeze(), method=method,
        lam=0.0, num_particles=1024, lr=0.05, num_steps=500, window=500, progress=False,
    )  # fmt: skip
    assert result.num_steps == 500
    gp_mll = trained(x, y)
    posterior = pug.freeze_inducing(gp_mll)
    _unlearn_mll(
        gp_mll, likelihood, posterior, x[erased], y[erased], method, 0.0, 500, lr=0.05, samples=1024
    )

    full = kl_to(trained(x, y), *target)
    kl_pyro, kl_mll = kl_to(svgp.gp, *target), kl_to(gp_mll, *target)
    assert kl_pyro < 0.1 * full and kl_mll < 0.1 * full
    assert float(pug.inducing_kl(svgp.gp, gp_mll)) < 0.15


@pytest.mark.parametrize("lam", [1.0, 0.3, 1e-2])
def test_eubo_threshold_estimator_is_unbiased_and_exact_when_no_draw_is_inside(data, lam):
    """The λ > 0 likelihood term, E_q[log p̃; log q(u|D) > log λ + log q*], against a brute-force
    average over 10⁵ draws; at λ = 1 no draw is inside and the term is exactly 0."""
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    posterior = pug.freeze_inducing(gp)
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, len(erased), lam=lam, num_samples=64)
    q = pug.inducing_distribution(posterior)
    with torch.no_grad():
        # at q_u = q(u|D) the KL is 0: the value is −(log-likelihood term)/|D_e|
        values, inside_fractions = [], []
        for _ in range(200):
            values.append(-eubo(gp(x[erased]), y[erased], inputs=x[erased]) * len(erased))
            inside_fractions.append(eubo.diagnostics()["inside_fraction"])
        values = torch.stack(values)
        u = q.sample(torch.Size([100_000]))
        per_u = pug.inducing_log_likelihood(gp, likelihood, u, x[erased], y[erased])
        inside = eubo._log_q_data(u) > eubo.log_threshold
        target = float(torch.where(inside, per_u, torch.zeros_like(per_u)).mean())
    fraction = sum(inside_fractions) / len(inside_fractions)
    if lam == 1.0:
        assert not bool(inside.any()) and bool((values == 0).all()) and fraction == 0.0
    else:
        assert 0.0 < float(inside.double().mean()) < 1.0
        assert fraction == pytest.approx(float(inside.double().mean()), abs=0.02)
        error = abs(float(values.mean()) - target)
        assert error < 4 * float(values.std()) / 200**0.5 + 1e-9, (float(values.mean()), target)


def test_bad_inputs_are_named(data):
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    posterior = pug.freeze_inducing(gp)
    with pytest.raises(ValueError, match=r"lam must be (a number )?in \[0, 1\]"):
        pug.VariationalEUBO(likelihood, gp, posterior, len(erased), lam=1.5)
    with pytest.raises(ValueError, match="num_erased must be a positive"):
        pug.VariationalEUBO(likelihood, gp, posterior, 0)
    with pytest.raises(TypeError, match=r"frozen q\(u\|D\)"):
        pug.VariationalEUBO(likelihood, gp, gp, len(erased))
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, len(erased), lam=1e-3)
    with (
        gpytorch.settings.lazily_evaluate_kernels(False),
        pytest.raises(ValueError, match="inputs=x_b"),
    ):
        eubo(gp(x[erased]), y[erased])  # an eagerly evaluated output does not carry its inputs
    rkl = pug.VariationalReverseKL(likelihood, gp, posterior, len(erased))
    with pytest.raises(ValueError, match="all of D_e"):
        rkl(None, y[erased[:4]], inputs=x[erased[:4]])
    with pytest.raises(ValueError, match="erased inputs"):
        rkl(None, y[erased])
    other = GP(x[::3].clone()).double()
    other(x)
    with pytest.raises(ValueError, match="shape"):
        pug.VariationalEUBO(likelihood, other, posterior, len(erased))


@pytest.mark.parametrize("method", ["eubo", "rkl"])
def test_objectives_read_the_inputs_from_the_gps_output(data, method):
    """``objective(gp(x_e), y_e)`` without ``inputs=``: the whitened strategy's output carries
    its inputs, and the value is the one with ``inputs=x_e`` (same draws); the unwhitened
    strategy's output does not, and the call that needs them refuses, saying what to pass."""
    x, y, erased, _ = data
    x_e, y_e = x[erased], y[erased]
    for whitened in (True, False):
        gp, likelihood = trained(x, y, whitened=whitened), gaussian_likelihood()
        posterior = pug.freeze_inducing(gp)
        _shift(gp, 0.05)
        objective = (
            pug.VariationalEUBO(likelihood, gp, posterior, len(erased), lam=1e-2, num_samples=16)
            if method == "eubo"
            else pug.VariationalReverseKL(likelihood, gp, posterior, len(erased), num_samples=16)
        )
        torch.manual_seed(1)
        given = objective(gp(x_e), y_e, inputs=x_e).detach()
        torch.manual_seed(1)
        if whitened:
            read = objective(gp(x_e), y_e).detach()
            assert torch.allclose(read, given, rtol=1e-10, atol=1e-12)
        else:
            with pytest.raises(ValueError, match=r"inputs=x_.*UnwhitenedVariationalStrategy"):
                objective(gp(x_e), y_e)


def test_mean_field_eubo_reaches_the_mean_field_optimum(data):
    """A mean-field q(u|D) at its own optimum (precision diag Λ_D); the EUBO's λ = 0 optimum is
    the mean-field reverse-KL fit of q(u|D)/p̃(D_e|u) = N(m̃, P̃⁻¹): mean m̃, variances 1/P̃_ii.
    (For the erased cluster, P̃ is not positive definite: that division has no distribution.)"""
    x, y, _, _ = data
    erased = torch.arange(2, 60, 5)
    gp = GP(x[::6].clone(), mean_field=True).double()
    gp(x)
    loc, precision = optimal(gp, x, y)
    diagonal = torch.diag(precision.diagonal())
    pug.set_inducing_distribution(gp, loc, torch.linalg.inv(diagonal))
    phi, _ = features(gp, x)
    with pytest.raises(NotNormalizableError):
        gaussian_linear_unlearn(loc, diagonal, phi[48:], y[48:], NOISE**0.5)
    m, p = gaussian_linear_unlearn(loc, diagonal, phi[erased], y[erased], NOISE**0.5)
    target = torch.diag(p.diagonal())
    before = kl_to(gp, m, target)
    posterior = pug.freeze_inducing(gp)
    _unlearn_mll(
        gp, gaussian_likelihood(), posterior, x[erased], y[erased], "eubo", 0.0, 400, lr=0.05
    )
    assert before > 0.5
    assert kl_to(gp, m, target) < 1e-3


def _batch_gp(x, y):
    """A batch GP of two outputs (batch_shape [2]) at the ELBO optimum of (y, −y)."""
    gp = GP(x[::6].clone(), batch_shape=torch.Size([2])).double()
    gp(x)
    q = pug.inducing_distribution(trained(x, y))  # whitened: −y's optimum is (−mean, same cov)
    mean, covariance = torch.stack([q.mean, -q.mean]), q.covariance_matrix.expand(2, -1, -1)
    pug.set_inducing_distribution(gp, mean, covariance)
    return gp


def _shift(gp, delta):
    q = pug.inducing_distribution(gp)
    pug.set_inducing_distribution(gp, q.mean + delta, q.covariance_matrix)


def test_objectives_keep_the_batch_shape_of_a_batch_gp(data):
    """As GPyTorch's objectives, one value per output (y is (2, N)); at λ = 0 the EUBO's first
    output is that of the single-output GP equal to it (likelihood and KL term alike), and the
    sum is what trains."""
    x, y, erased, _ = data
    y2, x_e = torch.stack([y, -y])[:, erased], x[erased]
    gp, single = _batch_gp(x, y), trained(x, y)
    posterior, single_posterior = pug.freeze_inducing(gp), pug.freeze_inducing(single)
    _shift(gp, 0.1)  # off q(u|D): the KL term is not 0
    _shift(single, 0.1)
    likelihood = gaussian_likelihood([2])
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, len(erased))
    single_eubo = pug.VariationalEUBO(gaussian_likelihood(), single, single_posterior, len(erased))
    value = eubo(gp(x_e), y2, inputs=x_e).detach()
    assert value.shape == (2,)
    expected = single_eubo(single(x_e), y2[0]).detach()
    assert float(value[0]) == pytest.approx(float(expected), rel=1e-10)
    eubo.combine_terms = False
    data_term, kl_term = (term.detach() for term in eubo(gp(x_e), y2))
    assert data_term.shape == kl_term.shape == (2,)
    assert torch.allclose(data_term - kl_term, value, rtol=1e-12)
    single_kl = pug.inducing_kl(single, single_posterior) / len(erased)
    assert float(kl_term[0]) == pytest.approx(float(single_kl), rel=1e-8) and float(single_kl) > 0
    rkl = pug.VariationalReverseKL(likelihood, gp, posterior, len(erased), num_samples=64)
    rkl_value = rkl(None, y2, inputs=x_e)
    assert rkl_value.shape == (2,) and bool(torch.isfinite(rkl_value).all())
    rkl_value.sum().backward()
    assert all(p.grad is not None for p in gp.variational_parameters())


def test_batch_gp_reverse_kl_weights_are_joint(data):
    """λ = 0: the cluster skews the weights of the joint u of both outputs; λ = 1: p_adj = 1,
    uniform weights, ESS = S."""
    x, y, erased, _ = data
    gp = _batch_gp(x, y)
    posterior = pug.freeze_inducing(gp)
    likelihood = gaussian_likelihood([2])
    y2 = torch.stack([y, -y])[:, erased]
    rkl = pug.VariationalReverseKL(likelihood, gp, posterior, len(erased))
    assert rkl.diagnostics() == {}  # no step yet
    rkl(None, y2, inputs=x[erased])
    assert float(rkl.ess) < 0.9 * rkl.num_samples
    assert rkl.diagnostics() == {"ess": float(rkl.ess), "temperature": 1.0}
    untouched = pug.VariationalReverseKL(likelihood, gp, posterior, len(erased), lam=1.0)
    untouched(None, y2, inputs=x[erased])
    assert untouched.diagnostics()["ess"] == pytest.approx(untouched.num_samples, rel=1e-6)


def test_reverse_kl_computes_the_erased_kernel_algebra_once_per_inputs(data):
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    rkl = pug.VariationalReverseKL(
        likelihood, gp, pug.freeze_inducing(gp), len(erased), num_samples=8
    )
    x_e, y_e = x[erased].clone(), y[erased]
    rkl(None, y_e, inputs=x_e)
    first = rkl._cache[1]
    rkl(None, y_e, inputs=x_e)
    assert rkl._cache[1] is first  # reused
    with torch.no_grad():
        x_e.add_(0.5)  # changed in place: recomputed for the new inputs
    rkl(None, y_e, inputs=x_e)
    assert rkl._cache[1] is not first
    assert not torch.allclose(rkl._cache[1][0].a, first[0].a)


def test_annealed_reverse_kl_unlearns_the_cluster_importance_sampling_from_qD_cannot(data):
    """The 12-point cluster moves log p̃(D_e|u) by tens of nats across draws of q(u|D): drawn
    from q(u|D) the weights collapse (ESS of a few) and the rKL stays far from the closed-form
    q(u|D_r). Drawn from the current q_v, with the target tempered as the ESS allows, β reaches
    1 and q(u) lands on it (natural parameters, GPyTorch's NGD)."""
    x, y, erased, keep = data
    kls, temperatures = {}, {}
    for proposal, anneal in [("posterior", None), ("current", 0.5)]:
        torch.manual_seed(0)
        gp = GP(x[::6].clone(), kind=KINDS["natural"]).double()
        gp(x)
        pug.set_inducing_distribution(gp, *mean_cov(optimal(gp, x, y)))
        target = optimal(gp, x[keep], y[keep])
        full = kl_to(gp, *target)
        rkl = pug.VariationalReverseKL(
            gaussian_likelihood(), gp, pug.freeze_inducing(gp), len(erased), proposal=proposal,
            anneal=anneal,
        )  # fmt: skip
        optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=len(erased), lr=0.05)
        for step in range(150):
            optimizer.zero_grad()
            (-rkl(None, y[erased], inputs=x[erased])).backward()
            optimizer.step()
            if step == 0:
                temperatures[proposal] = rkl.diagnostics()["temperature"]
        kls[proposal] = kl_to(gp, *target)
        assert rkl.diagnostics()["temperature"] == 1.0
    assert full > 2.0
    assert kls["current"] < 0.02
    assert kls["posterior"] > 0.5
    assert temperatures["posterior"] == 1.0 and temperatures["current"] < 1.0  # annealed


def test_reverse_kl_from_the_current_q_is_the_same_estimator_at_q_of_D(data):
    """At q_v = q(u|D) the two proposals are one distribution: the same draws and weights; the
    current one subtracts its control variate, mean_s log q_v(u_s)/|D_e|."""
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    posterior = pug.freeze_inducing(gp)
    values = []
    for proposal in ("posterior", "current"):
        torch.manual_seed(3)
        rkl = pug.VariationalReverseKL(
            likelihood, gp, posterior, len(erased), num_samples=64, proposal=proposal
        )
        values.append((rkl(None, y[erased], inputs=x[erased]).item(), float(rkl.ess)))
    torch.manual_seed(3)
    q = pug.inducing_distribution(gp)
    control = float(q.log_prob(q.sample(torch.Size([64]))).mean()) / len(erased)
    assert values[1][1] == pytest.approx(values[0][1], rel=1e-9)  # ESS
    assert values[1][0] == pytest.approx(values[0][0] - control, rel=1e-9)
    with pytest.raises(ValueError, match="proposal must be"):
        pug.VariationalReverseKL(likelihood, gp, posterior, len(erased), proposal="prior")
    with pytest.raises(ValueError, match="needs proposal='current'"):
        pug.VariationalReverseKL(likelihood, gp, posterior, len(erased), anneal=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1[)\]]"):
        pug.VariationalReverseKL(
            likelihood, gp, posterior, len(erased), proposal="current", anneal=1.5
        )


def test_objectives_take_variational_elbos_num_data_beta_and_combine_terms(data):
    """As GPyTorch's VariationalELBO: num_data (which must be |D_e|), beta weighing the KL term,
    combine_terms=False giving (data term, KL term), each of the GP's batch shape."""
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    posterior = pug.freeze_inducing(gp)
    with torch.no_grad():  # q(u) off q(u|D): a nonzero KL term
        gp.variational_strategy._variational_distribution.variational_mean.add_(0.1)
    terms = {}
    for beta in (1.0, 0.25):
        eubo = pug.VariationalEUBO(
            likelihood, gp, posterior, num_erased=len(erased), num_data=len(erased), beta=beta,
            combine_terms=False,
        )  # fmt: skip
        terms[beta] = [t.detach() for t in eubo(gp(x[erased]), y[erased])]
    assert terms[1.0][0].shape == terms[1.0][1].shape == ()
    assert float(terms[1.0][1]) > 0
    assert torch.allclose(terms[0.25][1], 0.25 * terms[1.0][1])
    assert torch.allclose(terms[0.25][0], terms[1.0][0])


def test_division_is_checked_once_when_inputs_are_read_from_the_output(data, monkeypatch):
    """The λ = 0 EUBO checks the division on the first call holding all of D_e; inputs read
    from gp(x_e) are a new tensor every call but the same data, so it is not checked again,
    and other data are."""
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    eubo = pug.VariationalEUBO(likelihood, gp, pug.freeze_inducing(gp), len(erased))
    calls = []
    check = eubo.check_division
    monkeypatch.setattr(eubo, "check_division", lambda *a: calls.append(1) or check(*a))
    for _ in range(3):
        eubo(gp(x[erased]), y[erased])
    assert len(calls) == 1
    eubo(gp(x[erased]), y[erased] + 0.01)
    assert len(calls) == 2


def test_bernoulli_eubo_moves_q_u_to_q_u_retrained_on_the_rest(data):
    """Bernoulli classification, as GPyTorch's tutorial writes it (1-D inputs): with q(u|D) and
    q(u|D_r) both at the ELBO's optimum (converge_inducing), the λ = 0 EUBO on a random sixth
    of the rows ends at least four times closer to q(u|D_r) than q(u|D) is. Not exact: the
    Gaussian q(u|D) is not the posterior, so q(u|D)/p(D_e|u) is only near q(u|D_r)."""
    x, y, _, _ = data
    labels = (y > 0).to(y.dtype)
    erased, keep = torch.arange(2, 60, 6), torch.tensor([i for i in range(60) if i % 6 != 2])
    gp, likelihood = GP(x[::4].clone()).double(), gpytorch.likelihoods.BernoulliLikelihood()
    gp(x)
    pug.converge_inducing(gp, likelihood, x, labels)
    posterior = pug.freeze_inducing(gp, likelihood=likelihood, data=(x, labels))
    retrained = copy.deepcopy(gp)
    pug.converge_inducing(retrained, likelihood, x[keep], labels[keep])
    full = float(pug.inducing_kl(gp, retrained))
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(erased))
    optimizer = torch.optim.LBFGS(list(gp.variational_parameters()), max_iter=500)

    def closure():
        optimizer.zero_grad()
        loss = -eubo(gp(x[erased]), labels[erased])
        loss.backward()
        return loss

    optimizer.step(closure)
    unlearned = float(pug.inducing_kl(gp, retrained))
    assert full > 0.05 and unlearned < full / 4, (full, unlearned)
