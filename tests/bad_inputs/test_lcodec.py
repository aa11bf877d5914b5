"""Bad inputs to L-CODEC's remove and remove_sequentially: each is refused with an error that
names it, and the network's state dict is bit-identical afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_unlearn import lcodec
from tests.bad_inputs.conftest import assert_same_state

NAN, INF = float("nan"), float("inf")


def loss(out, target):
    return F.cross_entropy(out, target, reduction="none")


@pytest.fixture(scope="module")
def trained():
    """A small nn.Sequential trained by Adam (near a minimum of the regularised loss)."""
    torch.manual_seed(0)
    x, y = torch.randn(60, 4), torch.randint(0, 3, (60,))
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        reg = 1e-3 * sum(p.square().sum() for p in net.parameters())
        (loss(net(x), y).mean() + reg).backward()
        opt.step()
    return net, x, y


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _with(value, row, col, entry):
    value = value.clone()
    value[row, col] = entry
    return value


def _remove(net, x, y, index=0, **options):
    options = {"weight_decay": 2e-3, "num_perturbations": 16, **options}
    return lcodec.remove(net, options.pop("loss_fn", loss), (x, y), index, **options)


CASES = [
    # non-finite data, named as data (not as L-FOCI's response)
    ("nan-x", {"x": ("nan", 5)}, ValueError, r"data's x has a non-finite value \(nan\) at row 5"),
    ("inf-x", {"x": ("inf", 7)}, ValueError, r"data's x has a non-finite value \(inf\) at row 7"),
    ("nan-x-erased-row", {"x": ("nan", 0)}, ValueError, r"data's x has .*nan.* at row 0"),
    ("nan-validation", {"validation": "nan"}, ValueError, r"validation's x has .* at row 5"),
    # data shapes and types
    ("float-y", {"y": "float"}, ValueError, "loss_fn.* fails on data"),
    ("class-out-of-range", {"y": "big"}, ValueError, "loss_fn.* fails on data.*out of bounds"),
    ("x-features", {"x": "features"}, ValueError, r"fails on data \(x \(2, 5\)"),
    ("y-short", {"y": "short"}, ValueError, "x has 60 rows, y has 50"),
    ("empty", {"x": "empty"}, ValueError, "at least 2 training samples"),
    ("validation-features", {"validation": "features"}, ValueError, "fails on validation"),
    ("validation-short", {"validation": "short"}, ValueError, "x has 5 rows, y has 4"),
    ("validation-type", {"validation": 3}, TypeError, "validation must be a pair"),
    # the model's loss
    ("nan-loss", {"loss_fn": "nan"}, ValueError, r"loss is not finite \(nan\) at row 0 of data"),
    ("scalar-loss", {"loss_fn": "mean"}, ValueError, "one loss per sample"),
    ("loss-not-callable", {"loss_fn": 3}, TypeError, "loss_fn must be callable"),
    # the erased row
    ("index-negative", {"index": -1}, ValueError, "erase_index must be an integer ≥ 0, got -1"),
    ("index-too-large", {"index": 60}, IndexError, "erase index 60 is out of range for 60"),
    ("index-float", {"index": 2.0}, TypeError, "erase_index must be an integer ≥ 0"),
    # options
    ("num-perturbations-0", {"num_perturbations": 0}, ValueError, "num_perturbations must be"),
    ("num-perturbations-1", {"num_perturbations": 1}, ValueError, "num_perturbations must be ≥ 2"),
    ("num-perturbations-float", {"num_perturbations": 2.5}, TypeError, "num_perturbations"),
    ("num-perturbations-str", {"num_perturbations": "8"}, TypeError, "num_perturbations"),
    ("max-block-0", {"max_block_size": 0}, ValueError, "max_block_size must be a positive"),
    ("max-block-float", {"max_block_size": 1.5}, TypeError, "max_block_size must be a positive"),
    ("epsilon-0", {"epsilon": 0, "gamma": 1.0}, ValueError, "epsilon must be a finite number > 0"),
    ("epsilon-nan", {"epsilon": NAN, "gamma": 1.0}, ValueError, "epsilon must be"),
    ("delta-1", {"epsilon": 1, "gamma": 1.0, "delta": 1}, ValueError, r"delta must be in \(0, 1\)"),
    ("delta-nan", {"epsilon": 1, "gamma": 1.0, "delta": NAN}, ValueError, "delta must be"),
    ("delta-str", {"epsilon": 1, "gamma": 1.0, "delta": "0.1"}, TypeError, "delta must be"),
    ("gamma-inf", {"epsilon": 1, "gamma": INF}, ValueError, "gamma must be a finite number"),
    ("gamma-alone", {"gamma": 1.0}, ValueError, "gamma is given but epsilon is not"),
    ("epsilon-alone", {"epsilon": 1.0}, ValueError, "epsilon is given but gamma is not"),
    ("weight-decay-nan", {"weight_decay": NAN}, ValueError, "weight_decay must be"),
    ("weight-decay-negative", {"weight_decay": -1}, ValueError, "weight_decay must be"),
    ("damping-negative", {"damping": -1}, ValueError, "damping must be"),
    ("perturbation-scale-0", {"perturbation_scale": 0}, ValueError, "perturbation_scale must"),
    ("perturbation-scale-nan", {"perturbation_scale": NAN}, ValueError, "perturbation_scale"),
    ("perturbation-scale-huge", {"perturbation_scale": 1e38}, ValueError, "perturbed copy"),
    ("num-random-0", {"selection": "random", "num_random": 0}, ValueError, "num_random must be"),
    ("num-random-large", {"selection": "random", "num_random": 99}, ValueError, r"\[1, 11\]"),
    ("num-random-float", {"selection": "random", "num_random": 2.5}, TypeError, "num_random"),
    ("max-slices-0", {"max_slices": 0}, ValueError, "max_slices must be a positive"),
    ("method", {"method": "knn"}, ValueError, "method must be one of"),
    ("selection", {"selection": "best"}, ValueError, "selection must be one of"),
    ("selection-not-slices", {"selection": [1, 2]}, TypeError, "list of Slice"),
    ("layers-str", {"layers": "0"}, TypeError, "layers must be a list of layer names"),
    ("layers-unknown", {"layers": ["head"]}, ValueError, "no submodule named 'head'"),
    ("batch-size-0", {"batch_size": 0}, ValueError, "batch_size must be a positive"),
    ("hessian-chunk-negative", {"hessian_chunk": -1}, ValueError, "hessian_chunk must be"),
    ("generator", {"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ("residual", {"residual": "yes"}, TypeError, "residual must be a bool"),
    ("drop-negative", {"max_validation_drop": -1, "validation": "ok"}, ValueError, "max_valid"),
    ("drop-without-validation", {"max_validation_drop": 0.1}, ValueError, "needs validation="),
    ("validation-score-nan", {"validation": "nan-score"}, ValueError, "returned nan"),
]


def _arguments(net, x, y, case):
    """(x, y, index, options) of a case, from the trained data."""
    case = dict(case)
    index = case.pop("index", 0)
    bad_x, bad_y = case.pop("x", None), case.pop("y", None)
    if isinstance(bad_x, tuple):
        x = _with(x, bad_x[1], 1, NAN if bad_x[0] == "nan" else INF)
    elif bad_x == "features":
        x = torch.randn(60, 5)
    elif bad_x == "empty":
        x, y = x[:0], y[:0]
    y = {"float": y.float(), "big": torch.full_like(y, 5), "short": y[:50]}.get(bad_y, y)
    validation = case.pop("validation", None)
    case["validation"] = {
        "nan": lambda: (_with(x, 5, 0, NAN), y),
        "features": lambda: (torch.randn(5, 7), y[:5]),
        "short": lambda: (x[:5], y[:4]),
        "ok": lambda: (x, y),
        "nan-score": lambda: lambda model: NAN,
        None: lambda: None,
    }.get(validation, lambda: validation)()
    bad_loss = case.pop("loss_fn", None)
    if bad_loss is not None:
        case["loss_fn"] = {
            "nan": lambda out, t: loss(out, t) * NAN,
            "mean": lambda out, t: loss(out, t).mean(),
        }.get(bad_loss, bad_loss)
    return x, y, index, case


@pytest.mark.parametrize("case, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_remove_names_bad_inputs_and_leaves_the_network(trained, case, error, match):
    net, x, y = trained
    x, y, index, options = _arguments(net, x, y, case)
    before = _state(net)
    with pytest.raises(error, match=match):
        _remove(net, x, y, index, **options)
    assert_same_state(before, _state(net))


SEQUENTIAL = [
    ("repeated", [1, 1], {}, ValueError, "repeated entries"),
    ("out-of-range", [1, 99], {}, IndexError, r"erase indices \[99\] are out of range"),
    ("float-rows", [1.5], {}, TypeError, "row indices"),
    ("bool-mask", torch.zeros(60, dtype=torch.bool), {}, TypeError, "mask.nonzero"),
    ("2-d", [[1, 2]], {}, ValueError, r"1-D\), got shape \(1, 2\)"),
    ("all-rows", list(range(60)), {}, ValueError, "at least one must remain"),
    ("num-random-short", [1, 2], {"num_random": [1]}, ValueError, "1 entries for 2"),
    ("num-random-zero", [1, 2], {"num_random": [0, 0]}, ValueError, "num_random must be"),
    ("unknown-option", [1], {"foo": 3}, TypeError, "foo"),
    ("nan-x", [1, 2], {"x": ("nan", 5)}, ValueError, r"data's x has .* at row 5"),
    ("drop-without-validation", [1], {"max_validation_drop": 0.1}, ValueError, "validation="),
]


@pytest.mark.parametrize(
    "rows, case, error, match", [c[1:] for c in SEQUENTIAL], ids=[c[0] for c in SEQUENTIAL]
)
def test_remove_sequentially_names_bad_inputs(trained, rows, case, error, match):
    net, x, y = trained
    case = dict(case)
    if "x" in case:
        x = _with(x, case.pop("x")[1], 1, NAN)
    if "num_random" in case:
        case["selection"] = "random"
    before = _state(net)
    with pytest.raises(error, match=match):
        lcodec.remove_sequentially(
            net, loss, (x, y), rows, progress=False, num_perturbations=16, **case
        )
    assert_same_state(before, _state(net))


@pytest.mark.parametrize("index", [np.int64(3), torch.tensor(3)], ids=["numpy-int", "tensor-int"])
def test_integer_indices_of_any_kind_are_rows(trained, index):
    net, x, y = trained
    assert _remove(net, x, y, index, selection="all").index == 3
