"""L-CODEC deep unlearning on digits and Fashion-MNIST (Mehta et al., Deep Unlearning via
Randomized Conditionally Independent Hessians, CVPR 2022: Sec. 7.1, Fig. 5).

A logistic regression and a small MLP (one tanh hidden layer) are trained to convergence by
full-batch L-BFGS with weight decay; then K training samples are removed one at a time by the
block Newton step of :mod:`pyro_unlearn.lcodec` with three selections of the block:

- **foci**: the slices L-FOCI picks from the activations of m input perturbations;
- **random**: as many slices as FOCI picked for the same request, chosen uniformly (the
  paper's control);
- **all**: every parameter, the full-Hessian update (where its P × P Hessian fits).

Two scenarios (:data:`SCENARIOS`): K random training samples (the paper's protocol), and K
training samples whose labels were moved to a wrong class before training (a mislabelled shard;
their accuracy is measured on those wrong labels, so forgetting them lowers it).

Beside the three updates: the model before any removal ("original") and the model retrained
on D_r by L-BFGS from the original ("retrained", the target). Reported per model: accuracy on
the removed samples, on the remaining training data and on held-out validation data; the
residual gradient norm ‖∇F_r(w)‖ on D_r after the last removal; the mean loss of the removed
samples; the distance to the retrained model; seconds per removal.

Data. ``load_digits`` (sklearn, 1797 8 × 8 images, pixels scaled to [0, 1]) ships with
scikit-learn. Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); without it that part is skipped with a message. A
subset of Fashion-MNIST (``fashion_train`` training and ``fashion_validation`` test images)
keeps the Hessians small on a CPU.

References:
    R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
    Independent Hessians. CVPR 2022.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_unlearn.lcodec import remove_sequentially
from pyro_unlearn.metrics import membership_attack

from . import json_safe
from .machine import machine_info

__all__ = [
    "FASHION_DIR",
    "FASHION_PACKAGE",
    "METHODS",
    "QUICK",
    "SCENARIOS",
    "Split",
    "digits",
    "fashion_mnist_files",
    "fashion_mnist",
    "make_model",
    "plot",
    "run",
    "train",
]

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}

#: The block selections compared, and the reference models beside them.
METHODS = ("foci", "random", "all")

#: Which samples are removed: K random training samples (the paper's protocol), or K training
#: samples whose labels were changed to a wrong class before training (a mislabelled shard).
SCENARIOS = ("random", "mislabelled")

#: Settings of a short run (``--quick`` and the test suite): fewer removals and perturbations,
#: smaller Fashion-MNIST subsets, and no full-Hessian update beyond 1000 parameters (the MLP's
#: takes seconds per removal on a CPU).
QUICK = dict(
    num_removals=8,
    num_perturbations=128,
    fashion_train=1000,
    fashion_validation=500,
    max_block_size=1000,
)


@dataclass
class Split:
    """Training data D = (x, y) and validation data (x_val, y_val); x flattened to (n, d)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


def digits(
    *,
    num_validation: int = 597,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Split:
    """sklearn's ``load_digits`` (1797 × 64, 10 classes), pixels / 16, shuffled by ``seed``;
    the last ``num_validation`` rows are held out.

    Example:
        >>> d = digits()
        >>> d.x.shape, d.x_val.shape, d.num_classes
        (torch.Size([1200, 64]), torch.Size([597, 64]), 10)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    x = torch.as_tensor(bunch.data[order] / 16.0, dtype=dtype, device=device)
    y = torch.as_tensor(bunch.target[order], dtype=torch.long, device=device)
    cut = len(y) - num_validation
    return Split("digits", x[:cut], y[:cut], x[cut:], y[cut:])


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def fashion_mnist_files(directory: str | os.PathLike | None = None) -> dict[str, Path]:
    """The four IDX ``.gz`` files of Fashion-MNIST in ``directory`` (else ``$FASHION_MNIST_DIR``,
    else ``/usr/share/datasets/fashion-mnist``), checked to exist but not read: what
    :func:`fashion_mnist` loads, found in a few microseconds.

    Arguments:
        directory: where the files are; ``None`` for the environment variable or the default.

    Returns:
        The paths by role: ``train_x``, ``train_y``, ``test_x``, ``test_y``.

    Raises:
        FileNotFoundError: naming the missing files and the Debian package.

    Example:
        >>> fashion_mnist_files("/nonexistent")
        Traceback (most recent call last):
        ...
        FileNotFoundError: Fashion-MNIST files [...] not found in /nonexistent: install ...
    """
    directory = Path(directory or os.environ.get("FASHION_MNIST_DIR") or FASHION_DIR)
    paths = {k: directory / name for k, name in _FASHION_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {directory}: install the Debian "
            f"package {FASHION_PACKAGE} (apt-get install {FASHION_PACKAGE}) or point "
            "FASHION_MNIST_DIR at a directory holding them"
        )
    return paths


def fashion_mnist(
    directory: str | os.PathLike | None = None,
    *,
    num_train: int | None = None,
    num_validation: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Split:
    """Fashion-MNIST from the IDX ``.gz`` files of the Debian package ``dataset-fashion-mnist``
    (``directory``, else ``$FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``);
    pixels / 255, flattened to 784. ``num_train``/``num_validation`` draw random subsets (by
    ``seed``) of the 60 000 training and 10 000 test images.

    Raises:
        FileNotFoundError: naming the Debian package, when the files are missing.
    """
    paths = fashion_mnist_files(directory)
    rng = np.random.default_rng(seed)

    def load(images, labels, size):
        x = _idx(images, 16).reshape(-1, 28 * 28)
        y = _idx(labels, 8)
        if len(x) != len(y):
            raise ValueError(f"{images.name} has {len(x)} images, {labels.name} {len(y)} labels")
        if size is not None:
            pick = rng.permutation(len(y))[:size]
            x, y = x[pick], y[pick]
        return (
            torch.as_tensor(x / 255.0, dtype=dtype, device=device),
            torch.as_tensor(y.astype(np.int64), device=device),
        )

    x, y = load(paths["train_x"], paths["train_y"], num_train)
    x_val, y_val = load(paths["test_x"], paths["test_y"], num_validation)
    return Split("fashion_mnist", x, y, x_val, y_val)


def make_model(kind: str, num_features: int, num_classes: int, hidden: int = 16) -> nn.Module:
    """The network: ``"logreg"`` is Linear(d, classes); ``"mlp"`` is Linear(d, hidden) → tanh →
    Linear(hidden, classes)."""
    if kind == "logreg":
        return nn.Sequential(nn.Linear(num_features, num_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)
        )
    raise ValueError(f"model must be 'logreg' or 'mlp', got {kind!r}")


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target, reduction="none")


def _objective(model: nn.Module, x, y, weight_decay: float) -> torch.Tensor:
    reg = sum(p.square().sum() for p in model.parameters())
    return _loss(model(x), y).mean() + 0.5 * weight_decay * reg


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    weight_decay: float,
    max_iter: int = 2000,
    tolerance: float = 1e-7,
) -> dict:
    """Full-batch L-BFGS (strong Wolfe) on mean cross-entropy + (λ_wd/2)‖w‖², in place, until
    the gradient's largest entry is below ``tolerance``; returns iterations, seconds, gradient
    norm and final objective."""
    start = time.perf_counter()
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=max_iter,
        history_size=50,
        tolerance_grad=tolerance,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = _objective(model, x, y, weight_decay)
        value.backward()
        return value

    opt.step(closure)
    value = _objective(model, x, y, weight_decay)
    grads = torch.autograd.grad(value, list(model.parameters()))
    state = opt.state[opt.param_groups[0]["params"][0]]
    return dict(
        iterations=int(state.get("n_iter", 0)),
        seconds=time.perf_counter() - start,
        grad_norm=float(torch.sqrt(sum(g.square().sum() for g in grads))),
        objective=float(value.detach()),
    )


def _evaluate(
    model: nn.Module, split: Split, removed: torch.Tensor, true_labels, weight_decay: float
) -> dict:
    keep = torch.ones(len(split.y), dtype=torch.bool, device=split.y.device)
    keep[removed] = False
    xr, yr = split.x[keep], split.y[keep]
    objective = _objective(model, xr, yr, weight_decay)
    grads = torch.autograd.grad(objective, list(model.parameters()))
    with torch.no_grad():

        def accuracy(x, y):
            return float((model(x).argmax(-1) == y).double().mean())

        return dict(
            acc_removed=accuracy(split.x[removed], split.y[removed]),
            acc_removed_true_label=accuracy(split.x[removed], true_labels),
            acc_remaining=accuracy(xr, yr),
            acc_validation=accuracy(split.x_val, split.y_val),
            loss_removed=float(_loss(model(split.x[removed]), split.y[removed]).mean()),
            residual_grad_norm=float(torch.sqrt(sum(g.square().sum() for g in grads))),
            # membership inference: the removed samples (their training labels) against the
            # validation samples; matched only for random removals (mislabelled ones differ)
            **membership_attack(
                _loss(model(split.x[removed]), split.y[removed]),
                _loss(model(split.x_val), split.y_val),
                folds=min(5, len(removed) // 2),
            ).columns("mia"),
        )


def _distance(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        pairs = zip(a.parameters(), b.parameters(), strict=True)
        return float(torch.sqrt(sum((p - q).square().sum() for p, q in pairs)))


def _mislabel(split: Split, rows: torch.Tensor, seed: int) -> Split:
    """A copy of ``split`` whose training labels at ``rows`` are moved to another class."""
    g = torch.Generator().manual_seed(seed + 1)
    shift = torch.randint(1, split.num_classes, (len(rows),), generator=g).to(split.y.device)
    y = split.y.clone()
    y[rows] = (y[rows] + shift) % split.num_classes
    return Split(split.name, split.x, y, split.x_val, split.y_val)


def _removal_request(
    split: Split, scenario: str, num_removals: int, seed: int
) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """Step 1: which ``num_removals`` training samples are removed (a seeded random draw) and,
    for ``"mislabelled"``, the split with their labels moved to a wrong class. Returns the split
    to train on, the removed rows and their true labels."""
    order = torch.randperm(
        len(split.y), generator=torch.Generator().manual_seed(seed), device="cpu"
    )[:num_removals]
    removed = order.to(split.y.device)
    true_labels = split.y[removed]
    if scenario == "mislabelled":
        split = _mislabel(split, removed, seed)
    elif scenario != "random":
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    return split, removed, true_labels


def _mean(steps: Sequence, attribute: str) -> float:
    return float(np.mean([getattr(s, attribute) for s in steps]))


def _removal_row(method: str, out) -> dict:
    """The row of one block selection's sequential removal: block size, slices (not for
    ``"all"``), seconds, the Hessian's shift, the removed gradient and how many were skipped."""
    steps = out.steps
    return dict(
        method=method,
        block_size=_mean(steps, "block_size"),
        slices=None if method == "all" else float(np.mean([len(s.selected) for s in steps])),
        seconds_per_removal=_mean(steps, "seconds"),
        seconds_selection=_mean(steps, "seconds_selection"),
        hessian_shift=float(max(s.hessian_shift for s in steps)),
        removed_grad_norm=_mean(steps, "removed_grad_norm"),
        skipped=len(out.skipped),
    )


def _remove_all(
    model: nn.Module,
    split: Split,
    removed: torch.Tensor,
    *,
    evaluate: Callable[[nn.Module], dict],
    methods: Sequence[str],
    max_block_size: int,
    seed: int,
    **options,
) -> tuple[dict[str, nn.Module], list[dict], list[str]]:
    """Step 2: remove the samples one at a time from the trained ``model`` with every block
    selection of ``methods`` (FOCI first: the random blocks take its sizes), by
    :func:`pyro_unlearn.lcodec.remove_sequentially`. Returns the unlearned models and their rows
    (with ``evaluate``'s columns) by method, and notes on what was skipped."""
    total = sum(p.numel() for p in model.parameters())
    models, rows, notes, foci_sizes = {}, [], [], None
    for method in [m for m in METHODS if m in methods]:
        if method == "all" and total > max_block_size:
            notes.append(
                f"the full Hessian ({total} parameters) exceeds max_block_size="
                f"{max_block_size}; 'all' skipped"
            )
            continue
        out = remove_sequentially(
            model, _loss, (split.x, split.y), removed, selection=method,
            num_random=foci_sizes if method == "random" else None, max_block_size=max_block_size,
            residual=False, generator=torch.Generator(device=split.x.device).manual_seed(seed),
            **options,
        )  # fmt: skip
        if method == "foci":
            foci_sizes = [len(s.selected) for s in out.steps]
        models[method] = out.model
        rows.append(_removal_row(method, out) | evaluate(out.model))
    return models, rows, notes


def _retrain(model: nn.Module, split: Split, removed: torch.Tensor, weight_decay: float):
    """Step 3: the target, a copy of ``model`` retrained on D_r by L-BFGS; and its fit."""
    keep = torch.ones(len(split.y), dtype=torch.bool, device=split.y.device)
    keep[removed] = False
    retrained = copy.deepcopy(model)
    refit = train(retrained, split.x[keep], split.y[keep], weight_decay=weight_decay)
    return retrained, refit


def _run_model(
    split: Split,
    kind: str,
    scenario: str,
    *,
    methods: Sequence[str],
    num_removals: int,
    num_perturbations: int,
    weight_decay: float,
    hidden: int,
    max_block_size: int,
    seed: int,
    progress: bool,
) -> dict:
    """One (data set, model, scenario): train, remove with every method, retrain, and evaluate
    every model (step 4) as it is made; returns ``{"rows", "training", "retraining", "notes"}``.
    """
    split, removed, true_labels = _removal_request(split, scenario, num_removals, seed)
    torch.manual_seed(seed)
    model = make_model(kind, split.x.shape[1], split.num_classes, hidden).to(split.x)
    fit = train(model, split.x, split.y, weight_decay=weight_decay)
    total = sum(p.numel() for p in model.parameters())

    def evaluate(m: nn.Module) -> dict:
        return _evaluate(m, split, removed, true_labels, weight_decay)

    original = dict(method="original", block_size=0, seconds_per_removal=None, skipped=0)
    rows = [original | evaluate(model)]
    models, removals, notes = _remove_all(
        model, split, removed, evaluate=evaluate, methods=methods, max_block_size=max_block_size,
        seed=seed, weight_decay=weight_decay, num_perturbations=num_perturbations,
        progress=progress,
    )  # fmt: skip
    retrained, refit = _retrain(model, split, removed, weight_decay)
    target = dict(method="retrained", block_size=total, seconds_per_removal=None, skipped=0)
    rows += [*removals, target | evaluate(retrained) | dict(seconds_retrain=refit["seconds"])]
    models = {"original": model, **models, "retrained": retrained}
    for row in rows:
        row.update(
            dataset=split.name,
            model=kind,
            scenario=scenario,
            num_parameters=total,
            distance_to_retrained=_distance(models[row["method"]], retrained),
        )
    notes = [f"{kind}: {note}" for note in notes]
    return dict(rows=rows, training=fit, retraining=refit, notes=notes)


def _checked(methods: Sequence[str], datasets: Sequence[str], scenarios: Sequence[str]) -> None:
    """Raise ``ValueError`` for an unknown method, data set or scenario, or ``"random"``
    without ``"foci"``."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods must be among {METHODS}, got {sorted(unknown)}")
    if "random" in methods and "foci" not in methods:
        raise ValueError("'random' takes its sizes from 'foci': run both")
    for name in datasets:
        if name not in ("digits", "fashion_mnist"):
            raise ValueError(f"datasets must be among 'digits', 'fashion_mnist'; got {name!r}")
    for scenario in scenarios:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenarios must be among {SCENARIOS}, got {scenario!r}")


def _load(name: str, settings: dict, fashion_dir, seed: int, device, dtype) -> Split:
    """The data set ``name``; ``FileNotFoundError`` when Fashion-MNIST is not installed."""
    if name == "digits":
        return digits(seed=seed, device=device, dtype=dtype)
    if name == "fashion_mnist":
        return fashion_mnist(
            fashion_dir,
            num_train=settings["fashion_train"],
            num_validation=settings["fashion_validation"],
            seed=seed,
            device=device,
            dtype=dtype,
        )
    raise ValueError(f"datasets must be among 'digits', 'fashion_mnist'; got {name!r}")


def run(
    *,
    datasets: Sequence[str] = ("digits", "fashion_mnist"),
    models: Sequence[str] = ("logreg", "mlp"),
    scenarios: Sequence[str] = SCENARIOS,
    methods: Sequence[str] = METHODS,
    num_removals: int = 30,
    num_perturbations: int = 256,
    weight_decay: float = 1e-3,
    hidden: int = 16,
    fashion_train: int = 3000,
    fashion_validation: int = 2000,
    fashion_dir: str | os.PathLike | None = None,
    max_block_size: int = 12_000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
    quick: bool = False,
) -> dict:
    """Run the comparison; returns a JSON-able dict with ``rows`` (one per dataset × model ×
    method, see the module docstring), ``training`` (L-BFGS fits), ``skipped`` (data sets that
    could not be loaded, with the reason), ``notes``, ``settings`` and ``machine``.
    ``quick=True`` applies :data:`QUICK`.

    Per (data set, model, scenario) the steps are: choose the removed samples, train, remove
    them with every block selection, retrain on D_r, and evaluate every model.

    References:
        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022 (Sec. 7.1, Fig. 5).

    Example (not run: a minute on a CPU)::

        results = run(datasets=("digits",), models=("logreg",), quick=True)
        [(r["method"], r["acc_removed"]) for r in results["rows"]]
    """
    _checked(methods, datasets, scenarios)
    settings = dict(
        num_removals=num_removals, num_perturbations=num_perturbations,
        fashion_train=fashion_train, fashion_validation=fashion_validation,
        max_block_size=max_block_size,
    )  # fmt: skip
    if quick:
        settings.update(QUICK)
    settings.update(
        datasets=list(datasets), models=list(models), scenarios=list(scenarios),
        methods=list(methods), weight_decay=weight_decay, hidden=hidden, seed=seed,
    )  # fmt: skip
    device = torch.device(device)
    results: dict = dict(rows=[], training={}, skipped={}, notes=[], settings=settings)
    results["machine"] = machine_info(device, dtype)
    for name in datasets:
        try:
            split = _load(name, settings, fashion_dir, seed, device, dtype)
        except FileNotFoundError as e:
            results["skipped"][name] = str(e)
            continue
        for kind, scenario in itertools.product(models, settings["scenarios"]):
            out = _run_model(
                split, kind, scenario, methods=methods, num_removals=settings["num_removals"],
                num_perturbations=settings["num_perturbations"], weight_decay=weight_decay,
                hidden=hidden, max_block_size=settings["max_block_size"], seed=seed,
                progress=progress,
            )  # fmt: skip
            results["rows"] += out["rows"]
            results["training"][f"{name}/{kind}/{scenario}"] = dict(
                fit=out["training"], refit=out["retraining"]
            )
            results["notes"] += [n for n in out["notes"] if n not in results["notes"]]
    results["rows"] = [{k: json_safe(v) for k, v in row.items()} for row in results["rows"]]
    return results


def plot(results: dict, title: str | None = None):
    """Bars per (data set, model, scenario) and method: accuracy and mean loss on the removed
    samples, validation accuracy, residual gradient norm on D_r, distance to the retrained
    model, seconds per removal."""
    import matplotlib.pyplot as plt

    groups = sorted({(r["dataset"], r["model"], r["scenario"]) for r in results["rows"]})
    metrics = {
        "acc_removed": "accuracy on removed",
        "loss_removed": "loss on removed",
        "acc_validation": "validation accuracy",
        "residual_grad_norm": "‖∇F_r(w)‖ on D_r",
        "distance_to_retrained": "‖w − w_retrained‖",
        "seconds_per_removal": "seconds per removal",
    }
    order = ["original", *METHODS, "retrained"]
    fig, axes = plt.subplots(
        len(groups), len(metrics), figsize=(2.7 * len(metrics), 2.6 * len(groups)), squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row_axes, group in zip(axes, groups, strict=True):
        rows = {
            r["method"]: r
            for r in results["rows"]
            if (r["dataset"], r["model"], r["scenario"]) == group
        }
        names = [m for m in order if m in rows]
        for ax, (key, label) in zip(row_axes, metrics.items(), strict=True):
            values = [rows[m].get(key) for m in names]
            values = [np.nan if v is None else v for v in values]
            ax.bar(range(len(names)), values, color=[colors[order.index(m)] for m in names])
            ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
            ax.set_title(f"{', '.join(group)}:\n{label}", fontsize=9)
            if key.startswith("acc"):
                finite = [v for v in values if np.isfinite(v)]
                ax.set_ylim(max(0.0, min(finite) - 0.05), 1.0 + 0.02 * (min(finite) < 0.5))
            if key == "residual_grad_norm":
                ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
