"""The guard of the bad-input matrix: a failed call leaves the live guide, the param store and
every frozen posterior bit-identical."""

from __future__ import annotations

import contextlib

import pyro
import pytest
import torch


def _state(guides, posteriors) -> dict:
    state = {
        f"store:{name}": value.detach().clone()
        for name, value in pyro.get_param_store().named_parameters()
    }
    for i, guide in enumerate(guides):
        if isinstance(guide, torch.nn.Module):
            for key, value in guide.state_dict().items():
                state[f"guide{i}:{key}"] = value.detach().clone()
    for i, posterior in enumerate(posteriors):
        for key, value in posterior.params.items():
            state[f"posterior{i}:{key}"] = value.detach().clone()
    return state


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys(), f"entries changed: {before.keys() ^ after.keys()}"
    for key, value in before.items():
        other = after[key]
        assert value.shape == other.shape and value.dtype == other.dtype, key
        assert torch.equal(
            torch.nan_to_num(value, nan=0.0), torch.nan_to_num(other, nan=0.0)
        ) and torch.equal(value.isnan(), other.isnan()), f"{key} changed"


@pytest.fixture
def unchanged():
    """``with unchanged(guide, posterior, ...):`` asserts that the block leaves the param store,
    each live guide (a module's state dict) and each frozen posterior bit-identical."""

    @contextlib.contextmanager
    def guard(*objects):
        from pyro_unlearn import FrozenPosterior

        posteriors = [o for o in objects if isinstance(o, FrozenPosterior)]
        guides = [o for o in objects if not isinstance(o, FrozenPosterior)]
        before = _state(guides, posteriors)
        yield
        assert_same_state(before, _state(guides, posteriors))

    return guard
