"""The EntropyBottleneck's float32 tanh (csrc/lic_quant/eb_math.h, eb_tanh): fit and error check.

tanh(x) = x P(x^2) / Q(x^2) with P of degree 6 and Q of degree 3 (Q(0) = 1), fitted on
0 <= x <= 9.2 for the least largest relative error by the differential-correction method (each
step a linear program: minimise e subject to |P(s) - f(s) Q(s)| <= e f(s) Q_prev(s), f(s) =
tanh(x)/x from mpmath at 40 digits). Every float32 tanh from 9.02 on rounds to 1; the kernels
hold x at the first float32 from 9.02 on where the evaluation gives 1 exactly (HOLD, printed), so
that the result saturates at 1, and clamp the result to [-1, 1].

Then every float32 argument in [2^-14, 9.2] (or every STEP-th one) is evaluated the way the
kernels do, fma for fma, and compared with float64 tanh; the largest error in float32 ulps is
what tests/test_triton.py::test_eb_tanh_against_mpmath allows (with a margin it states);
test_eb_tanh_constants_are_the_fit checks that eb_math.h and its Triton port hold these constants.

    python tools/fit_eb_tanh.py [--step STEP]
"""
import argparse

import mpmath
import numpy as np
from scipy.optimize import linprog

P_DEGREE, Q_DEGREE = 6, 3
FIT_END = 9.2      # the fit covers [0, FIT_END]


def fit():
    mpmath.mp.dps = 40
    xs = np.unique(np.concatenate([np.linspace(1e-4, FIT_END, 6000),
                                   FIT_END * (1 - np.cos(np.linspace(0, np.pi / 2, 3000)))[1:]]))
    f = np.array([float(mpmath.tanh(mpmath.mpf(x)) / x) for x in xs])
    scale = FIT_END ** 2
    t = xs ** 2 / scale  # the variable on [0, 1] for conditioning
    a_p = np.vander(t, P_DEGREE + 1, increasing=True)
    a_q = np.vander(t, Q_DEGREE + 1, increasing=True)[:, 1:]
    n_var = P_DEGREE + Q_DEGREE + 2
    q_prev, best = np.ones_like(t), (np.inf, None)
    for _ in range(15):
        row = np.hstack([a_p, -(f[:, None] * a_q)])
        w = (f * q_prev)[:, None]
        a_ub = np.vstack([np.hstack([row, -w]), np.hstack([-row, -w])])
        b_ub = np.concatenate([f, -f])
        cost = np.zeros(n_var)
        cost[-1] = 1.0
        # The residuals are ~1e-9: rows scaled up so that HiGHS's feasibility tolerance does not
        # swamp them.
        res = linprog(cost, A_ub=a_ub * 1e6, b_ub=b_ub * 1e6, method="highs",
                      bounds=[(None, None)] * (n_var - 1) + [(0, None)],
                      options=dict(primal_feasibility_tolerance=1e-9,
                                   dual_feasibility_tolerance=1e-9))
        if res.x is None:
            break
        p_val = a_p @ res.x[:P_DEGREE + 1]
        q_val = 1 + a_q @ res.x[P_DEGREE + 1:-1]
        if np.any(q_val <= 0):
            break
        err = np.max(np.abs(p_val / q_val - f) / f)
        if err < best[0]:
            best = (err, res.x)
        q_prev = q_val
    err, coef = best
    p = coef[:P_DEGREE + 1] / scale ** np.arange(P_DEGREE + 1)
    q = np.concatenate([[1.0], coef[P_DEGREE + 1:-1] / scale ** np.arange(1, Q_DEGREE + 1)])
    return err, p.astype(np.float32), q.astype(np.float32)


def fma32(a, b, c):
    # a * b is exact in float64; the sum rounds twice (to 53 bits, then 24): for an error bound
    # in ulps that is immaterial.
    return (a.astype(np.float64) * b + c).astype(np.float32)


def eb_tanh32(x, p, q, hold):
    """eb_math.h eb_tanh, operation for operation (x >= 0)."""
    c = np.minimum(x, np.float32(hold))
    s = c * c
    acc_p = np.full_like(s, p[-1])
    for k in range(P_DEGREE - 1, -1, -1):
        acc_p = fma32(acc_p, s, p[k])
    acc_q = np.full_like(s, q[-1])
    for k in range(Q_DEGREE - 1, -1, -1):
        acc_q = fma32(acc_q, s, q[k])
    return np.minimum((c * acc_p) / acc_q, np.float32(1.0))


def find_hold(p, q):
    x = np.float32(9.02)
    while eb_tanh32(np.array([x]), p, q, x)[0] != 1.0:
        x = np.nextafter(x, np.float32(np.inf))
    return x


def worst_error(p, q, hold, step):
    lo = int(np.array(2.0 ** -14, np.float32).view(np.int32))
    hi = int(np.array(FIT_END, np.float32).view(np.int32))
    worst, at = 0.0, None
    for start in range(lo, hi, 20_000_000):
        x = np.arange(start, min(start + 20_000_000, hi), step, dtype=np.int32).view(np.float32)
        ref = np.tanh(x.astype(np.float64))
        ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
        err = np.abs(eb_tanh32(x, p, q, hold) - ref) / ulp
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, at = float(err[i]), float(x[i])
    return worst, at


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=1, help="check every STEP-th float32")
    args = ap.parse_args()
    err, p, q = fit()
    print(f"fit: largest relative error {err:.3g} ({err / 2 ** -24:.2f} x 2^-24)")
    print("P:", ", ".join(f"{v:.9g}f" for v in p))
    print("Q:", ", ".join(f"{v:.9g}f" for v in q))
    hold = find_hold(p, q)
    print(f"HOLD: {hold:.9g}f")
    worst, at = worst_error(p, q, hold, args.step)
    print(f"float32 evaluation, every {args.step}. argument in [2^-14, {FIT_END}]: "
          f"largest error {worst:.3f} ulp at {at!r}")


if __name__ == "__main__":
    main()
