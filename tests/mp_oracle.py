"""An independent high-precision evaluation of docs/spec.md sections 1, 2 and 6 with mpmath: the bin
mass p = S(a) - S(b) of each likelihood family (a = (|v| - 1/2)/s, b = (|v| + 1/2)/s, S = 1 - F)
and its slopes dp/d|v| = (f(b) - f(a))/s, dp/ds = (a f(a) - b f(b))/s, straight from the
definitions: no reflected or cancellation-free forms, the working precision does the work instead.

The differences cancel (S(a) - S(b) at large s, f(b) - f(a) near |v| = 0), so each value is
evaluated at increasing precision until two evaluations agree to `digits` significant digits.
Inputs are Python floats (float32 or float64 values, exact in binary), read exactly.
"""
from __future__ import annotations

import mpmath as mp


def _survival(family: str, x):
    if family == "gaussian":
        return mp.erfc(x / mp.sqrt(2)) / 2
    if family == "laplace":
        return mp.exp(-x) / 2 if x >= 0 else 1 - mp.exp(x) / 2
    if family == "logistic":
        return 1 / (1 + mp.exp(x))
    raise ValueError(family)


def _density(family: str, x):
    if family == "gaussian":
        return mp.npdf(x)
    if family == "laplace":
        return mp.exp(-abs(x)) / 2
    if family == "logistic":
        e = mp.exp(-abs(x))
        return e / (1 + e) ** 2
    raise ValueError(family)


def _evaluate(family: str, av: float, s: float):
    av, s = mp.mpf(av), mp.mpf(s)
    a = (av - mp.mpf(0.5)) / s
    b = (av + mp.mpf(0.5)) / s
    fa, fb = _density(family, a), _density(family, b)
    return (_survival(family, a) - _survival(family, b), (fb - fa) / s, (a * fa - b * fb) / s)


def _agree(x, y, digits: int) -> bool:
    if x == y:
        return True
    return abs(x - y) <= abs(y) * mp.mpf(10) ** (-digits)


def bin_mass(family: str, av: float, s: float, digits: int = 50):
    """(p, dp/d|v|, dp/ds) as mpf, each good to `digits` significant digits (or exactly 0)."""
    dps = digits + 20
    with mp.workdps(dps):
        prev = _evaluate(family, av, s)
    while True:
        dps *= 2
        with mp.workdps(dps):
            cur = _evaluate(family, av, s)
            if all(_agree(x, y, digits) for x, y in zip(prev, cur)):
                return cur
        if dps > 20000:
            raise RuntimeError(f"no convergence for {family} at |v|={av!r}, s={s!r}")
        prev = cur


def relative_error(got: float, exact) -> float:
    """|got - exact| / |exact| (0 where both are 0, inf where only exact is)."""
    if exact == 0:
        return 0.0 if got == 0 else float("inf")
    return float(abs((mp.mpf(got) - exact) / exact))
