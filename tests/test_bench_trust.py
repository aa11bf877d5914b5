"""The trust benchmark (``benchmarks/bench_trust.py``) runs: one small case, end to end, so the
suite catches a change that breaks it; and on the conjugate model, where p(θ|D_r) is known in
closed form, the verdict agrees with the exact distance."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trust.py"

FIELDS = {
    "model",
    "guide",
    "erasure",
    "kind",
    "n",
    "n_erased",
    "kl_full",
    "kl_unlearned",
    "noise_floor",
    "bound",
    "unlearned_well",
    "verdict",
    "summary",
    "pareto_k",
    "kl_estimate",
    "update_ess_fraction",
    "method",
    "attempts",
    "forget_seconds",
    "retrain_seconds",
    "rule_ok",
    "exact_kl_full",
    "exact_kl_unlearned",
    "exact_kl_retrained",
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_trust", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_trust"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_trust", None)


@pytest.fixture(scope="module")
def conjugate_random(bench):
    torch.set_num_threads(1)
    problem = bench.build_problems(seed=0)["conjugate"]
    guide, full, _ = bench.train(problem, steps=1500, seed=0)
    return bench.run_case(
        problem,
        "random",
        guide,
        full,
        seed=0,
        forget_options={"num_steps": 600, "window": 50},
        retrain_steps=800,
    )


def test_record_has_its_fields(conjugate_random):
    record = conjugate_random
    assert FIELDS <= set(record), FIELDS - set(record)
    assert record["model"] == "conjugate" and record["kind"] == "random"
    assert record["n_erased"] == 20 and record["n"] == 200
    assert record["verdict"] in ("trusted", "approximate", "retrain")
    assert record["attempts"] and sum(a["chosen"] for a in record["attempts"]) == 1
    assert record["bound"] == max(0.5 * record["kl_full"], record["noise_floor"])
    for key in ("kl_full", "kl_unlearned", "noise_floor", "forget_seconds", "retrain_seconds"):
        assert math.isfinite(record[key]) and record[key] >= 0.0, (key, record[key])
    # the predictive yardstick: finite, and q(θ|D) predicts D_e worse than a second retraining
    assert record["yardstick"] == "parameter" and record["fit_pareto_k"] < 0.7
    for where in ("erased", "heldout"):
        values = [record[f"pred_kl_{n}_{where}"] for n in ("full", "unlearned", "floor")]
        assert all(math.isfinite(v) for v in values), values
    assert record["pred_kl_full_erased"] > record["pred_kl_floor_erased"]


def test_conjugate_verdict_matches_the_exact_distance(conjugate_random):
    """Against the exact p(θ|D_r): a trusted result has at most half of full's distance (or a
    small floor); a result that made most of the update is not sent to retraining."""
    record = conjugate_random
    assert record["exact_kl_full"] > 0.3  # the erasure moves the posterior measurably
    bound = max(0.5 * record["exact_kl_full"], 0.05)
    if record["verdict"] == "trusted":
        assert record["exact_kl_unlearned"] <= bound, record["summary"]
    if record["exact_kl_unlearned"] <= 0.25 * record["exact_kl_full"]:
        assert record["verdict"] != "retrain", record["summary"]


def test_rule_flags_a_trusted_case_beyond_its_bound(bench):
    base = {
        "kind": "clustered",
        "unlearned_well": False,
        "pred_unlearned_well": True,
        "verdict": "trusted",
        "yardstick": "parameter",
    }
    rules = bench.rule_violations(base)
    assert rules["trusted_too_far"] and not rules["retrain_when_good"] and not rules["rule_ok"]
    assert rules["pred_rule_ok"] and not rules["param_rule_ok"]
    assert bench.rule_violations({**base, "yardstick": "predictive"})["rule_ok"]
    good = {**base, "kind": "random", "unlearned_well": True, "verdict": "retrain"}
    assert bench.rule_violations(good)["retrain_when_good"]
    assert bench.rule_violations({**good, "verdict": "approximate"})["rule_ok"]
