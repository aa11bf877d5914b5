"""The ``unlearn`` effect handler: flags the erased observations D_e of a model.

The unlearning losses read log p(D_e|θ) only from flagged sites (:func:`erased_log_likelihood`);
priors, ``pyro.factor`` sites and unflagged observations are never part of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_factor, site_is_subsample

from .traces import sum_per_particle

__all__ = ["UnlearnMessenger", "unlearn", "erased_log_likelihood", "ERASED"]

#: Key of ``msg["infer"]`` under which a site's erased rows are flagged: ``True`` (the whole site)
#: or a boolean tensor that broadcasts against the site's ``log_prob``.
ERASED = "erased"

_WHOLE = object()  # marks "every row of this site"


def _as_row_spec(value: Any, what: str) -> torch.Tensor:
    """Validate erased rows given as indices or a boolean mask (1-D)."""
    if isinstance(value, torch.Tensor):
        rows = value.detach()
    elif isinstance(value, np.ndarray | Sequence | range) and not isinstance(value, str | bytes):
        rows = torch.as_tensor(np.asarray(value), device="cpu")
    else:
        raise TypeError(
            f"{what} must be indices or a boolean mask (tensor, array or list), got {type(value)}"
        )
    if rows.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(rows.shape)}")
    if rows.numel() == 0:
        raise ValueError(f"{what} is empty: there is nothing to erase")
    if rows.dtype == torch.bool:
        if not bool(rows.any()):
            raise ValueError(f"{what} is an all-False mask: the erased set is empty")
        return rows
    if rows.is_floating_point() or rows.is_complex():
        raise TypeError(f"{what} must be integer indices or a boolean mask, got {rows.dtype}")
    if bool((rows < 0).any()):
        raise ValueError(f"{what} has negative indices; give positions 0..N-1 in the plate")
    if rows.unique().numel() != rows.numel():
        raise ValueError(f"{what} has duplicate indices: each erased row must be named once")
    return rows.long()


class UnlearnMessenger(Messenger):
    """Flags the erased observations D_e so that the unlearning losses can read log p(D_e|θ).

    * ``erased=None``: every observed site in the call is erased data (pass D_e as the model's
      arguments).
    * ``erased=rows`` and ``plate="data"``: the rows (indices or a boolean mask over the plate's
      full size) of every observed site inside that plate. Works when the plate subsamples: a
      batch position is mapped to its data index through the plate's subsample site.
    * ``erased={"y": rows, "z": None}``: per observed site; ``None`` erases the whole site.
      ``plate`` is then a plate name or a ``{site: plate}`` dict.

    Plates without a size (e.g. GPyTorch's ``data_plate``) emit no subsample site: there the rows
    are taken positionally within the batch.

    The handler only annotates ``msg["infer"]`` and never changes a distribution, a prior or a
    scale, so the model behaves exactly as before under any other inference algorithm.

    Arguments:
        erased: ``None`` (every observation), rows of ``plate`` (indices or a boolean mask over
            its full size), or ``{site: rows or None}``.
        plate: the name of the plate the rows index, or ``{site: plate name}``.

    Raises:
        ValueError: on an empty, duplicated or negative row set, rows without a plate, and (on
            leaving the handler) a named site or plate the model never ran.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (the erased data D_e ⊂ D whose likelihood the losses divide out).

    Example:

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> tr = pyro.poutine.trace(unlearn(model, erased=[0, 2], plate="data")).get_trace(
        ...     torch.zeros(4))
        >>> tr.nodes["y"]["infer"]["erased"].tolist()
        [True, False, True, False]
    """

    def __init__(
        self,
        erased: Any = None,
        plate: str | Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if erased is None:
            if plate is not None:
                raise ValueError("plate was given without erased rows; pass erased=indices too")
            self._spec: dict[str | None, Any] = {None: _WHOLE}
        elif isinstance(erased, Mapping):
            if not erased:
                raise ValueError("erased is an empty dict: name at least one observed site")
            self._spec = {
                str(site): _WHOLE if rows is None else _as_row_spec(rows, f"erased[{site!r}]")
                for site, rows in erased.items()
            }
        else:
            self._spec = {None: _as_row_spec(erased, "erased")}
        self.plate = plate
        for site, rows in self._spec.items():
            if rows is not _WHOLE and self._plate_of(site) is None:
                raise ValueError(
                    "erased rows need the plate they index: pass plate='<name of the data plate>'"
                    + ("" if site is None else f" (or plate={{{site!r}: ...}})")
                )
        self._checked: set[tuple[Any, int]] = set()
        self._masks: dict[tuple[Any, int, torch.device], torch.Tensor] = {}

    def _plate_of(self, site: str | None) -> str | None:
        if isinstance(self.plate, Mapping):
            return self.plate.get(site) if site is not None else None
        return self.plate

    def __enter__(self) -> UnlearnMessenger:
        self._subsample_indices: dict[str, torch.Tensor] = {}
        self._seen_sites: set[str] = set()
        self._seen_plates: set[str] = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        super().__exit__(exc_type, exc_value, traceback)
        if exc_type is not None:
            return
        named = [site for site in self._spec if site is not None]
        missing = [site for site in named if site not in self._seen_sites]
        if missing:
            raise ValueError(f"erased names observed site(s) {missing} that the model never ran")
        for site, rows in self._spec.items():
            plate = self._plate_of(site)
            if rows is not _WHOLE and plate not in self._seen_plates:
                raise ValueError(
                    f"plate {plate!r} never appeared around an observed site of the model; "
                    "name the plate that holds the erased observations"
                )

    def _pyro_post_sample(self, msg) -> None:
        if site_is_subsample(msg):
            self._subsample_indices[msg["name"]] = msg["value"]

    def _pyro_sample(self, msg) -> None:
        if not msg["is_observed"] or site_is_subsample(msg) or site_is_factor(msg):
            return
        if None in self._spec:
            rows = self._spec[None]
        elif msg["name"] in self._spec:
            rows = self._spec[msg["name"]]
            self._seen_sites.add(msg["name"])
        else:
            return
        if rows is _WHOLE:
            msg["infer"][ERASED] = True
            return
        plate = self._plate_of(msg["name"] if None not in self._spec else None)
        frame = next((f for f in msg["cond_indep_stack"] if f.name == plate), None)
        if frame is None:
            if None not in self._spec:  # a named site must sit in its plate
                raise ValueError(f"observed site {msg['name']!r} is not inside plate {plate!r}")
            return  # an observation outside the data plate is not a data row
        if frame.dim is None:
            raise ValueError(f"plate {plate!r} is sequential; erased rows need a vectorised plate")
        self._seen_plates.add(plate)
        msg["infer"][ERASED] = self._row_mask(msg, frame, rows, plate)

    def _row_mask(self, msg, frame, rows: torch.Tensor, plate: str) -> torch.Tensor:
        indices = self._subsample_indices.get(plate)
        if indices is not None and frame.full_size is not None and frame.full_size > 0:
            full_size = int(frame.full_size)
        else:  # a plate without a size: rows are positions within the batch
            batch_shape = msg["fn"].batch_shape
            full_size = batch_shape[frame.dim] if len(batch_shape) >= -frame.dim else 1
            indices = None
        key = (id(rows), full_size)
        if key not in self._checked:
            where = f"plate {plate!r} of size {full_size}"
            if rows.dtype == torch.bool and rows.numel() != full_size:
                raise ValueError(f"erased mask has length {rows.numel()}, but {where}")
            if rows.dtype != torch.bool and int(rows.max()) >= full_size:
                raise IndexError(f"erased index {int(rows.max())} is out of range for {where}")
            self._checked.add(key)
        device = indices.device if indices is not None else msg["value"].device
        cache_key = (id(rows), full_size, device)
        full_mask = self._masks.get(cache_key)
        if full_mask is None:
            if rows.dtype == torch.bool:
                full_mask = rows.to(device)
            else:
                full_mask = torch.zeros(full_size, dtype=torch.bool, device=device)
                full_mask[rows.to(device)] = True
            self._masks[cache_key] = full_mask
        batch_mask = full_mask if indices is None else full_mask[indices]
        return batch_mask.reshape((-1,) + (1,) * (-frame.dim - 1))


def unlearn(
    fn: Callable | None = None,
    *,
    erased: Any = None,
    plate: str | Mapping[str, str] | None = None,
) -> UnlearnMessenger | Callable:
    """Annotate a model with the observations to forget; see :class:`UnlearnMessenger`.

    Arguments:
        fn: the model; ``None`` returns the handler, for use as a context manager.
        erased: which observations are erased (:class:`UnlearnMessenger`).
        plate: the plate their rows index.

    Returns:
        The wrapped model, or the handler when ``fn`` is ``None``.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        >>> with unlearn(erased=[1], plate="data"):
        ...     trace = pyro.poutine.trace(model).get_trace(torch.zeros(3))
        >>> trace.nodes["y"]["infer"]["erased"].tolist()
        [False, True, False]
        >>> wrapped = unlearn(model)  # every observation in the call is erased
    """
    messenger = UnlearnMessenger(erased=erased, plate=plate)
    return messenger if fn is None else messenger(fn)


def erased_log_likelihood(
    model_trace: Trace, particle_dim: int | None = None, num_particles: int = 1
) -> torch.Tensor:
    """log p(D_e|θ) per particle, summed over the sites flagged by :func:`unlearn`.

    Reads ``site["log_prob"]`` (so a subsampling plate's N/B scale is included: an unbiased
    estimate over D_e), masked to the erased rows. Priors and ``pyro.factor`` sites are never
    part of it.

    Arguments:
        model_trace: a trace of the wrapped model; ``compute_log_prob()`` must have run.
        particle_dim: the batch dim that indexes vectorised particles, or ``None``.
        num_particles: how many particles that dim holds.

    Returns:
        A tensor of shape ``(num_particles,)``, or ``(1,)`` when ``particle_dim`` is ``None``.

    Raises:
        ValueError: when no site is flagged (the model was not wrapped by :func:`unlearn`).

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        >>> trace = pyro.poutine.trace(unlearn(model, erased=[0], plate="data")).get_trace(
        ...     torch.zeros(3))
        >>> trace.compute_log_prob()
        >>> erased_log_likelihood(trace)  # log N(0; 0, 1) of the one erased row
        tensor([-0.9189])
    """
    total = None
    for site in model_trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or site_is_factor(site):
            continue
        flag = site["infer"].get(ERASED)
        if flag is None:
            continue
        log_prob = site["log_prob"]
        if flag is not True:
            log_prob = torch.where(flag, log_prob, log_prob.new_zeros(()))
        term = sum_per_particle(log_prob, particle_dim, num_particles)
        total = term if total is None else total + term
    if total is None:
        raise ValueError(
            "the model has no erased observations: wrap it with pyro_unlearn.unlearn(model, ...) "
            "and make sure the erased data are observed sites (pyro.factor sites are ignored)"
        )
    return total
