"""Membership inference: can an attacker tell the examples a posterior was trained on?"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..validation import check_nonnegative_int
from ._classifiers import auc, cross_validate
from ._sampling import PredictiveSite

__all__ = [
    "MembershipAttack",
    "loss_and_entropy",
    "membership_attack",
    "membership_inference",
    "per_example_loss",
]


def per_example_loss(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str = "y",
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.Tensor:
    r"""The negative log predictive density of every example of the observed site ``site``:

    .. math:: ℓ_n = −\log \frac1S \sum_{s=1}^S p(y_n|x_n, θ_s)
              = −\mathrm{logsumexp}_s \log p(y_n|x_n, θ_s) + \log S, \qquad θ_s \sim q(θ)

    with the S θ-samples in one plate (as :func:`~pyro_unlearn.metrics.predictive_distribution`),
    without gradients. An example is one entry of the site's batch shape: reinterpreted event
    dims (``to_event``) are scored jointly, unlike
    :func:`~pyro_unlearn.metrics.log_predictive_density`, which splits them into points. Any
    site distribution with a ``log_prob`` works.

    Arguments:
        model: the Pyro model.
        posterior: q(θ): a live AutoGuide, a guide function or a
            :class:`~pyro_unlearn.FrozenPosterior`.
        *args: the model's arguments, its observations included.
        site: the name of the observed sample site.
        num_samples: S, the θ-samples.
        **kwargs: the model's keyword arguments.

    Returns:
        ℓ_n, a tensor of the site's batch shape.

    Raises:
        ValueError: the site was not observed.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y=None):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", 2):
        ...         return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def guide(y=None):  # θ is a point mass at mu = 0: ℓ = ½ y² + ½ log 2π
        ...     pyro.sample("mu", dist.Delta(torch.tensor(0.0)))
        >>> per_example_loss(model, guide, torch.tensor([0.0, 2.0]), num_samples=1)
        tensor([0.9189, 2.9189])
    """
    return _scores(model, posterior, args, kwargs, site, num_samples, entropy=False)[0]


def _scores(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    site: str,
    num_samples: int,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ℓ_n (:func:`per_example_loss`) and, with ``entropy``, the entropy of each example's
    Monte-Carlo predictive (summed over event dims), from the same θ-samples."""
    found = PredictiveSite(model, posterior, args, kwargs, site, num_samples)
    observed = found.observed("per_example_loss")
    batch = found.shape[: len(found.shape) - found.event_dims]
    with torch.no_grad():
        log_p = found.fn.log_prob(observed.unsqueeze(found.sample_dim)).expand(batch)
        loss = math.log(num_samples) - torch.logsumexp(log_p, dim=found.sample_dim)
        if not entropy:
            return loss, None
        found.check_discrete(
            "the predictive entropy feature",
            "is a Normal (its Monte-Carlo predictive is a mixture without a closed-form "
            "entropy): pass entropy=False, or extra features to membership_attack",
        )
        h = found.predictive().entropy()
        if found.event_dims:
            h = h.sum(tuple(range(-found.event_dims, 0)))
    return loss, h


def loss_and_entropy(log_p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two features of the attacks, from a classifier's predictive class log-probabilities:
    the loss and the entropy of each example's predictive,

    .. math:: ℓ_n = −\log p(y_n|x_n), \qquad H_n = −\sum_c p(c|x_n) \log p(c|x_n)

    For predictives computed outside a Pyro model (a quadrature, a network's softmax); from a
    model and a posterior, :func:`per_example_loss` and :func:`membership_inference` compute
    them.

    Arguments:
        log_p: log p(c|x_n), shape ``(N, C)``.
        y: the observed classes y_n, shape ``(N,)`` (integers, or floats holding integers).

    Returns:
        ``(loss, entropy)``, each of shape ``(N,)``.

    Example:
        >>> log_p = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64).log()
        >>> loss, entropy = loss_and_entropy(log_p, torch.tensor([0, 0]))
        >>> loss.round(decimals=3).tolist(), entropy.round(decimals=3).tolist()
        ([0.693, 0.105], [0.693, 0.325])
    """
    loss = -log_p.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
    return loss, -(log_p.exp() * log_p).sum(-1)


@dataclass(frozen=True)
class MembershipAttack:
    """What :func:`membership_attack` returns: how well an attacker tells members (examples the
    model was trained on) from non-members by their losses.

    0.5 (accuracy and AUC) is chance: nothing to tell; 1 is a perfect attack. An AUC below 0.5
    means the members have *higher* losses than the non-members (e.g. an over-unlearned model);
    the threshold attack, which learns its direction, then scores above 0.5 again.

    Attributes:
        threshold_accuracy: cross-validated accuracy of the loss-threshold attack.
        threshold_auc: AUC of the score −loss for "member" over all examples (the
            Mann–Whitney statistic; threshold-free, nothing fitted).
        logistic_accuracy: cross-validated accuracy of logistic regression on the features.
        logistic_auc: its cross-validated AUC (mean over held-out folds).
        num_members: the members given.
        num_nonmembers: the non-members given.
        num_balanced: examples per group in each balanced subsample (the smaller group's size).
        folds: the cross-validation's folds.
        repeats: its repeats over subsamples.
    """

    threshold_accuracy: float
    threshold_auc: float
    logistic_accuracy: float
    logistic_auc: float
    num_members: int
    num_nonmembers: int
    num_balanced: int
    folds: int
    repeats: int

    @staticmethod
    def column_names(prefix: str = "mia") -> tuple[str, ...]:
        """The names :meth:`columns` gives the four scores: ``{prefix}_accuracy`` and
        ``{prefix}_auc`` (the threshold attack), ``{prefix}_logistic_accuracy`` and
        ``{prefix}_logistic_auc``."""
        scores = ("accuracy", "auc", "logistic_accuracy", "logistic_auc")
        return tuple(f"{prefix}_{score}" for score in scores)

    def columns(self, prefix: str = "mia") -> dict[str, float]:
        """The four scores as table columns, named by :meth:`column_names`."""
        scores = (self.threshold_accuracy, self.threshold_auc)
        scores += (self.logistic_accuracy, self.logistic_auc)
        return dict(zip(self.column_names(prefix), scores, strict=True))


def _as_array(name: str, values: Any, ndim: int) -> np.ndarray:
    """A float64 NumPy copy of ``values`` (tensor or array) with ``ndim`` dims, checked."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if ndim == 2 and array.ndim == 1:
        array = array[:, None]
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s), got shape {tuple(array.shape)}")
    if len(array) == 0:
        raise ValueError(f"{name} is empty: each group needs at least one example")
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(bad.reshape(len(array), -1).any(-1).argmax())
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or ±inf), the first at row "
            f"{row} ({array[row].reshape(-1)[bad[row].reshape(-1)][0]})"
        )
    return array


def _attack_features(
    member_losses: Any, nonmember_losses: Any, features: tuple[Any, Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The members' and the non-members' feature matrices, the loss in column 0, checked."""
    loss_m = _as_array("member_losses", member_losses, 1)
    loss_n = _as_array("nonmember_losses", nonmember_losses, 1)
    if features is None:
        return loss_m[:, None], loss_n[:, None]
    if not isinstance(features, (tuple, list)) or len(features) != 2:
        raise ValueError(
            "features must be a pair (member_features, nonmember_features), got "
            f"{type(features).__name__}"
        )
    extra_m = _as_array("member features", features[0], 2)
    extra_n = _as_array("nonmember features", features[1], 2)
    for name, extra, loss in (("member", extra_m, loss_m), ("nonmember", extra_n, loss_n)):
        if len(extra) != len(loss):
            raise ValueError(
                f"{name} features have {len(extra)} rows but there are {len(loss)} {name} "
                "losses: one row per example"
            )
    if extra_m.shape[1] != extra_n.shape[1]:
        raise ValueError(
            f"member features have {extra_m.shape[1]} columns, nonmember features "
            f"{extra_n.shape[1]}: the same features for both groups"
        )
    return np.concatenate([loss_m[:, None], extra_m], 1), np.concatenate(
        [loss_n[:, None], extra_n], 1
    )


def _check_cross_validation(folds: Any, repeats: Any, num_members: int, num_nonmembers: int):
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if min(num_members, num_nonmembers) < folds:  # checked after the types above
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {folds} examples in each group; got "
            f"{num_members} members and {num_nonmembers} non-members"
        )


def membership_attack(
    member_losses: torch.Tensor | np.ndarray,
    nonmember_losses: torch.Tensor | np.ndarray,
    *,
    features: tuple[Any, Any] | None = None,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
) -> MembershipAttack:
    r"""Membership-inference attacks on per-example losses.

    Members are the examples a model was trained on (for unlearning, the erased D_e);
    non-members are held-out examples from the same distribution. Two attackers:

    - **Loss threshold** (Yeom et al. 2018): "member iff d·(τ − ℓ) > 0"; τ and the direction
      d ∈ {1, −1} maximise the accuracy on the training folds and the rule is scored on the
      held-out fold (d = −1 catches members whose losses are *higher*, e.g. after
      over-unlearning). ``threshold_auc`` is the AUC of the score −ℓ over all examples,
      P(ℓ_member < ℓ_non-member) + ½ P(tie) (the Mann–Whitney statistic): threshold-free.
    - **Logistic regression** (an attack model in the spirit of Shokri et al. 2017) on the loss
      and the optional extra ``features``, standardised by the training folds' mean and sd;
      L2-penalised with C = 1 and an unpenalised intercept (scikit-learn's defaults, fitted
      exactly by Newton's method); accuracy and AUC on the held-out folds.

    Both accuracies come from stratified ``folds``-fold cross-validation (scikit-learn's
    ``StratifiedKFold(shuffle=True)`` split) on a **balanced** sample: the larger group is
    subsampled to the smaller one's size, so that 0.5 is chance. With ``repeats`` > 1 the
    subsample and the folds are drawn again and the scores averaged (more of the larger group
    used, less split noise). Works on plain tensors or arrays, so on any model or network.

    Arguments:
        member_losses: ℓ of each member, shape ``(n_m,)``.
        nonmember_losses: ℓ of each non-member, shape ``(n_n,)``.
        features: ``(member_features, nonmember_features)``, arrays of shape ``(n, k)`` or
            ``(n,)`` for the logistic attack (e.g. the predictive entropy).
        folds: the cross-validation's folds, at least 2.
        repeats: subsamples and splits drawn, at least 1.
        seed: seeds the subsamples and the splits.

    Returns:
        A :class:`MembershipAttack`.

    Raises:
        ValueError: a group has fewer than ``folds`` examples, a value is not finite, the
            features do not match the losses, or ``folds``/``repeats`` are out of range.

    References:
        R. Shokri, M. Stronati, C. Song, V. Shmatikov. Membership Inference Attacks Against
        Machine Learning Models. IEEE Symposium on Security and Privacy, 2017.

        S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha. Privacy Risk in Machine Learning:
        Analyzing the Connection to Overfitting. IEEE Computer Security Foundations
        Symposium, 2018.

    Example:
        >>> members, nonmembers = torch.arange(10.0), torch.arange(10.0) + 20  # members: lower
        >>> attack = membership_attack(members, nonmembers)
        >>> attack.threshold_accuracy, attack.threshold_auc, attack.logistic_accuracy
        (1.0, 1.0, 1.0)
    """
    x_m, x_n = _attack_features(member_losses, nonmember_losses, features)
    _check_cross_validation(folds, repeats, len(x_m), len(x_n))
    check_nonnegative_int("seed", seed)
    labels = np.concatenate([np.ones(len(x_m)), np.zeros(len(x_n))])
    threshold_auc = auc(labels, -np.concatenate([x_m[:, 0], x_n[:, 0]]))
    scores = cross_validate(x_m, x_n, folds, repeats, np.random.default_rng(seed))
    return MembershipAttack(
        threshold_auc=threshold_auc,
        **scores,
        num_members=len(x_m),
        num_nonmembers=len(x_n),
        num_balanced=min(len(x_m), len(x_n)),
        folds=folds,
        repeats=repeats,
    )


def membership_inference(
    model: Callable[..., Any],
    posteriors: dict[str, Callable[..., Any]],
    members: Sequence[Any],
    nonmembers: Sequence[Any],
    *,
    site: str = "y",
    num_samples: int = 100,
    entropy: bool = False,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
) -> dict[str, MembershipAttack]:
    """:func:`membership_attack` on each named posterior, from the members' and non-members'
    :func:`per_example_loss` under it.

    For unlearning: members = D_e, non-members = held-out examples from D_e's distribution;
    the retrained posterior's scores are the target (0.5 when the two groups are alike),
    q(θ|D)'s the baseline.

    Arguments:
        model: the Pyro model.
        posteriors: ``{name: posterior}``, at least one.
        members: the model's arguments for the members, observations included, e.g.
            ``(x_e, y_e)``.
        nonmembers: the same for the non-members, e.g. ``(x_test, y_test)``.
        site: the name of the observed sample site.
        num_samples: θ-samples of each predictive.
        entropy: add the entropy of each example's Monte-Carlo predictive as a feature of the
            logistic attack (Bernoulli and Categorical sites).
        folds: as in :func:`membership_attack`.
        repeats: as in :func:`membership_attack`.
        seed: as in :func:`membership_attack`.

    Returns:
        ``{name: MembershipAttack}``, in the order of ``posteriors``.

    References:
        R. Shokri, M. Stronati, C. Song, V. Shmatikov. Membership Inference Attacks Against
        Machine Learning Models. IEEE Symposium on Security and Privacy, 2017.

        S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha. Privacy Risk in Machine Learning:
        Analyzing the Connection to Overfitting. IEEE Computer Security Foundations
        Symposium, 2018.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y=None):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def at(m):
        ...     return lambda y=None: pyro.sample("mu", dist.Delta(torch.tensor(m)))
        >>> seen, unseen = (torch.linspace(-0.5, 0.5, 10),), (torch.linspace(3.0, 4.0, 10),)
        >>> attacks = membership_inference(model, {"fit": at(0.0), "far": at(10.0)}, seen, unseen)
        >>> attacks["fit"].threshold_auc, attacks["far"].threshold_auc  # far: members *worse*
        (1.0, 0.0)
    """
    if not isinstance(posteriors, Mapping) or not posteriors:
        raise ValueError("posteriors is empty: give at least one {name: posterior}")
    for what, data in (("members", members), ("nonmembers", nonmembers)):
        if not isinstance(data, (tuple, list)):
            raise TypeError(
                f"{what} must be the model's arguments as a tuple, e.g. (x_e, y_e), got "
                f"{type(data).__name__}"
            )
    out = {}
    for name, posterior in posteriors.items():
        scored = [
            _scores(model, posterior, tuple(a), {}, site, num_samples, entropy)
            for a in (members, nonmembers)
        ]
        (loss_m, h_m), (loss_n, h_n) = scored
        extra = None if not entropy else (h_m.reshape(-1), h_n.reshape(-1))
        out[name] = membership_attack(
            loss_m.reshape(-1),
            loss_n.reshape(-1),
            features=extra,
            folds=folds,
            repeats=repeats,
            seed=seed,
        )
    return out
