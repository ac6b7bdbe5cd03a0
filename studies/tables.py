#!/usr/bin/env python
"""Markdown tables of a run_all output folder (the tables of docs/studies.md).

    python studies/tables.py DIR                            # print them
    python studies/tables.py DIR --page docs/studies.md     # refill the page's marked tables
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


def _pm(mean, se, digits=3) -> str:
    return f"{float(mean):+.{digits}f} ± {float(se):.{digits}f}"


def decomposition_table(out: str, point: str) -> str:
    """Per surrogate: estimation bias (± standard error) and mismatch (exact), per parameter."""
    rows = common.read_csv(os.path.join(out, "gradient", "gradient_bias_variance.csv"))
    body = []
    for zc in ("True", "False"):
        seen = []
        for r in rows:
            t = float(r["temperature"])
            if r["point"] != point or r["zero_center"] != zc or (r["mode"], t) in seen:
                continue
            if r["mode"] == "sua" and t not in (0.3, 0.5, 0.7):
                continue
            seen.append((r["mode"], t))
            sel = {o["param"]: o for o in rows if o["point"] == point and o["mode"] == r["mode"]
                   and o["zero_center"] == zc and o["temperature"] == r["temperature"]}
            name = r["mode"] + (f" T={t:g}" if r["mode"] == "sua" else "")
            body.append(["yes" if zc == "True" else "no", name] + [
                f"{_pm(sel[p]['estimation_bias'], sel[p]['bias_stderr'])} / "
                f"{float(sel[p]['mismatch']):+.3f}" for p in ("theta", "mu", "sigma", "g")])
    return _table(["zero-centre", "surrogate"] + [f"d/d{p}: estimation / mismatch"
                                                  for p in ("theta", "mu", "sigma", "g")], body)


def zero_center_table(out: str, point: str) -> str:
    rows = common.read_csv(os.path.join(out, "zero_center", "zero_center.csv"))
    body = []
    keys = []
    for r in rows:
        k = (r["mode"], r["temperature"], r["setting"])
        if r["point"] == point and k not in keys:
            keys.append(k)
    for mode, t, setting in keys:
        sel = {o["param"]: o for o in rows if o["point"] == point and o["mode"] == mode
               and o["temperature"] == t and o["setting"] == setting}
        name = mode + (f" T={float(t):g}" if mode == "sua" else "")
        body.append([name, setting] + [_pm(sel[p]["bias"], sel[p]["bias_stderr"])
                                       for p in ("theta", "mu", "g")]
                    + [f"{float(sel[p][k]):.3g}" for p in ("theta", "mu")
                       for k in ("data_variance", "noise_variance")])
    return _table(["surrogate", "lattice", "bias d/dtheta", "bias d/dmu", "bias d/dg",
                   "d/dtheta var: data", "d/dtheta var: noise", "d/dmu var: data",
                   "d/dmu var: noise"], body)


def bound_training_table(out: str) -> str:
    rows = common.read_csv(os.path.join(out, "bound_training", "bound_training.csv"))
    body = [[r["c"], r["scale_bound"], r["mode"], f"{100 * float(r['bound_active']):.0f}%",
             f"{float(r['a']):.3f}", f"{float(r['rate']):.3f}",
             f"{float(r['rate_exact_model']):.3f}",
             f"{float(r['distortion']):.4f}", f"{float(r['J']):.3f}",
             f"{float(r['noise_rate_gap']):+.3f}", f"{float(r['noise_abs_rate_gap']):.3f}"]
            for r in rows]
    return _table(["c", "b_sigma", "trained with", "groups bounded", "encoder gain a",
                   "rate (bits/elem.)", "rate, exact model", "distortion", "J = R + 4 D",
                   "noise: rate gap", "noise: abs gap"], body)


ARM_ORDER = ["noise", "mixed", "sua_tricks"]  # studies/paired_rd.py's ARMS


def paired_table(out: str) -> tuple[str, str]:
    """(per-arm means, paired differences with 95 % t intervals)."""
    summary = json.load(open(os.path.join(out, "rd", "paired_rd_summary.json")))
    means = _table(["arm", "seeds", "bpp", "PSNR (dB)", "J"], [
        [a, summary["seeds_per_arm"][a], f"{m['bpp']:.4f}", f"{m['psnr']:.2f}", f"{m['J']:.4f}"]
        for a, m in sorted(summary["means"].items(), key=lambda kv: ARM_ORDER.index(kv[0]))])
    body = []
    for pair, d in summary["paired"].items():
        cells = []
        for k, digits in (("J", 4), ("bpp", 4), ("psnr", 2)):
            e = d[k]
            if e["ci_low"] is None:
                cells.append(f"{e['mean']:+.{digits}f}")
            else:
                cells.append(f"{e['mean']:+.{digits}f} [{e['ci_low']:+.{digits}f}, "
                             f"{e['ci_high']:+.{digits}f}]")
        p = d["J"]["p"]
        body.append([pair, d["J"]["n"]] + cells + ["" if p is None else f"{p:.2g}"])
    diffs = _table(["difference", "seeds", "J (95% CI)", "bpp (95% CI)", "PSNR dB (95% CI)",
                    "p (J, two-sided t)"], body)
    return means, diffs


def coded_vs_estimated(out: str) -> str:
    """Per held-out photo, the range over models of (estimated bits - coded bits) / estimated."""
    rows = common.read_csv(os.path.join(out, "rd", "rd_points.csv"))
    parts = []
    for image in sorted({r["image"] for r in rows}):
        gaps = [100 * (float(r["bpp_estimated"]) - float(r["bpp"])) / float(r["bpp_estimated"])
                for r in rows if r["image"] == image]
        parts.append(f"{image} {min(gaps):.1f}–{max(gaps):.1f} %")
    return "; ".join(parts)


def named_tables(out: str) -> dict:
    """Every table of docs/studies.md, by the name its marker uses."""
    means, diffs = paired_table(out)
    tables = {"mismatch": mismatch_table(out), "bound": bound_table(out),
              "rd": rd_table(out), "bound_training": bound_training_table(out),
              "paired_means": means, "paired_diffs": diffs}
    for point in ("narrow", "wide"):
        tables[f"gradient_{point}"] = gradient_table(out, point)
        tables[f"decomposition_{point}"] = decomposition_table(out, point)
        tables[f"zero_center_{point}"] = zero_center_table(out, point)
    return tables


def fill_page(page: str, out: str) -> None:
    """Replace the text between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in ``page`` with
    the table NAME computed from ``out``."""
    import re

    tables = named_tables(out)
    text = open(page).read()

    def sub(m):
        return f"<!-- table:{m.group(1)} -->\n{tables[m.group(1)]}\n<!-- /table -->"

    text, n = re.subn(r"<!-- table:(\w+) -->.*?<!-- /table -->", sub, text, flags=re.S)
    with open(page, "w") as f:
        f.write(text)
    print(f"{page}: {n} tables from {out}")


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    if "--page" in args:  # python studies/tables.py DIR --page docs/studies.md
        i = args.index("--page")
        page = args[i + 1]
        del args[i:i + 2]
        fill_page(page, (args or ["studies_out"])[0])
        return
    out = (args or ["studies_out"])[0]
    print("## mismatch (b_sigma = 0.11)\n")
    print(mismatch_table(out))
    print("\n## scale bound\n")
    print(bound_table(out))
    for point in ("narrow", "wide"):
        print(f"\n## gradient, point {point}\n")
        print(gradient_table(out, point))
    print("\n## rate-distortion\n")
    print(rd_table(out))
    print("\ncoded below estimated, per photo: " + coded_vs_estimated(out))
    for point in ("narrow", "wide"):
        print(f"\n## bias decomposition, point {point}\n")
        print(decomposition_table(out, point))
        print(f"\n## zero-centre with per-element mean, point {point}\n")
        print(zero_center_table(out, point))
    print("\n## sigma bound during training\n")
    print(bound_training_table(out))
    means, diffs = paired_table(out)
    print("\n## paired R-D test\n")
    print(means)
    print()
    print(diffs)


if __name__ == "__main__":
    main()
