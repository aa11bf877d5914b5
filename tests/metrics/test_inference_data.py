import math

import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value

from pyro_unlearn.metrics import to_inference_data

from .models import frozen_gaussian, regression


def test_to_inference_data(reg_data):
    import arviz as az

    x, y = reg_data
    frozen = frozen_gaussian(AutoNormal, [1.0, -1.0], 2.0, 0.05, x, y)
    init = init_to_value(values={"w": torch.tensor([0.5, 0.2]), "s": torch.tensor(0.5)})
    live = AutoMultivariateNormal(regression, init_loc_fn=init, init_scale=0.05)
    live(x, y)
    n = 1000
    data = to_inference_data({"frozen": frozen, "live": live}, regression, x, y, num_samples=n)
    assert list(data) == ["frozen", "live"]
    expected = {"frozen": ([1.0, -1.0], 2.0), "live": ([0.5, 0.2], 0.5)}
    for name, idata in data.items():
        assert isinstance(idata, az.InferenceData)
        assert set(idata.posterior.data_vars) == {"w", "s"}
        assert idata.posterior["w"].shape == (1, n, 2) and idata.posterior["s"].shape == (1, n)
        summary = az.summary(idata, kind="stats")
        w, s = expected[name]
        # constrained means: w = loc; s = exp(log s + 0.05²/2) (a LogNormal)
        assert summary.loc["w[0]", "mean"] == pytest.approx(w[0], abs=0.02)
        assert summary.loc["w[1]", "mean"] == pytest.approx(w[1], abs=0.02)
        assert summary.loc["s", "mean"] == pytest.approx(s * math.exp(0.05**2 / 2), rel=0.02)
        assert summary.loc["s", "sd"] == pytest.approx(s * 0.05, rel=0.2)
    assert az.summary(data["live"]).shape[0] == 3  # the full summary (diagnostics) runs too
