"""The attackers of :mod:`pyro_unlearn.metrics.membership` in NumPy: AUC, a fitted threshold,
L2-penalised logistic regression and stratified cross-validation."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["auc", "cross_validate", "fit_logistic", "fit_threshold", "stratified_folds"]


def auc(member: np.ndarray, score: np.ndarray) -> float:
    """P(score_member > score_non-member) + ½ P(tie), from average ranks (Mann–Whitney U)."""
    from scipy.stats import rankdata

    positive = member == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_threshold(score: np.ndarray, member: np.ndarray) -> tuple[float, float]:
    """The threshold τ and direction d ∈ {1, −1} maximising the accuracy of "member iff
    d·(score − τ) > 0" on these examples: every cut between distinct sorted scores, both
    directions, at once."""
    order = np.argsort(score, kind="stable")
    s, m = score[order], member[order]
    n = len(s)
    below = np.concatenate([[0], np.cumsum(m)])  # members among the k lowest scores
    k = np.arange(n + 1)
    accuracy_up = ((m.sum() - below) + (k - below)) / n  # members above the cut
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[:-1] < s[1:]  # a cut between tied scores is no threshold
    best = np.where(valid, np.maximum(accuracy_up, 1 - accuracy_up), -1.0)
    cut = int(np.argmax(best))
    direction = 1.0 if accuracy_up[cut] >= 1 - accuracy_up[cut] else -1.0
    if cut == 0:
        return -math.inf, direction
    if cut == n:
        return math.inf, direction
    return float((s[cut - 1] + s[cut]) / 2), direction


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, max_steps: int = 100, tol: float = 1e-12
) -> tuple[np.ndarray, float]:
    r"""Logistic regression with an L2 penalty on the weights (C = 1) and a free intercept:

    .. math:: \min_{w, b} \sum_n \log(1 + e^{z_n}) − y_n z_n + ½‖w‖², \qquad z_n = x_n^\top w + b

    (scikit-learn's ``LogisticRegression()``), by Newton's method with backtracking: the
    objective is strictly convex, so this is its unique minimiser, to ``tol`` in the Newton
    decrement. Both classes must be present. Returns ``(w, b)``.
    """
    design = np.concatenate([x, np.ones((len(x), 1))], 1)
    penalty = np.concatenate([np.ones(x.shape[1]), [0.0]])

    def objective(beta: np.ndarray) -> float:
        z = design @ beta
        return float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * (penalty * beta**2).sum())

    beta = np.zeros(design.shape[1])
    value = objective(beta)
    for _ in range(max_steps):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ beta)))  # σ(z), without overflow
        gradient = design.T @ (p - y) + penalty * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        decrement = float(gradient @ step)
        if decrement < tol:
            break
        t = 1.0
        while objective(beta - t * step) > value - 0.25 * t * decrement and t > 1e-10:
            t *= 0.5
        beta = beta - t * step
        value = objective(beta)
    return beta[:-1], float(beta[-1])


def stratified_folds(size: int, folds: int, seed: int) -> np.ndarray:
    """The test fold of each of ``2 size`` examples, ``size`` of one group then ``size`` of the
    other: scikit-learn's ``StratifiedKFold(folds, shuffle=True, random_state=seed)`` split of
    these labels (each group dealt round-robin over the folds, then shuffled by NumPy's legacy
    ``RandomState(seed)``, whose stream NumPy keeps fixed)."""
    rng = np.random.RandomState(seed)
    group = np.repeat([0, 1], size)
    allocation = np.stack([np.bincount(group[i::folds], minlength=2) for i in range(folds)])
    fold = []
    for k in range(2):
        of_group = np.arange(folds).repeat(allocation[:, k])
        rng.shuffle(of_group)
        fold.append(of_group)
    return np.concatenate(fold)


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return (train - mean) / sd, (test - mean) / sd


def cross_validate(
    x_m: np.ndarray, x_n: np.ndarray, folds: int, repeats: int, rng: np.random.Generator
) -> dict[str, float]:
    """Both attacks' held-out scores on balanced subsamples of the members' (``x_m``) and the
    non-members' (``x_n``) features, the loss in column 0: ``threshold_accuracy``,
    ``logistic_accuracy`` and ``logistic_auc``, averaged over ``repeats`` subsamples and their
    stratified ``folds``-fold splits."""
    size = min(len(x_m), len(x_n))
    member = np.concatenate([np.ones(size), np.zeros(size)])
    threshold_correct = logistic_correct = 0.0
    logistic_aucs = []
    for _ in range(repeats):  # each repeat: a subsample, a split and `folds` tiny fits
        x = np.concatenate(
            [x_m[rng.permutation(len(x_m))[:size]], x_n[rng.permutation(len(x_n))[:size]]]
        )
        fold_of = stratified_folds(size, folds, int(rng.integers(2**31)))
        for fold in range(folds):
            train, test = fold_of != fold, fold_of == fold
            tau, direction = fit_threshold(-x[train, 0], member[train])
            guess = direction * (-x[test, 0] - tau) > 0
            threshold_correct += float((guess == member[test]).sum())
            x_train, x_test = _standardised(x[train], x[test])
            w, b = fit_logistic(x_train, member[train])
            logit = x_test @ w + b
            logistic_correct += float(((logit > 0) == member[test]).sum())
            logistic_aucs.append(auc(member[test], logit))
    total = 2 * size * repeats
    return {
        "threshold_accuracy": threshold_correct / total,
        "logistic_accuracy": logistic_correct / total,
        "logistic_auc": float(np.mean(logistic_aucs)),
    }
