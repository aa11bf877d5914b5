import json

from pyro_unlearn.cli import main


def test_demo_quick_writes_table_figure_and_json(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--quick",
                "--no-progress",
                "--json",
                str(tmp_path / "r.json"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "KL to closed form" in out
    results = json.loads((tmp_path / "r.json").read_text())
    methods = {(r["method"], r["lam"]) for r in results["rows"]}
    assert ("eubo", 0.0) in methods and ("rkl", 0.5) in methods and len(methods) == 13
    assert (tmp_path / "linear_regression.png").stat().st_size > 10_000
    rows = {(r["method"], r["lam"]): r for r in results["rows"] if r["method"] != "full"}
    full = next(r for r in results["rows"] if r["method"] == "full")
    # even a short run moves both methods towards the closed form at λ = 0
    assert rows[("eubo", 0.0)]["kl_target"] < 0.5 * full["kl_target"]
    assert rows[("rkl", 0.0)]["kl_target"] < 0.5 * full["kl_target"]


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_reproduce_banknote_quick_writes_the_shared_json_shape(tmp_path, capsys):
    path = tmp_path / "banknote.json"
    args = ["reproduce", "banknote", "--quick", "--no-progress", "--json", str(path)]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert "KL on D_e" in capsys.readouterr().out
    results = json.loads(path.read_text(), parse_constant=_reject_constant)  # no NaN/Infinity
    assert set(results) >= {"rows", "retrain_seconds", "settings"}
    assert results["settings"]["machine"]["cpu_count"] >= 1
    keys = {"guide", "method", "lam", "kl_erased_mean", "kl_erased_std"}
    keys |= {"kl_remaining_mean", "kl_remaining_std", "seconds"}
    for row in results["rows"]:
        assert keys <= set(row)
        assert isinstance(row["lam"], float) and 0.0 <= row["lam"] <= 1.0
        assert row["kl_erased_mean"] >= 0 and row["kl_remaining_mean"] >= 0
    cells = {(r["guide"], r["method"], r["lam"]) for r in results["rows"]}
    assert {("mvn", "full", 1.0), ("mvn", "eubo", 0.0), ("maf", "rkl", 0.0)} <= cells
    for guide in ("mvn", "maf"):
        assert (tmp_path / f"banknote_{guide}.png").stat().st_size > 10_000
