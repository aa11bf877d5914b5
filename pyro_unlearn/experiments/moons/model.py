"""The authors' sparse-GP classifier on the moons, in plain Pyro: their fixed kernel and model."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "INVERSE_SQUARED_LENGTHSCALES",
    "VARIANCE",
    "SparseGPClassifier",
    "kernel",
]

#: The authors' fixed kernel: variance and ℓ (inverse squared lengthscales).
VARIANCE = 4.7432
INVERSE_SQUARED_LENGTHSCALES = (2.4232, 1.8230)


def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The authors' squared-exponential kernel, ℓ multiplying the squared distance:

        k(a_i, b_j) = 4.7432 · exp(−½ Σ_d ℓ_d (a_id − b_jd)²),   ℓ = (2.4232, 1.8230).

    Arguments:
        a: inputs of shape (N, 2).
        b: inputs of shape (M, 2).

    Returns:
        The Gram matrix, shape (N, M), in ``a``'s dtype and device.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 4.1; the kernel of the authors' code).

    Example:
        >>> kernel(torch.zeros(1, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        tensor([[4.7432, 1.4121]])
    """
    ell = a.new_tensor(INVERSE_SQUARED_LENGTHSCALES)
    return VARIANCE * torch.exp(-0.5 * ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2 * ell).sum(-1))


class SparseGPClassifier:
    """The authors' sparse-GP classifier as a Pyro model ``model(x, y=None)``:

        u ~ N(0, K_uu),   y_n ~ Bernoulli(sigmoid(a_n · u)),   A = K_xu K_uu⁻¹ (rows a_n),

    with y in the plate ``"data"``: the logit is the conditional mean of f(x) given the inducing
    values u = f(X_u) only. No jitter: K_uu's smallest eigenvalue on the moons is 3·10⁻³ and its
    Cholesky succeeds (a jitter would be added, and recorded in ``jitter``, only if it failed).
    Particle-vectorised: a u of shape (..., 1, M) gives logits of shape (..., N).

    Arguments:
        inducing: the fixed inducing inputs X_u, shape (M, 2).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 4.1, Fig. 2).

    Example:
        >>> from pyro_unlearn.experiments.datasets import moons
        >>> data = moons()
        >>> model = SparseGPClassifier(data.inducing)
        >>> model.jitter, model(data.x).shape
        (0.0, torch.Size([100]))
    """

    def __init__(self, inducing: torch.Tensor) -> None:
        self.inducing = inducing
        k_uu = kernel(inducing, inducing)
        eye = torch.eye(len(inducing), dtype=inducing.dtype, device=inducing.device)
        self.jitter = 0.0  # the authors used none; the smallest that works if Cholesky fails
        scale_tril, info = torch.linalg.cholesky_ex(k_uu)
        while info:
            self.jitter = self.jitter * 10 or 1e-8 * VARIANCE
            scale_tril, info = torch.linalg.cholesky_ex(k_uu + self.jitter * eye)
        self.scale_tril = scale_tril  # Cholesky factor of K_uu (+ jitter)

    def projection(self, x: torch.Tensor) -> torch.Tensor:
        """A = K_xu K_uu⁻¹, shape (N, M): the logits are A u."""
        return torch.cholesky_solve(kernel(self.inducing, x), self.scale_tril).mT

    def prior(self) -> dist.MultivariateNormal:
        """p(u) = N(0, K_uu)."""
        return dist.MultivariateNormal(
            self.scale_tril.new_zeros(len(self.inducing)), scale_tril=self.scale_tril
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        u = pyro.sample("u", self.prior())
        logits = u @ self.projection(x).mT  # A u as one matrix product
        if u.dim() > 1:  # u (..., 1, M): its data-plate slot gives way to the N logits
            logits = logits.squeeze(-2)
        with pyro.plate("data", x.shape[-2]):
            return pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)
