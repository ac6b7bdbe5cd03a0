#!/usr/bin/env python
"""Markdown tables of a run_all output folder (the tables of docs/studies.md).

    python studies/tables.py DIR
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from studies import common  # noqa: E402


def _table(header, rows) -> str:
    header = [h.replace("|", "\\|") for h in header]  # a bare | would end the cell
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mismatch_table(out: str, bound: float = 0.11) -> str:
    rows = common.read_csv(os.path.join(out, "mismatch", "mismatch.csv"))
    body = []
    for src in ("trained", "gaussian", "laplacian"):
        for r in rows:
            if r["source"] != src or float(r["scale_bound"]) != bound:
                continue
            if r["mode"] == "sua" and float(r["temperature"]) not in (0.25, 0.3, 0.5, 0.7, 1.0):
                continue
            name = r["mode"] + (f" T={float(r['temperature']):g}" if r["mode"] == "sua" else "")
            body.append([src, name] + [f"{float(r[k]):.3f}" for k in
                                       ("mismatch_D", "mismatch_R", "rate_gap", "abs_rate_gap",
                                        "rate_round")])
    return _table(["latents", "surrogate", "E|r~_D - n|", "E|r~_R - n|", "rate gap",
                   "mean abs rate gap", "bits under rounding"], body)


def bound_table(out: str) -> str:
    rows = common.read_csv(os.path.join(out, "mismatch", "mismatch.csv"))
    info = json.load(open(os.path.join(out, "mismatch", "mismatch_sources.json")))
    body = []
    for src in ("trained", "gaussian", "laplacian"):
        for b in (0.0, 0.11, 0.25, 0.5):
            sel = {(r["mode"], r["temperature"]): r for r in rows
                   if r["source"] == src and float(r["scale_bound"]) == b}
            noise = sel[("noise", "")]
            sua5 = next(r for (m, t), r in sel.items() if m == "sua" and float(t) == 0.5)
            frac = info["sources"][src]["fraction_sigma_below"][str(b)]
            body.append([src, b, f"{100 * frac:.1f}%", f"{float(noise['rate_gap']):+.3f}",
                         f"{float(noise['abs_rate_gap']):.3f}", f"{float(sua5['rate_gap']):+.3f}",
                         f"{float(sua5['abs_rate_gap']):.3f}",
                         f"{float(sel[('ste', '')]['rate_round']):.3f}"])
    return _table(["latents", "b_sigma", "sigma < b_sigma", "noise: gap", "noise: abs gap",
                   "sua T=0.5: gap", "sua T=0.5: abs gap", "bits under rounding"], body)


def gradient_table(out: str, point: str) -> str:
    rows = common.read_csv(os.path.join(out, "gradient", "gradient_bias_variance.csv"))
    body = []
    for zc in ("True", "False"):
        for r in rows:
            if r["point"] != point or r["zero_center"] != zc or r["param"] != "theta":
                continue
            t = float(r["temperature"])
            if r["mode"] == "sua" and t not in (0.3, 0.5, 0.7):
                continue
            name = r["mode"] + (f" T={t:g}" if r["mode"] == "sua" else "")
            others = {o["param"]: o for o in rows if o["point"] == point and o["mode"] == r["mode"]
                      and o["zero_center"] == zc and o["temperature"] == r["temperature"]}
            cells = []
            for p in ("theta", "mu", "sigma", "g"):
                o = others[p]
                cells.append(f"{float(o['bias']):+.3f} ± {float(o['bias_stderr']):.3f}")
            body.append([zc == "True" and "yes" or "no", name] + cells + [
                f"{float(others['theta']['variance']):.3g}",
                f"{float(others['theta']['noise_variance']):.3g}"])
    return _table(["zero-centre", "surrogate", "bias d/dtheta", "bias d/dmu", "bias d/dsigma",
                   "bias d/dg", "var d/dtheta", "noise var d/dtheta"], body)


def rd_table(out: str) -> str:
    summary = json.load(open(os.path.join(out, "rd", "rd_summary.json")))
    body = []
    for curve, pts in summary["curves"].items():
        bd = summary["bd_rate_vs_reference"][curve]
        cells = [f"{p['bpp']:.3f} / {p['psnr']:.2f}" for p in pts]
        body.append([curve] + cells + [f"{bd['bd_rate_percent']:+.1f}%",
                                       f"{bd['psnr_overlap_db']:.2f} dB",
                                       "yes" if bd.get("monotone") else "no"])
    first = next(iter(summary["curves"].values()))
    lambdas = [f"lambda={p['lambda']:g}: bpp / PSNR" for p in first]
    return _table(["training"] + lambdas + ["BD-rate vs mixed", "PSNR overlap", "monotone"],
                  body)


def main(argv=None):
    out = (argv or sys.argv[1:] or ["studies_out"])[0]
    print("## mismatch (b_sigma = 0.11)\n")
    print(mismatch_table(out))
    print("\n## scale bound\n")
    print(bound_table(out))
    for point in ("narrow", "wide"):
        print(f"\n## gradient, point {point}\n")
        print(gradient_table(out, point))
    print("\n## rate-distortion\n")
    print(rd_table(out))


if __name__ == "__main__":
    main()
