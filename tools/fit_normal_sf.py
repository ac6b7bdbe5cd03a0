"""Fits the polynomial coefficients of lic_quant's float32 normal tail and exponential
(csrc/lic_quant/normal_dist.h) and measures the accuracy of their float32 evaluation.

  Q(x) = exp(-x^2/2) * t * R(t),   t = 1/(1 + C x),  x >= 0,  R of degree DEG_R (default C = 0.35,
         degree 8): one formula from 0 to 20, so the kernels need no centre piece and no select
  (e^r - 1) / r = G(r) on |r| <= ln2/2, degree 5: exp and expm1 after a Cody-Waite reduction

The fits are weighted least squares on Chebyshev-spaced nodes, re-weighted towards the largest
relative error a few dozen times (a cheap stand-in for a minimax fit), then rounded to float32.
The measurement evaluates Horner with correctly rounded fma (float64 products of float32 values are
exact) and compares with scipy in float64.

    python tools/fit_normal_sf.py          (needs numpy and scipy; C and DR override the defaults)
"""
import os

import numpy as np
from scipy.special import erfcx, ndtr

C = float(os.environ.get("C", 0.35))
DEG_R = int(os.environ.get("DR", 8))
X_MAX = 20.0


def refit(x, y, deg, rounds=30):
    """Relative-error fit: least squares with weights pushed towards the worst points."""
    coef = np.polynomial.Chebyshev.fit(x, y, deg, w=1 / np.abs(y))
    for _ in range(rounds):
        poly = coef.convert(kind=np.polynomial.Polynomial).coef
        err = np.abs(np.polyval(poly[::-1], x) - y) / np.abs(y)
        coef = np.polynomial.Chebyshev.fit(x, y, deg, w=(1 / np.abs(y)) * (1 + 50 * err / err.max()))
    return [float(np.float32(c)) for c in coef.convert(kind=np.polynomial.Polynomial).coef]


def fma32(a, b, c):
    """Correctly rounded float32 fma (a*b is exact in float64; the sum is rounded once in float64,
    and a second rounding to float32 can only differ at exact float32 midpoints, which this
    measurement can ignore)."""
    return (a.astype(np.float64) * b.astype(np.float64) + np.float64(c)).astype(np.float32)


def horner(coef, x):
    acc = np.full_like(x, np.float32(coef[-1]))
    for c in coef[-2::-1]:
        acc = fma32(acc, x, c)
    return acc


def main():
    k = np.arange(6000)
    node = 0.5 * (1 - np.cos(np.pi * (k + 0.5) / len(k)))
    # R on t in [1/(1 + C X_MAX), 1]
    t_lo = 1 / (1 + C * X_MAX)
    t = t_lo + (1 - t_lo) * node
    x = (1 / t - 1) / C
    r = 0.5 * erfcx(x / np.sqrt(2)) / t
    cr = refit(t, r, DEG_R)
    # G on |r| <= ln2/2
    half = np.log(2) / 2 * 1.001
    rr = half * (2 * node - 1)
    g = np.expm1(rr) / np.where(rr == 0, 1, rr)
    cg = refit(rr, np.where(rr == 0, 1, g), 5)
    print("R (ascending) =", [f"{c:.9g}" for c in cr])
    print("G (ascending) =", [f"{c:.9g}" for c in cg])

    # float32 Q over [0, 14], exp(-x^2/2) taken exact (the kernels' split exp is accurate to ~1 ulp)
    xx = np.linspace(0, 14, 2_000_001).astype(np.float32)
    truth = ndtr(-xx.astype(np.float64))
    tt = (np.float32(1) / fma32(np.full_like(xx, C), xx, 1.0)).astype(np.float32)
    e = np.exp(-0.5 * xx.astype(np.float64) ** 2).astype(np.float32)
    q = (e * (tt * horner(cr, tt)).astype(np.float32)).astype(np.float32)
    ok = truth > 1e-37
    rel = np.abs(q[ok] - truth[ok]) / truth[ok]
    print(f"Q: max relative error {rel.max():.3e} at x = {xx[ok][rel.argmax()]}")
    r32 = np.linspace(-np.log(2) / 2, np.log(2) / 2, 400_001).astype(np.float32)
    ex = fma32(horner(cg, r32), r32, 1.0)
    rel_e = np.abs(ex - np.exp(r32.astype(np.float64))) / np.exp(r32.astype(np.float64))
    print(f"exp(r) = r G(r) + 1: max relative error {rel_e.max():.3e}")


if __name__ == "__main__":
    main()
