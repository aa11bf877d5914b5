"""The ``unlearn`` effect handler: flags the erased observations D_e of a model.

The unlearning losses read log p(D_e|θ) only from flagged sites (:func:`erased_log_likelihood`);
priors, ``pyro.factor`` sites and unflagged observations are never part of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_factor, site_is_subsample

from ..traces import sum_per_particle
from .rows import WHOLE, as_plates, as_row_spec, batch_mask, coordinates, full_mask

__all__ = [
    "ERASED",
    "SUBSAMPLE_MODES",
    "UnlearnMessenger",
    "erased_log_likelihood",
    "is_erased",
    "unlearn",
]

#: Key of ``msg["infer"]`` under which a site's erased rows are flagged: ``True`` (the whole site)
#: or a boolean tensor that broadcasts against the site's ``log_prob``.
ERASED = "erased"

#: What a named subsampling plate draws while unlearning: ``"erased"`` (every step sees the
#: erased rows, each counted once) or ``"batch"`` (the model's own mini-batch, erased rows
#: counted by their share of it).
SUBSAMPLE_MODES = ("erased", "batch")


class UnlearnMessenger(Messenger):
    r"""Flags the erased observations D_e so that the unlearning losses can read log p(D_e|θ).

    * ``erased=None``: every observed site in the call is erased data (pass D_e as the model's
      arguments).
    * ``erased=rows`` and ``plate="data"``: the rows (indices or a boolean mask over the plate's
      full size) of every observed site inside that plate.
    * ``erased=mask`` and ``plate=("players", "at_bats")``: cells of nested plates, a boolean mask
      shaped like the plates' full sizes (in the tuple's order), or ``(K, 2)`` cell indices.
    * ``erased={"y": rows, "z": None}``: per observed site; ``None`` erases the whole site.
      ``plate`` is then a plate name, a tuple, or a ``{site: plate}`` dict. A site without a
      plate takes a boolean mask shaped like its observed value (``erased={"obs": mask}``).

    Mini-batches: when a named plate subsamples (``pyro.plate("data", N, subsample_size=B)``, or
    ``subsample=idx`` from the user), ``subsample="erased"`` (the default) replaces its batch by
    the erased rows, so that every step evaluates all of D_e, each row counted once:

    .. math:: \log p(D_e|θ) = \textstyle\sum_{i \in D_e} \log p(y_i|θ)

    instead of the batch's share, (N/B) Σ_{i ∈ batch ∩ D_e} log p(y_i|θ): unbiased too, but
    with the variance of which erased rows fall in the batch (the reverse KL's importance
    weights collapse on it). With ``subsample_size=B`` the batch keeps B rows: D_e padded with
    rows that are not flagged, or, when ``|D_e|`` > B, B erased rows drawn uniformly each step and
    scaled by ``|D_e|``/B. The model must index its data by the plate's indices (``with
    pyro.plate("data", N, subsample_size=B) as idx: ... obs=y[idx]``). ``subsample="batch"``
    keeps the model's own batch. When the guide subsamples the plate too (local latent
    variables), its batch is replayed into the model and kept, with its share.

    Plates without a size (e.g. GPyTorch's ``data_plate``) emit no subsample site: there the rows
    are taken positionally within the batch.

    With ``subsample="batch"`` or no subsampling plate, the handler only annotates
    ``msg["infer"]``; with ``"erased"`` it also sets the named plates' batch and the erased
    sites' scale. Either way it changes no distribution or prior.

    Arguments:
        erased: ``None`` (every observation), rows of ``plate`` (indices or a boolean mask), cells
            of a tuple of plates, or ``{site: rows or None}``.
        plate: the name of the plate the rows index, a tuple of nested plates whose cells a mask
            covers, or ``{site: plate}``.
        subsample: ``"erased"`` or ``"batch"`` (:data:`SUBSAMPLE_MODES`), what a named
            subsampling plate draws.

    Raises:
        TypeError: for rows that are neither indices nor a mask, or a plate that is not a name.
        ValueError: on an empty, duplicated or negative row set, rows without a plate, a mask of
            the wrong shape (naming both shapes), and (on leaving the handler) a named site or
            plate the model never ran.
        IndexError: for an index out of range of its plate.

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
        >>> def batched(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y), subsample_size=3) as idx:
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> tr = pyro.poutine.trace(unlearn(batched, erased=[5], plate="data")).get_trace(
        ...     torch.zeros(8))
        >>> tr.nodes["data"]["value"][0].item(), tr.nodes["y"]["scale"]  # row 5, counted once
        (5, 1.0)
    """

    def __init__(
        self,
        erased: Any = None,
        plate: str | tuple[str, ...] | Mapping[str, str | tuple[str, ...]] | None = None,
        subsample: str = "erased",
    ) -> None:
        super().__init__()
        if not isinstance(subsample, str) or subsample not in SUBSAMPLE_MODES:
            raise ValueError(f"subsample must be one of {SUBSAMPLE_MODES}, got {subsample!r}")
        self.plate, self.subsample = plate, subsample
        if isinstance(plate, Mapping):
            self._plate_map = {str(s): as_plates(p, f"plate[{s!r}]") for s, p in plate.items()}
        else:
            self._plate_map = {None: None if plate is None else as_plates(plate, "plate")}
        if erased is None:
            if plate is not None:
                raise ValueError("plate was given without erased rows; pass erased=indices too")
            self._spec: dict[str | None, Any] = {None: WHOLE}
        elif isinstance(erased, Mapping):
            if not erased:
                raise ValueError("erased is an empty dict: name at least one observed site")
            self._spec = {
                str(site): WHOLE
                if rows is None
                else as_row_spec(rows, f"erased[{site!r}]", self._plates_of(str(site)))
                for site, rows in erased.items()
            }
        elif self._plates_of(None) is None:
            raise ValueError(
                "erased rows need the plate they index: pass plate='<name of the data plate>'"
            )
        else:
            self._spec = {None: as_row_spec(erased, "erased", self._plates_of(None))}
        self._named_plates = {
            name
            for site, rows in self._spec.items()
            if rows is not WHOLE
            for name in self._plates_of(site) or ()
        }
        self._masks: dict[tuple[Any, ...], torch.Tensor] = {}

    def _plates_of(self, site: str | None) -> tuple[str, ...] | None:
        if None in self._plate_map:
            return self._plate_map[None]
        return self._plate_map.get(site) if site is not None else None

    def __enter__(self) -> UnlearnMessenger:
        self._subsample_indices: dict[str, torch.Tensor] = {}
        self._overrides: dict[str, tuple[torch.Tensor, float]] = {}
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
            for plate in self._plates_of(site) or () if rows is not WHOLE else ():
                if plate not in self._seen_plates:
                    raise ValueError(
                        f"plate {plate!r} never appeared around an observed site of the model; "
                        "name the plate that holds the erased observations"
                    )

    # -- the named plates' batch -----------------------------------------------------------------
    def _pyro_post_sample(self, msg) -> None:
        if not site_is_subsample(msg):
            return
        value = msg["value"]
        self._subsample_indices[msg["name"]] = torch.as_tensor(value)
        override = self._overrides.get(msg["name"])
        if override is not None and value is not override[0]:
            # an outer handler replayed the guide's batch (the guide subsamples this plate too,
            # for local latent variables): it is kept, with its share, as Pyro scales it
            del self._overrides[msg["name"]]

    def _override_subsample(self, msg) -> None:
        """Replace a named subsampling plate's batch by the erased rows (see the class)."""
        fn, given = msg["fn"], msg["value"]
        size, batch = int(fn.size), fn.subsample_size
        if given is None and (batch is None or batch >= size):
            return  # the plate does not subsample
        device = given.device if isinstance(given, torch.Tensor) else torch.device(fn.device)
        erased = self._erased_coordinates(msg["name"], size).to(device)
        kept = len(erased) if batch is None else min(len(erased), batch)
        if batch is None:
            chosen = erased
        elif len(erased) >= batch:
            chosen = erased[torch.randperm(len(erased), device=device)[:batch]]
        else:
            others = torch.ones(size, dtype=torch.bool, device=device)
            others[erased] = False
            chosen = torch.cat([erased, others.nonzero().squeeze(-1)[: batch - len(erased)]])
        msg["value"] = chosen
        self._overrides[msg["name"]] = (chosen, len(erased) / kept * len(chosen) / size)

    def _erased_coordinates(self, plate: str, size: int) -> torch.Tensor:
        """The distinct rows of ``plate`` that some site's erased rows (cells) fall in."""
        key = ("coordinates", plate, size)
        if key not in self._masks:
            rows = [
                coordinates(spec, plates.index(plate), size, plate)
                for site, spec in self._spec.items()
                if spec is not WHOLE and plate in (plates := self._plates_of(site) or ())
            ]
            self._masks[key] = torch.cat(rows).unique()
        return self._masks[key]

    # -- the erased observations -----------------------------------------------------------------
    def _pyro_sample(self, msg) -> None:
        if site_is_subsample(msg):
            if self.subsample == "erased" and msg["name"] in self._named_plates:
                self._override_subsample(msg)
            return
        if not msg["is_observed"] or site_is_factor(msg):
            return
        self._seen_plates.update(frame.name for frame in msg["cond_indep_stack"])
        site = None if None in self._spec else msg["name"]
        if site is not None and site not in self._spec:
            return
        rows = self._spec[site]
        if site is not None:
            self._seen_sites.add(site)
        if rows is WHOLE:
            msg["infer"][ERASED] = True
            return
        plates = self._plates_of(site)
        if plates is None:
            msg["infer"][ERASED] = self._site_mask(msg, rows)
            return
        frames = [next((f for f in msg["cond_indep_stack"] if f.name == p), None) for p in plates]
        missing = [p for p, frame in zip(plates, frames, strict=True) if frame is None]
        if missing:
            if site is not None:  # a named site must sit in its plates
                raise ValueError(
                    f"observed site {msg['name']!r} is not inside plate {missing[0]!r}"
                )
            return  # an observation outside the data plates is not a data row
        sequential = [frame.name for frame in frames if frame.dim is None]
        if sequential:
            raise ValueError(
                f"plate {sequential[0]!r} is sequential; erased rows need a vectorised plate"
            )
        msg["infer"][ERASED] = self._cell_mask(msg, frames, rows, plates)
        self._rescale(msg, plates)

    def _cell_mask(self, msg, frames: list, rows: torch.Tensor, plates: tuple[str, ...]):
        """The flags of the batch's rows (cells): the erased mask over the plates' full sizes,
        read at the batch's indices."""
        sizes, indices = [], []
        for frame in frames:
            index = self._subsample_indices.get(frame.name)
            if index is not None and frame.full_size is not None and frame.full_size > 0:
                sizes.append(int(frame.full_size))
            else:  # a plate without a size: rows are positions within the batch
                batch_shape = msg["fn"].batch_shape
                sizes.append(batch_shape[frame.dim] if len(batch_shape) >= -frame.dim else 1)
                index = None
            indices.append(index)
        device = next((i.device for i in indices if i is not None), msg["value"].device)
        key = (id(rows), tuple(sizes), device)
        if key not in self._masks:
            self._masks[key] = full_mask(rows, plates, tuple(sizes), device)
        return batch_mask(self._masks[key], frames, indices)

    def _site_mask(self, msg, rows: torch.Tensor) -> torch.Tensor:
        """A mask shaped like the observed value, read positionally."""
        name, value = msg["name"], msg["value"]
        subsampled = [
            f.name
            for f in msg["cond_indep_stack"]
            if f.full_size is not None and f.size != f.full_size
        ]
        if subsampled:
            raise ValueError(
                f"erased[{name!r}] is a mask shaped like the observed site, but plate(s) "
                f"{subsampled} subsample, so positions are not data rows; name the plates "
                f"(plate={{{name!r}: {tuple(subsampled)}}}) to map rows by index"
            )
        shape = tuple(value.shape[: value.dim() - len(msg["fn"].event_shape)])
        if tuple(rows.shape) != shape:
            raise ValueError(
                f"erased[{name!r}] mask has shape {tuple(rows.shape)}, but observed site "
                f"{name!r} has shape {shape}"
                + (" (without its event dims)" if msg["fn"].event_shape else "")
            )
        key = (id(rows), shape, value.device)
        if key not in self._masks:
            self._masks[key] = rows.to(value.device)
        return self._masks[key]

    def _rescale(self, msg, plates: tuple[str, ...]) -> None:
        """Count each erased row of an overridden plate once (the plate scaled it by N/B)."""
        for frame in msg["cond_indep_stack"]:
            override = self._overrides.get(frame.name)
            if override is None:
                continue
            if frame.name not in plates:
                raise ValueError(
                    f"observed site {msg['name']!r} sits in plate {frame.name!r}, whose batch "
                    "holds another site's erased rows; pass subsample='batch', or name the "
                    "site's rows on that plate too"
                )
            chosen, factor = override
            value, event_dim = msg["value"], len(msg["fn"].event_shape)
            axis = value.dim() - event_dim + frame.dim
            if axis >= 0 and value.shape[axis] not in (1, len(chosen)):
                raise ValueError(
                    f"plate {frame.name!r} holds {len(chosen)} rows (the erased ones) while "
                    f"unlearning, but observed site {msg['name']!r} has {value.shape[axis]} "
                    f"along dim {frame.dim}: index the data by the plate's indices (with "
                    f"pyro.plate(...) as idx: ... obs=y[idx]), or pass subsample='batch' to "
                    "keep the model's own batch"
                )
            msg["scale"] = msg["scale"] * factor


def unlearn(
    fn: Callable | None = None,
    *,
    erased: Any = None,
    plate: str | tuple[str, ...] | Mapping[str, str | tuple[str, ...]] | None = None,
    subsample: str = "erased",
) -> UnlearnMessenger | Callable:
    """Annotate a model with the observations to forget; see :class:`UnlearnMessenger`.

    Arguments:
        fn: the model; ``None`` returns the handler, for use as a context manager.
        erased: which observations are erased (:class:`UnlearnMessenger`): rows, cells of nested
            plates, or ``{site: rows or mask or None}``.
        plate: the plate their rows index, or a tuple of nested plates.
        subsample: what a named subsampling plate draws: ``"erased"`` (all of D_e every step,
            each row counted once; the default) or ``"batch"`` (the model's own mini-batch).

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
        >>> def cells(y):  # players × at-bats
        ...     with pyro.plate("players", 2, dim=-2), pyro.plate("at_bats", 3, dim=-1):
        ...         pyro.sample("obs", dist.Bernoulli(0.5), obs=y)
        >>> mask = torch.tensor([[True, False, False], [False, False, True]])
        >>> wrapped = unlearn(cells, erased=mask, plate=("players", "at_bats"))
        >>> trace = pyro.poutine.trace(wrapped).get_trace(torch.ones(2, 3))
        >>> trace.nodes["obs"]["infer"]["erased"].tolist()
        [[True, False, False], [False, False, True]]
    """
    messenger = UnlearnMessenger(erased=erased, plate=plate, subsample=subsample)
    return messenger if fn is None else messenger(fn)


def is_erased(_name: str, site: dict) -> bool:
    """Whether :func:`unlearn` flagged ``site`` (some of its rows erased); shaped as Pyro's
    ``site_filter`` (``trace.compute_log_prob(site_filter=is_erased)``).

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        >>> trace = pyro.poutine.trace(unlearn(model)).get_trace(torch.tensor(0.0))
        >>> is_erased("y", trace.nodes["y"])
        True
    """
    return ERASED in site.get("infer", {})


def erased_log_likelihood(
    model_trace: Trace, particle_dim: int | None = None, num_particles: int = 1
) -> torch.Tensor:
    """log p(D_e|θ) per particle, summed over the sites flagged by :func:`unlearn`.

    Reads ``site["log_prob"]``, scale included, masked to the erased rows: on a named
    subsampling plate every erased row counted once (or, with ``subsample="batch"``, the batch's
    erased rows scaled by N/B: an unbiased estimate). Priors and ``pyro.factor`` sites are never
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
