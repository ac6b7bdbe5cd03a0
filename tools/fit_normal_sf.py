"""Fits the polynomial coefficients of lic_quant's float32 normal tail Q(a) = P(X > a).

Two pieces, chosen so that SIMD code can evaluate both and select:
  a <  A0 :  Q(a) = 1/2 - a * S(a^2),        S(z) = erf(sqrt(z/2)) / (2 sqrt(z))
  a >= A0 :  Q(a) = exp(-a^2/2) * t * R(t),  t = 1/(1 + C*a),  t R(t) = erfcx(a/sqrt2)/2
exp(-a^2/2) is evaluated from an exact split of a^2 (see csrc/lic_quant/gaussian_math.h), so the
tail keeps its relative accuracy down to the float32 underflow.
Run: python tools/fit_normal_sf.py   (needs numpy, scipy); prints the coefficients and the
measured relative error of a float32 Horner evaluation against scipy in float64.
"""
import numpy as np
from scipy.special import erf, erfcx, ndtr

import os
A0 = float(os.environ.get('A0', 0.75))
C = float(os.environ.get('C', 0.5))
DEG_S = int(os.environ.get('DS', 5))
DEG_R = int(os.environ.get('DR', 9))


def fit(x, y, deg, w):
    # weighted least squares on a Chebyshev-spaced grid, then converted to monomials (Horner)
    cheb = np.polynomial.Chebyshev.fit(x, y, deg, w=w)
    return cheb.convert(kind=np.polynomial.Polynomial).coef


def horner32(coef, x):
    x = x.astype(np.float32)
    acc = np.float32(coef[-1])
    for c in coef[-2::-1]:
        acc = (acc * x + np.float32(c)).astype(np.float32)
    return acc


def main():
    k = np.arange(4000)
    # S on z = a^2 in [0, A0^2]
    z = (A0**2) * 0.5 * (1 - np.cos(np.pi * (k + 0.5) / len(k)))
    s = np.where(z > 0, erf(np.sqrt(z / 2)) / (2 * np.sqrt(np.maximum(z, 1e-300))), 1 / np.sqrt(2 * np.pi))
    cs = fit(z, s, DEG_S, 1 / s)
    # R on t in (0, 1/(1 + C*A0)]
    tmax = 1 / (1 + C * A0)
    t = tmax * 0.5 * (1 - np.cos(np.pi * (k + 0.5) / len(k)))
    a = (1 / t - 1) / C
    r = 0.5 * erfcx(a / np.sqrt(2)) / t
    cr = fit(t, r, DEG_R, 1 / r)
    np.set_printoptions(precision=17)
    print("S =", [float(np.float32(c)) for c in cs])
    print("R =", [float(np.float32(c)) for c in cr])
    for name, c in (("S", cs), ("R", cr)):
        print(f"static const float k{name}[] = {{" + ", ".join(f"{np.float32(v)!r}f".replace("np.float32(", "").replace(")", "") for v in c) + "};")

    # measure: float32 evaluation of the whole Q, against float64 ground truth
    aa = np.concatenate([np.linspace(0, 14, 2_000_001)]).astype(np.float32)
    a64 = aa.astype(np.float64)
    truth = ndtr(-a64)
    z32 = (aa * aa).astype(np.float32)
    q_small = (np.float32(0.5) - aa * horner32(cs, z32)).astype(np.float32)
    t32 = (np.float32(1) / (np.float32(1) + np.float32(C) * aa)).astype(np.float32)
    e = np.exp(-a64 * a64 / 2)  # stands in for the split exp, which is accurate to ~1 ulp
    q_big = (e.astype(np.float32) * (t32 * horner32(cr, t32))).astype(np.float32)
    q = np.where(aa < A0, q_small, q_big)
    ok = truth > 1e-37
    rel = np.abs(q[ok] - truth[ok]) / truth[ok]
    print(f"max rel err of Q in float32 over [0, 14] (Q > 1e-37): {rel.max():.3e} at a={aa[ok][rel.argmax()]}")
    print(f"  small piece max {rel[aa[ok] < A0].max():.3e}, tail piece max {rel[aa[ok] >= A0].max():.3e}")


if __name__ == "__main__":
    main()
