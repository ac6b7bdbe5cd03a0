"""Bjontegaard delta rate: the average rate difference of two R-D curves at equal quality.

Each curve is log(rate) as a function of PSNR, interpolated piecewise-cubically with PCHIP
(monotone, no overshoot between points, the variant current codec comparisons use instead of the
original least-squares cubic); the two are integrated over the PSNR range both curves cover and
the mean log-rate difference is turned into a percentage. Negative: the test curve needs fewer
bits than the reference for the same PSNR.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator


def _curve(rates, psnrs):
    rates = np.asarray(rates, dtype=np.float64)
    psnrs = np.asarray(psnrs, dtype=np.float64)
    if rates.shape != psnrs.shape or rates.ndim != 1 or rates.size < 2:
        raise ValueError("bd_rate: each curve needs >= 2 (rate, psnr) points of equal count")
    if not (np.all(np.isfinite(rates)) and np.all(rates > 0) and np.all(np.isfinite(psnrs))):
        raise ValueError("bd_rate: rates must be positive and finite, PSNRs finite")
    order = np.argsort(psnrs)
    psnrs, log_rates = psnrs[order], np.log(rates[order])
    if np.any(np.diff(psnrs) <= 0):
        return None  # two points at one PSNR: log-rate is not a function of PSNR
    return PchipInterpolator(psnrs, log_rates), psnrs[0], psnrs[-1]


def bd_rate(ref_rates, ref_psnrs, test_rates, test_psnrs) -> float:
    """BD-rate of the test curve against the reference, in percent; NaN where the curves do not
    overlap in PSNR or a curve is not a function of PSNR."""
    ref = _curve(ref_rates, ref_psnrs)
    test = _curve(test_rates, test_psnrs)
    if ref is None or test is None:
        return math.nan
    lo, hi = max(ref[1], test[1]), min(ref[2], test[2])
    if not hi > lo:
        return math.nan
    mean_diff = (test[0].integrate(lo, hi) - ref[0].integrate(lo, hi)) / (hi - lo)
    return float((math.exp(mean_diff) - 1.0) * 100.0)


def psnr_overlap(ref_psnrs, test_psnrs) -> float:
    """Width in dB of the PSNR interval both curves cover (0 where they do not overlap)."""
    return max(0.0, min(max(ref_psnrs), max(test_psnrs)) - max(min(ref_psnrs), min(test_psnrs)))
