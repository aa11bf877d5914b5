"""L-CODEC block Newton unlearning (pyro_unlearn/lcodec/), against retraining and against the
Newton formula computed independently with torch.autograd.functional.hessian."""

import copy
import math

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_unlearn.lcodec import (
    Slice,
    collect_activations,
    noise_scale,
    remove,
    remove_sequentially,
)

WD = 1e-2  # weight decay: F(w) = mean cross-entropy + (WD/2) ‖w‖²


def generator(seed):
    """A seeded generator on the tests' device (``--device``)."""
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def loss_fn(out, target):
    return F.cross_entropy(out, target, reduction="none")


def fit(net, x, y, weight_decay=WD):
    """L-BFGS to a gradient of ~1e-10 (float64): the minimiser, up to rounding."""
    opt = torch.optim.LBFGS(
        net.parameters(),
        max_iter=500,
        history_size=50,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        reg = sum(p.square().sum() for p in net.parameters())
        value = loss_fn(net(x), y).mean() + 0.5 * weight_decay * reg
        value.backward()
        return value

    for _ in range(3):
        opt.step(closure)
    return net


def flat(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.fixture(scope="module")
def problem():
    """Multinomial logistic regression (5 features, 3 classes), 300 samples, trained to the
    minimiser, and the same model retrained without sample 7."""
    g = generator(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    logits = x @ (2 * torch.randn(5, 3, generator=g, dtype=torch.float64))
    y = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
    torch.manual_seed(0)
    net = fit(nn.Linear(5, 3).double(), x, y)
    keep = torch.arange(300) != 7
    retrained = fit(copy.deepcopy(net), x[keep], y[keep])
    return net, x, y, retrained


def newton_by_hand(net, x, y, index, rows=None):
    """w + H'⁻¹ ∇f(w; z)/(n − 1) on the weight rows ``rows`` (+ bias rows), or on everything,
    with dense Hessians of the flattened block from torch.autograd.functional."""
    W, b = net.weight.detach(), net.bias.detach()
    rows = torch.arange(W.shape[0]) if rows is None else torch.as_tensor(rows)
    n = x.shape[0]

    def objective(theta, xs, ys):
        k = len(rows)
        W2 = W.index_copy(0, rows, theta[: k * W.shape[1]].reshape(k, -1))
        b2 = b.index_copy(0, rows, theta[k * W.shape[1] :])
        reg = W2.square().sum() + b2.square().sum()
        return loss_fn(xs @ W2.T + b2, ys).mean() + 0.5 * WD * reg

    theta = torch.cat([W[rows].reshape(-1), b[rows]])
    hess = torch.autograd.functional.hessian
    H = hess(lambda t: objective(t, x, y), theta)
    Hz = hess(lambda t: objective(t, x[index : index + 1], y[index : index + 1]), theta)
    t = theta.clone().requires_grad_(True)
    (gz,) = torch.autograd.grad(objective(t, x[index : index + 1], y[index : index + 1]), t)
    Hr = (n * H - Hz) / (n - 1)
    return theta + torch.linalg.solve(Hr, gz) / (n - 1)


def test_full_update_lands_near_the_retrained_minimiser(problem):
    net, x, y, retrained = problem
    before = flat(net).clone()
    out = remove(net, loss_fn, (x, y), 7, weight_decay=WD, selection="all")
    gap_original = (flat(net) - flat(retrained)).norm()
    gap_unlearned = (flat(out.model) - flat(retrained)).norm()
    # Newton from the minimiser on D: error O(1/n²) against the O(1/n) the sample moved w
    assert gap_unlearned < 0.05 * gap_original, (gap_unlearned, gap_original)
    assert out.block_size == 18 and out.selected == [] and out.hessian_shift == 0.0
    assert out.converged  # kept, and a Newton step on a positive definite H'_P
    # the update is the formula of Mehta et al. (2022) (sign included)
    expected = newton_by_hand(net, x, y, 7)
    got = torch.cat([out.model.weight.detach().reshape(-1), out.model.bias.detach()])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # the residual gradient on D_r is tiny after the step, and larger before
    keep = torch.arange(300) != 7
    assert out.residual_grad_norm < 0.05 * _grad_norm(net, x[keep], y[keep])
    # the loss of the removed sample went up; the input model was not touched
    assert out.removed_loss[1] > out.removed_loss[0]
    assert torch.equal(flat(net), before) and out.model is not net


def _grad_norm(net, x, y):
    reg = sum(p.square().sum() for p in net.parameters())
    value = loss_fn(net(x), y).mean() + 0.5 * WD * reg
    return float(
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, net.parameters())]).norm()
    )


def test_block_update_changes_only_the_selected_rows(problem):
    net, x, y, retrained = problem
    g = generator(0)
    out = remove(net, loss_fn, (x, y), 7, weight_decay=WD, selection="foci", generator=g)
    rows = sorted(s.index for s in out.selected)
    assert 1 <= len(rows) <= 3 and all(s.layer == "" for s in out.selected)
    assert out.block_size == 6 * len(rows) and len(out.coefficients) == len(rows)
    others = [j for j in range(3) if j not in rows]
    torch.testing.assert_close(out.model.weight[others], net.weight[others], rtol=0, atol=0)
    torch.testing.assert_close(out.model.bias[others], net.bias[others], rtol=0, atol=0)
    expected = newton_by_hand(net, x, y, 7, rows)
    got = torch.cat([out.model.weight.detach()[rows].reshape(-1), out.model.bias.detach()[rows]])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # a given list of slices gives the same block update
    given = remove(net, loss_fn, (x, y), 7, weight_decay=WD, selection=out.selected)
    torch.testing.assert_close(flat(given.model), flat(out.model), rtol=0, atol=1e-14)


def test_foci_block_beats_a_random_block_of_the_same_size(problem):
    net, x, y, retrained = problem
    gaps = {}
    for selection in ("foci", "random"):
        g = generator(0)
        out = remove(net, loss_fn, (x, y), 7, weight_decay=WD, selection=selection, generator=g)
        gaps[selection] = float((flat(out.model) - flat(retrained)).norm())
        sizes = gaps.setdefault("sizes", [])
        sizes.append(len(out.selected))
    assert gaps["sizes"][0] == gaps["sizes"][1]  # random: as many slices as FOCI picked
    assert gaps["foci"] < 0.5 * gaps["random"], gaps


def test_noise_scale_formula():
    assert noise_scale(1e-3, 0.1, 0.01) == pytest.approx(1e-2 * math.sqrt(2 * math.log(125)))
    assert noise_scale(2.0, 1.0, 0.5) == pytest.approx(2.0 * math.sqrt(2 * math.log(2.5)))
    with pytest.raises(ValueError, match="epsilon must be positive"):
        noise_scale(1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        noise_scale(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="gamma must be positive"):
        noise_scale(-1.0, 1.0, 0.1)


def test_certified_noise_is_added_to_the_block_only():
    g = generator(1)
    x = torch.randn(200, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (200,), generator=g)
    torch.manual_seed(1)
    net = fit(nn.Linear(20, 5).double(), x, y)
    plain = remove(net, loss_fn, (x, y), 3, weight_decay=WD, selection="all", residual=False)
    noisy = remove(
        net,
        loss_fn,
        (x, y),
        3,
        weight_decay=WD,
        selection="all",
        epsilon=0.5,
        delta=1e-3,
        gamma=1e-3,
        residual=False,
        generator=g,
    )
    sigma = noise_scale(1e-3, 0.5, 1e-3)
    assert noisy.noise_scale == pytest.approx(sigma) and plain.noise_scale == 0.0
    z = (flat(noisy.model) - flat(plain.model)) / sigma  # 105 standard normals
    assert abs(float(z.mean())) < 0.35 and 0.8 < float(z.std()) < 1.2
    # on a block, the other rows get no noise
    block = remove(
        net,
        loss_fn,
        (x, y),
        3,
        weight_decay=WD,
        selection=[Slice("", 2)],
        epsilon=0.5,
        gamma=1e-3,
        generator=g,
    )
    others = [0, 1, 3, 4]
    assert torch.equal(block.model.weight[others], net.weight[others])


def test_sequential_removal_chains_single_removals(problem):
    net, x, y, _ = problem
    seq = remove_sequentially(
        net, loss_fn, (x, y), [3, 9], weight_decay=WD, selection="all", progress=False
    )
    assert seq.removed == [3, 9] and seq.skipped == [] and not seq.retrain_advised
    assert seq.converged
    first = remove(net, loss_fn, (x, y), 3, weight_decay=WD, selection="all")
    keep = torch.arange(300) != 3
    second = remove(first.model, loss_fn, (x[keep], y[keep]), 8, weight_decay=WD, selection="all")
    torch.testing.assert_close(flat(seq.model), flat(second.model), rtol=0, atol=1e-12)
    assert [s.index for s in seq.steps] == [3, 9]


def test_removal_with_a_large_validation_drop_is_skipped(problem):
    net, x, y, _ = problem
    start = flat(net).clone()

    def closeness(model):  # any move of the weights is a "drop" of 1000 × its size
        return -1000.0 * float((flat(model) - start).norm())

    out = remove_sequentially(
        net,
        loss_fn,
        (x, y),
        [3, 9],
        weight_decay=WD,
        selection="all",
        validation=closeness,
        max_validation_drop=1.0,
        progress=False,
    )
    assert out.skipped == [3, 9] and out.removed == [] and out.retrain_advised
    assert not out.converged and not any(s.converged for s in out.steps)
    assert all(s.retrain_advised and not s.applied for s in out.steps)
    assert all(s.removed_loss[0] == s.removed_loss[1] for s in out.steps)
    assert torch.equal(flat(out.model), start)  # unchanged
    assert out.steps[0].validation[0] == 0.0 and out.steps[0].validation[1] < -1.0
    # a tolerant bound keeps the update; accuracy on held-out data is the default score
    kept = remove(
        net,
        loss_fn,
        (x[:250], y[:250]),
        3,
        weight_decay=WD,
        selection="all",
        validation=(x[250:], y[250:]),
        max_validation_drop=0.5,
    )
    assert kept.applied and not kept.retrain_advised
    accuracy = float((kept.model(x[250:]).argmax(-1) == y[250:]).double().mean())
    assert kept.validation[1] == pytest.approx(accuracy)


def test_collect_activations_linear_and_conv():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2), nn.Linear(2, 2)
    )
    x = torch.randn(7, 1, 6, 6)
    acts, slices = collect_activations(net, x)
    assert acts.shape == (7, 3 + 2 + 2)
    assert [str(s) for s in slices] == ["0[0]", "0[1]", "0[2]", "3[0]", "3[1]", "4[0]", "4[1]"]
    with torch.no_grad():
        conv = net[0](x)
        torch.testing.assert_close(acts[:, :3], conv.mean((2, 3)))  # filter ↔ mean activation
        torch.testing.assert_close(acts[:, 3:5], net[3](net[2](net[1](conv))))
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed
    only, names = collect_activations(net, x, layers=["4"])
    assert only.shape == (7, 2) and names == [Slice("4", 0), Slice("4", 1)]


def test_mlp_and_pyro_module():
    g = generator(2)
    x = torch.randn(120, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (120,), generator=g)
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    fit(mlp, x, y)
    out = remove(mlp, loss_fn, (x, y), 0, weight_decay=WD, generator=g, num_perturbations=64)
    layers = {s.layer for s in out.selected}
    assert layers <= {"0", "2"} and out.block_size == sum(
        5 if s.layer == "0" else 7 for s in out.selected
    )
    # a PyroModule with plain parameters is a point-estimate network too
    linear = PyroModule[nn.Linear](4, 3).double()
    fit(linear, x, y)
    plain = nn.Linear(4, 3).double()
    plain.load_state_dict(linear.state_dict())
    a = remove(linear, loss_fn, (x, y), 5, weight_decay=WD, selection="all")
    b = remove(plain, loss_fn, (x, y), 5, weight_decay=WD, selection="all")
    torch.testing.assert_close(flat(a.model), flat(b.model))


def test_indefinite_hessian_is_shifted():
    g = generator(3)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (60,), generator=g)
    torch.manual_seed(3)
    # an untrained tanh network without weight decay: its Hessian is indefinite
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    out = remove(net, loss_fn, (x, y), 0, selection="all")
    assert out.hessian_shift > 0 and out.applied and not out.converged
    assert torch.isfinite(flat(out.model)).all()


def test_bad_input(problem):
    net, x, y, _ = problem
    mlp = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    with pytest.raises(IndexError, match="erase index 300 is out of range for 300"):
        remove(net, loss_fn, (x, y), 300, selection="all")
    with pytest.raises(IndexError, match=r"erase indices \[400\] are out of range"):
        remove_sequentially(net, loss_fn, (x, y), [1, 400], progress=False)
    with pytest.raises(ValueError, match="repeated"):
        remove_sequentially(net, loss_fn, (x, y), [1, 1], progress=False)
    with pytest.raises(ValueError, match=r"layer '1' \(Tanh\) has no parameters"):
        remove(mlp, loss_fn, (x, y), 0, layers=["1"])
    with pytest.raises(ValueError, match="'2' is a BatchNorm1d; slices are defined for Linear"):
        remove(mlp, loss_fn, (x, y), 0, layers=["2"])
    with pytest.raises(ValueError, match="no submodule named 'head'"):
        remove(mlp, loss_fn, (x, y), 0, layers=["head"])
    with pytest.raises(ValueError, match="one loss per sample"):
        remove(net, lambda out, t: F.cross_entropy(out, t), (x, y), 0)
    with pytest.raises(ValueError, match="epsilon is given but gamma is not"):
        remove(net, loss_fn, (x, y), 0, epsilon=1.0)
    with pytest.raises(ValueError, match="selection must be one of"):
        remove(net, loss_fn, (x, y), 0, selection="top")
    with pytest.raises(ValueError, match="x has 300 rows, y has 299"):
        remove(net, loss_fn, (x, y[:-1]), 0)
    with pytest.raises(ValueError, match="max_block_size=5"):
        remove(net, loss_fn, (x, y), 0, selection="all", max_block_size=5)
    with pytest.raises(ValueError, match=r"unknown slices \['<model>\[7\]'\]"):
        remove(net, loss_fn, (x, y), 0, selection=[Slice("", 7)])
    bayesian = PyroModule[nn.Linear](5, 3)
    bayesian.weight = PyroSample(dist.Normal(0.0, 1.0).expand([3, 5]).to_event(2))
    with pytest.raises(TypeError, match="PyroSample attributes"):
        remove(bayesian, loss_fn, (x.float(), y), 0)


def test_conv_filters_are_slices_and_layers_restrict_the_candidates():
    g = generator(4)
    x = torch.randn(40, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=g)
    torch.manual_seed(4)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 2)).double()
    fit(cnn, x, y)
    out = remove(
        cnn, loss_fn, (x, y), 2, weight_decay=WD, layers=["0"], generator=g, num_perturbations=64
    )
    filters = sorted(s.index for s in out.selected)
    assert {s.layer for s in out.selected} == {"0"} and out.block_size == 10 * len(filters)
    others = [j for j in range(3) if j not in filters]
    assert torch.equal(out.model[0].weight[others], cnn[0].weight[others])
    assert torch.equal(out.model[3].weight, cnn[3].weight)  # not a candidate: unchanged
    assert not torch.equal(out.model[0].weight[filters], cnn[0].weight[filters])


def test_an_error_leaves_the_input_model_alone(problem):
    net, x, y, _ = problem
    before = flat(net).clone()

    def broken(model):
        raise RuntimeError("validation server down")

    with pytest.raises(RuntimeError, match="validation server down"):
        remove_sequentially(
            net, loss_fn, (x, y), [3], weight_decay=WD, selection="all", validation=broken
        )
    assert torch.equal(flat(net), before)
