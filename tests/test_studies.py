"""Smoke test of studies/: the tiny profile of run_all writes every file, with sane numbers.

The tiny sizes make the numbers statistically meaningless; what is checked holds at any size:
identities of the surrogates (sua at T=0 is ste bit for bit, mixed decodes rounded values), the
exact true gradient against its finite difference, finiteness, and BD-rate on known curves.
"""
from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("compressai")
pytest.importorskip("matplotlib")
pytest.importorskip("skimage")

from studies import common, paired_rd, run_all  # noqa: E402
from studies.bd_rate import bd_rate  # noqa: E402

EXPECTED = {
    "rate_distortion": {"csv": "rd/rd_points.csv", "json": "rd/rd_summary.json",
                        "png": "rd/rd_curves.png"},
    "mismatch": {"csv": "mismatch/mismatch.csv", "csv_by_sigma": "mismatch/rate_gap_by_sigma.csv",
                 "json": "mismatch/mismatch_sources.json",
                 "png_mismatch": "mismatch/mismatch_vs_T.png",
                 "png_bound": "mismatch/sigma_bound.png"},
    "gradient": {"csv": "gradient/gradient_bias_variance.csv",
                 "json": "gradient/true_gradient_check.json",
                 "png_narrow": "gradient/gradient_bias_variance_narrow.png",
                 "png_wide": "gradient/gradient_bias_variance_wide.png"},
    "zero_center": {"csv": "zero_center/zero_center.csv", "json": "zero_center/zero_center.json"},
    "bound_training": {"csv": "bound_training/bound_training.csv",
                       "json": "bound_training/bound_training.json"},
    "paired_rd": {"csv": "rd/paired_rd.csv", "csv_images": "rd/paired_rd_images.csv",
                  "json": "rd/paired_rd_summary.json"},
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    import torch

    out = str(tmp_path_factory.mktemp("studies"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        report = run_all.run_all("tiny", out, torch.device("cpu"), seed=0)
    finally:
        torch.set_num_threads(threads)
    return out, report


def _floats(rows, key):
    return [float(r[key]) for r in rows]


def test_every_file_is_written(outputs):
    out, report = outputs
    assert report["files"] == EXPECTED
    for files in EXPECTED.values():
        for rel in files.values():
            path = os.path.join(out, rel)
            assert os.path.getsize(path) > 0, rel
            if rel.endswith(".png"):
                with open(path, "rb") as f:
                    assert f.read(8) == b"\x89PNG\r\n\x1a\n", rel
    assert json.load(open(os.path.join(out, "run_all.json")))["profile"] == "tiny"


def test_mismatch_identities(outputs):
    out, _ = outputs
    rows = common.read_csv(os.path.join(out, "mismatch", "mismatch.csv"))
    assert {r["source"] for r in rows} == {"trained", "gaussian", "laplacian"}
    assert {float(r["scale_bound"]) for r in rows} == {0.0, 0.11, 0.25, 0.5}
    n_rounding = 0
    for r in rows:
        assert r["finite"] == "True"
        for key in ("mismatch_D", "mismatch_R", "rate_surrogate", "rate_round", "rate_gap"):
            assert math.isfinite(float(r[key])), (key, r)
        # |r~ - round(r)| <= |e| + |u| <= 1 for every surrogate
        assert 0.0 <= float(r["mismatch_D"]) <= 1.0 and 0.0 <= float(r["mismatch_R"]) <= 1.0
        exact_rounding = r["mode"] == "ste" or (r["mode"] == "sua"
                                                and float(r["temperature"]) == 0.0)
        if exact_rounding:  # sua at T = 0 is ste: no mismatch, no rate gap
            n_rounding += 1
            assert float(r["mismatch_D"]) == 0.0 and float(r["mismatch_R"]) == 0.0
            assert float(r["rate_gap"]) == 0.0
        if r["mode"] == "mixed":  # decoder sees rounded values; the rate path sees noise
            assert float(r["mismatch_D"]) == 0.0 and float(r["mismatch_R"]) > 0.0
    assert n_rounding == 2 * 3 * 4  # ste and sua(T=0), 3 sources, 4 bounds
    # sua at T = 1 is noise (same u): equal mismatch; rates agree to float rounding
    for src in ("gaussian", "laplacian", "trained"):
        for b in (0.11, 0.5):
            sel = {(r["mode"], float(r["temperature"] or "nan")): r for r in rows
                   if r["source"] == src and float(r["scale_bound"]) == b}
            noise = next(r for (m, _), r in sel.items() if m == "noise")
            sua1 = sel[("sua", 1.0)]
            assert float(sua1["mismatch_R"]) == pytest.approx(float(noise["mismatch_R"]),
                                                              abs=1e-6)
            assert float(sua1["rate_gap"]) == pytest.approx(float(noise["rate_gap"]), abs=1e-4)


def test_gradient_study(outputs):
    out, _ = outputs
    check = json.load(open(os.path.join(out, "gradient", "true_gradient_check.json")))
    for point in check["points"].values():
        # the exact gradient with boundary terms against a central difference of the exact
        # expected loss: both are float64, the difference error is ~1e-10 (toy_gradient.py)
        assert point["max_abs_exact_minus_fd"] < 1e-6
        assert abs(point["monte_carlo_z"]) < 5  # Monte Carlo hard-rounding loss agrees
    rows = common.read_csv(os.path.join(out, "gradient", "gradient_bias_variance.csv"))
    for r in rows:
        for key in ("mean_grad", "bias2", "variance", "noise_variance"):
            assert math.isfinite(float(r[key])), (key, r)
        assert float(r["variance"]) >= 0 and float(r["noise_variance"]) >= 0
        if r["mode"] == "ste":  # no noise: the two draws per x give identical gradients
            assert float(r["noise_variance"]) == 0.0
    key = ("point", "zero_center", "param")
    ste = {tuple(r[k] for k in key): r for r in rows if r["mode"] == "ste"}
    sua0 = [r for r in rows if r["mode"] == "sua" and float(r["temperature"]) == 0.0]
    assert len(sua0) == 16  # 2 points x 2 zero_center x 4 parameters
    for r in sua0:  # sua at T = 0 gives ste's gradients bit for bit
        assert r["mean_grad"] == ste[tuple(r[k] for k in key)]["mean_grad"]
        assert float(r["noise_variance"]) == 0.0


def test_gradient_decomposition(outputs):
    out, _ = outputs
    check = json.load(open(os.path.join(out, "gradient", "true_gradient_check.json")))
    for point in check["points"].values():
        # autograd through the quadrature of ste's own (= the rounding) objective: a third
        # computation of the true gradient, with its boundary terms from the moving bin edges
        assert point["max_abs_exact_minus_quadrature"] < 1e-8
    rows = common.read_csv(os.path.join(out, "gradient", "gradient_bias_variance.csv"))
    own = {}
    for r in rows:
        # the two parts add up to the bias (the CSV keeps 6 significant digits)
        assert float(r["estimation_bias"]) + float(r["mismatch"]) == pytest.approx(
            float(r["bias"]), rel=1e-5, abs=1e-5)
        if r["mode"] == "ste" and r["zero_center"] == "True":  # ste's objective is rounding's
            assert abs(float(r["mismatch"])) < 1e-9
        own[(r["point"], r["zero_center"], r["param"], r["mode"], float(r["temperature"]))] = \
            float(r["own_grad"])
    for (point, zc, param, mode, t), value in own.items():
        if mode == "sua" and t == 1.0:  # n + (e + u) = r + u: noise's objective
            assert value == pytest.approx(own[(point, zc, param, "noise", 0.0)], rel=1e-5)
    assert len(check["noise_repeats_wide"]) > 0


def test_zero_center_study(outputs):
    out, _ = outputs
    rows = common.read_csv(os.path.join(out, "zero_center", "zero_center.csv"))
    assert {r["setting"] for r in rows} == {"lattice at 0", "zc, sg on", "zc, sg off"}
    for r in rows:
        for key in ("bias", "variance", "data_variance", "noise_variance"):
            assert math.isfinite(float(r[key])), (key, r)
        if r["mode"] == "ste":
            assert float(r["noise_variance"]) == 0.0
    # the stop-gradient only changes d/dmu (d y_hat / d mu = 0 or 1)
    by = {(r["point"], r["mode"], r["setting"], r["param"]): float(r["mean_grad"]) for r in rows}
    for (point, mode, setting, param), value in by.items():
        if setting == "zc, sg off" and param in ("theta", "sigma", "g"):
            assert value == pytest.approx(by[(point, mode, "zc, sg on", param)], rel=1e-12)


def test_bound_training_study(outputs):
    out, _ = outputs
    rows = common.read_csv(os.path.join(out, "bound_training", "bound_training.csv"))
    assert len(rows) == 3 * 3 * 2
    for r in rows:
        for key in ("rate", "distortion", "J", "noise_abs_rate_gap", "a", "g"):
            assert math.isfinite(float(r[key])), (key, r)
        if float(r["scale_bound"]) == 0.0:
            assert float(r["bound_active"]) == 0.0


def test_paired_rd(outputs):
    out, _ = outputs
    path = os.path.join(out, "rd", "paired_rd.csv")
    rows = common.read_csv(path)
    assert {(int(r["seed"]), r["arm"]) for r in rows} == {
        (s, a) for s in range(paired_rd.SIZES["tiny"]["seeds"]) for a in paired_rd.ARMS}
    for r in rows:
        assert float(r["bpp"]) > 0 and 0 < float(r["psnr"]) < 100
        assert float(r["J"]) == pytest.approx(
            float(r["bpp"]) + paired_rd.LMBDA * 255**2 * float(r["mse"]), rel=1e-4)
    summary = json.load(open(os.path.join(out, "rd", "paired_rd_summary.json")))
    assert set(summary["paired"]) == {"mixed - noise", "sua_tricks - noise", "sua_tricks - mixed"}
    # a rerun resumes: every (seed, arm) is in the CSV already, nothing is trained again
    paired_rd.main(["--tiny", "--out", out, "--device", "cpu"])
    assert len(common.read_csv(path)) == len(rows)


def test_rate_distortion(outputs):
    out, _ = outputs
    rows = common.read_csv(os.path.join(out, "rd", "rd_points.csv"))
    assert {r["mode"] for r in rows} == set(common.MODES)
    assert {r["curve"] for r in rows} == set(common.MODES) | {"mixed (seed 2)"}
    for r in rows:
        assert float(r["bpp"]) > 0 and math.isfinite(float(r["bpp"]))
        assert 0 < float(r["psnr"]) < 100
    summary = json.load(open(os.path.join(out, "rd", "rd_summary.json")))
    self_bd = summary["bd_rate_vs_reference"]["mixed"]["bd_rate_percent"]
    assert self_bd == 0.0 or math.isnan(self_bd)  # NaN: tiny models can give a non-monotone curve


def test_bd_rate_on_known_curves():
    rates, psnrs = [0.1, 0.2, 0.4, 0.8], [28.0, 30.5, 33.0, 35.0]
    assert bd_rate(rates, psnrs, rates, psnrs) == pytest.approx(0.0, abs=1e-12)
    # 10 % more bits at every PSNR is +10 %, whatever the interpolation
    assert bd_rate(rates, psnrs, [1.1 * r for r in rates], psnrs) == pytest.approx(10.0, rel=1e-9)
    assert bd_rate(rates, psnrs, [0.5 * r for r in rates], psnrs) == pytest.approx(-50.0, rel=1e-9)
    # a curve shifted up 1 dB at the same rates costs fewer bits for the reference's PSNRs
    assert bd_rate(rates, psnrs, rates, [p + 1 for p in psnrs]) < 0
    assert math.isnan(bd_rate(rates, psnrs, rates, [p + 20 for p in psnrs]))  # no overlap
