"""Hessian-vector products of a mini-batched loss by double backprop, on flat parameter vectors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = ["MiniBatchHessian", "flatten", "unflatten"]


def flatten(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The tensors, flattened and concatenated into one vector of ``dtype``."""
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def unflatten(vector: torch.Tensor, like: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of :func:`flatten`: views of ``vector`` shaped as the tensors ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vector[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


class MiniBatchHessian:
    r"""v ↦ (H + δI) v for F(γ) = Σ_b w_b L_b(γ) / Σ_b w_b, by double backprop.

    With ``retain`` each mini-batch's gradient graph is kept for all products (one forward pass
    over the data); otherwise every product re-runs ``batch_loss`` on each mini-batch.

    Arguments:
        batch_loss: b ↦ (L_b(γ), w_b): one forward pass on mini-batch b; w_b is its share of the
            data, ``None`` when the loss is not scaled (allowed only for a single batch).
        batches: the mini-batches, re-iterable.
        tensors: γ, leaf tensors that require grad.
        damping: δ ≥ 0.
        retain: keep the gradient graphs between products.

    Attributes:
        gradient: ∇F(γ), flat.
        num_batches: the number of mini-batches.
        products: the Hessian-vector products taken so far.
    """

    def __init__(
        self,
        batch_loss: Callable[[Any], tuple[torch.Tensor, float | None]],
        batches: Iterable,
        tensors: list[torch.Tensor],
        damping: float,
        retain: bool,
    ) -> None:
        self.batch_loss, self.batches, self.tensors = batch_loss, batches, tensors
        self.damping, self.retain = damping, retain
        self.dtype = tensors[0].dtype
        self.products = 0
        self.graphs: list[tuple[torch.Tensor, ...]] = []
        gradient = torch.zeros(sum(t.numel() for t in tensors), dtype=self.dtype)
        gradient = gradient.to(tensors[0].device)
        weights, unscaled = [], 0
        for batch in batches:
            grads, weight = self._gradient(batch, create_graph=retain)
            weights.append(1.0 if weight is None else weight)
            unscaled += weight is None
            gradient += weights[-1] * flatten((g.detach() for g in grads), self.dtype)
            if retain:
                self.graphs.append(grads)
        if len(weights) > 1 and unscaled:
            raise ValueError(
                f"remaining has {len(weights)} mini-batches, but the model subsamples no plate "
                "on them: each mini-batch's −ELBO must estimate −ELBO(γ; D_r), as in mini-batch "
                "SVI. Write the data plate as pyro.plate('data', size=len(D_r), "
                "subsample=batch_indices), or pass D_r as one tuple"
            )
        if not weights:
            raise ValueError("remaining holds no mini-batch: BIF needs D_r")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.num_batches = len(weights)
        self.gradient = gradient / total

    def _gradient(self, batch: Any, create_graph: bool) -> tuple[tuple[torch.Tensor, ...], Any]:
        loss, weight = self.batch_loss(batch)
        grads = torch.autograd.grad(
            loss, self.tensors, create_graph=create_graph, allow_unused=True, materialize_grads=True
        )
        return grads, weight

    def _product(self, grads: tuple[torch.Tensor, ...], vector: torch.Tensor) -> torch.Tensor:
        pairs = zip(grads, unflatten(vector, self.tensors), strict=True)
        used = [(g, v) for g, v in pairs if g.requires_grad]
        if not used:  # the loss is linear in γ
            return torch.zeros_like(vector)
        out = torch.autograd.grad(
            [g for g, _ in used],
            self.tensors,
            grad_outputs=[v for _, v in used],
            retain_graph=self.retain,
            allow_unused=True,
            materialize_grads=True,
        )
        return flatten((o.detach() for o in out), self.dtype)

    def _batch_grads(self) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        if self.retain:
            yield from enumerate(self.graphs)
        else:
            for index, batch in enumerate(self.batches):
                yield index, self._gradient(batch, create_graph=True)[0]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """(H + δI) v over all mini-batches."""
        self.products += 1
        total = torch.zeros_like(vector)
        for index, grads in self._batch_grads():
            total += self.weights[index] * self._product(grads, vector)
        return total + self.damping * vector

    def per_batch(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Endlessly, mini-batch after mini-batch: v ↦ (H_b + δI) v, with H_b the Hessian of
        mini-batch b's estimate L_b of F (LiSSA's stochastic products)."""
        while True:
            for _, grads in self._batch_grads():

                def product(vector, grads=grads):
                    self.products += 1
                    return self._product(grads, vector) + self.damping * vector

                yield product
