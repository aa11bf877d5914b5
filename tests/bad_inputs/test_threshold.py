"""Bad inputs of the mass scale (kept_mass, lam_for_mass, warn_small_kept_mass, MassScale):
named before anything is drawn or searched (a flow's log q* stays unfound, the random stream
where it was, the param store and the posterior as they were)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.guides import AutoZukoFlow
from pyro_unlearn.infer import MassScale, kept_mass, lam_for_mass, warn_small_kept_mass


def model():
    pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))


CASES = {
    "mass-zero": (lam_for_mass, dict(mass=0.0), ValueError, r"mass must be a number in \(0, 1\]"),
    "mass-above-one": (lam_for_mass, dict(mass=1.5), ValueError, r"mass .* got 1.5"),
    "mass-nan": (lam_for_mass, dict(mass=math.nan), ValueError, r"mass .* got nan"),
    "mass-string": (lam_for_mass, dict(mass="0.5"), TypeError, r"mass must be .*'0.5' \(str\)"),
    "mass-bool": (lam_for_mass, dict(mass=True), TypeError, "mass must be"),
    "mass-vector": (lam_for_mass, dict(mass=torch.ones(2)), TypeError, "mass must be"),
    "lam-negative": (kept_mass, dict(lam=-0.1), ValueError, r"lam must be a number in \[0, 1\]"),
    "lam-above-one": (kept_mass, dict(lam=2.0), ValueError, "lam .* got 2.0"),
    "lam-nan": (kept_mass, dict(lam=math.nan), ValueError, "lam .* got nan"),
    "lam-string": (kept_mass, dict(lam="1e-5"), TypeError, "lam must be"),
    "num-samples-zero": (kept_mass, dict(num_samples=0), ValueError, "num_samples must be"),
    "num-samples-few": (kept_mass, dict(num_samples=10), ValueError, "at least 100"),
    "num-samples-float": (lam_for_mass, dict(num_samples=1e4), TypeError, "num_samples"),
    "posterior-live-guide": (kept_mass, dict(posterior="guide"), TypeError, "FrozenPosterior"),
    "nan-argument": (
        kept_mass,
        dict(args=(torch.tensor([1.0, math.nan]),)),
        ValueError,
        r"args\[0\] has a non-finite value \(nan\) at row 1",
    ),
    "warn-lam-above-one": (warn_small_kept_mass, dict(lam=1.5), ValueError, "lam"),
    "warn-min-mass-zero": (warn_small_kept_mass, dict(min_mass=0.0), ValueError, "min_mass"),
    "warn-min-mass-string": (warn_small_kept_mass, dict(min_mass="5%"), TypeError, "min_mass"),
    "scale-num-samples": (MassScale, dict(num_samples=-1), ValueError, "num_samples"),
}


@pytest.mark.parametrize("function, kwargs, error, match", CASES.values(), ids=CASES.keys())
def test_bad_input(unchanged, function, kwargs, error, match):
    guide = AutoZukoFlow(model, "maf", hidden_features=(4,))
    guide()
    posterior = pu.freeze(guide)
    target = guide if kwargs.pop("posterior", None) == "guide" else posterior
    args = kwargs.pop("args", ())
    good = {kept_mass: dict(lam=0.1), warn_small_kept_mass: dict(lam=0.1)}
    call = {**good.get(function, {}), **({"mass": 0.5} if function is lam_for_mass else {})}
    call.update(kwargs)
    positional = [call.pop(k) for k in ("lam", "mass") if k in call]
    rng = torch.get_rng_state()
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        function(target, *positional, *args, **call)
    assert torch.equal(torch.get_rng_state(), rng)
    assert "not yet found" in repr(posterior)  # no numeric search of log q* ran
