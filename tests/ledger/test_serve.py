"""Lazy and chained serving on a conjugate model, against the exact p(θ|D_r)."""

from __future__ import annotations

import pyro
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.ledger import RequestLedger

from .conjugate import NUM_ROWS, data, exact, exact_guide, model, moments

# q(θ|D) is exact, so q(θ|D)/p(D_e|θ) is the exact p(θ|D_r), Gaussian: the EUBO's optimum
OPTIONS = dict(method="eubo", num_steps=400, lr=0.05, num_particles=64, progress=False)
REQUESTS = [[0, 1, 2, 3], [4, 5, 6, 7, 1], [8, 9, 10, 11]]  # key 1 twice: idempotent
ERASED = 12


def _close_to_exact(posterior, y):
    """The posterior's mean within 0.3 exact standard deviations and its standard deviations
    within 8 % of the exact p(θ|D_r) (SVI's Monte-Carlo noise here: ≈ 0.1 sd and 3 %)."""
    loc, sd = moments(posterior)
    exact_loc, exact_sd = exact(y[ERASED:])
    assert ((loc - exact_loc).abs() / exact_sd).max() < 0.3, (loc, exact_loc, exact_sd)
    assert ((sd / exact_sd).log().abs()).max() < 0.08, (sd, exact_sd)


@pytest.fixture
def setting(tmp_path):
    y = data()
    guide = exact_guide(y)
    return y, guide, pu.freeze(guide, y), tmp_path


def test_lazy_sequential_requests_equal_one_union_request(setting):
    y, guide, original, tmp_path = setting
    lazy = RequestLedger.create(tmp_path / "lazy.db", original, range(NUM_ROWS), plate="data")
    served = y.clone()
    for k, keys in enumerate(REQUESTS):
        lazy.request(keys, reason=f"request {k}")
        if k == len(REQUESTS) - 1:
            pyro.set_rng_seed(5)
        record = lazy.serve(model, guide, served, **OPTIONS)
        assert record.installed and record.rows == 4 * (k + 1)
        assert record.requests == list(range(2, 2 * k + 3, 2))  # every request so far
        served[lazy.erased()] = float("nan")  # the caller deletes served rows: the ledger kept them
    assert lazy.kept_rows() == ERASED
    union = RequestLedger.create(tmp_path / "union.db", original, range(NUM_ROWS), plate="data")
    union.request(sum(REQUESTS, []))
    pyro.set_rng_seed(5)
    union.serve(model, guide, y, **OPTIONS)
    # the last lazy serve *is* the union request: same rows (written back), same q(θ|D)
    lazy_state, union_state = lazy.current_state()["params"], union.current_state()["params"]
    assert all(torch.equal(lazy_state[k], union_state[k]) for k in union_state)
    _close_to_exact(lazy.current(guide, y), y)


def test_chained_serves_from_the_previous_posterior(setting):
    y, guide, original, tmp_path = setting
    chained = RequestLedger.create(
        tmp_path / "chained.db", original, range(NUM_ROWS), plate="data", policy="chained"
    )
    previous = moments(chained.current(guide, y))[0]
    for keys in REQUESTS:
        request = chained.request(keys)
        record = chained.serve(model, guide, y, **OPTIONS)
        assert record.requests == [request] and record.rows == 4
        assert record.verdict in ("trusted", "approximate")
        loc = moments(chained.current(guide, y))[0]
        assert not torch.equal(loc, previous)  # each serve moved on from the last posterior
        previous = loc
    assert chained.kept_rows() == 0
    _close_to_exact(chained.current(guide, y), y)
    serves = [e for e in chained.history() if e["kind"] == "serve"]
    assert [e["covers"] for e in serves] == [[2], [4], [6]]
    assert all(e["method"] == "eubo" and e["lam"] == 0.0 and e["steps"] > 0 for e in serves)
    assert all(e["trust"]["verdict"] == e["verdict"] for e in serves)
