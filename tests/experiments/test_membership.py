import pytest

from pyro_unlearn.experiments.membership import compare, summarise


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"posterior": name, "seed": seed, "acc": v}
        for name, vs in values.items()
        for seed, v in enumerate(vs)
    ]


def test_compare_counts_seeds_and_scales_the_gap_by_the_noise_floor():
    rows = _rows(
        {
            "full": [0.60, 0.62, 0.55],
            "retrained": [0.50, 0.52, 0.50],
            "retrained again": [0.51, 0.52, 0.49],
            "rkl": [0.52, 0.60, 0.51],  # closer to retrained on seeds 0 and 2 only
        }
    )
    c = compare(rows, "rkl", "acc")
    assert (c["closer_seeds"], c["num_seeds"]) == (2, 3)
    assert c["closer_on_means"] is True  # 0.543 vs retrained 0.507 and full 0.59
    assert c["abs_full_minus_retrained"] == pytest.approx((0.10 + 0.10 + 0.05) / 3)
    assert c["gap_over_noise"] == pytest.approx((0.25 / 3) / (0.02 / 3))
    assert c["full_minus_retrained_std"] == pytest.approx(0.0288675, rel=1e-5)


def test_summarise_gives_mean_and_sample_sd_per_posterior():
    rows = _rows({"full": [1.0, 3.0], "rkl": [2.0, 2.0]})
    summary = {s["posterior"]: s for s in summarise(rows, ["full", "rkl"], ["acc"])}
    assert summary["full"]["acc_mean"] == 2.0
    assert summary["full"]["acc_std"] == pytest.approx(2**0.5)
    assert summary["rkl"]["acc_std"] == 0.0
