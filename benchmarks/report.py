"""The CPU benchmark's table from pytest-benchmark JSON: median and 20/80 % quantiles per provider,
and the fused op's speedup over each other provider measured in the same run; optionally the same
rows as CSV and a bar plot of the speedups.

    python benchmarks/report.py RESULT.json [--csv OUT.csv] [--plot OUT.png]

The header names the CPU, its vector ISA level and the thread count (recorded in the JSON by
benchmarks/conftest.py at run time; read from this machine for older files).
"""
from __future__ import annotations

import argparse
import csv
import json
import textwrap
from collections import defaultdict

from machine import cpu_description


def quantile(data, q):
    data = sorted(data)
    pos = q * (len(data) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def load_rows(doc):
    """One row per (shape, step, provider), seconds; speedup = provider median / fused median."""
    groups = defaultdict(dict)
    for b in doc["benchmarks"]:
        info = b["extra_info"]
        data = b["stats"].get("data") or [b["stats"]["median"]]
        groups[(info["shape"], info["step"])][info["provider"]] = (
            quantile(data, 0.5), quantile(data, 0.2), quantile(data, 0.8))
    rows = []
    for (shape, step), provs in groups.items():
        fused = provs.get("fused")
        for name, (med, p20, p80) in provs.items():
            rows.append({"shape": shape, "step": step, "provider": name, "median_ms": med * 1e3,
                         "p20_ms": p20 * 1e3, "p80_ms": p80 * 1e3,
                         "fused_speedup": med / fused[0] if fused and name != "fused" else None})
    return rows


def header(doc):
    recorded = doc.get("machine_info", {}).get("lic_quant")
    cpu = recorded or cpu_description()
    threads = doc["benchmarks"][0]["extra_info"].get("threads", cpu.get("threads"))
    return (f"# {cpu['model']}; vector ISA {cpu['isa']} (ATen kernels: {cpu['aten']}); "
            f"{threads} torch threads; torch {cpu.get('torch', '?')}; {doc.get('datetime', '')}")


def print_table(rows, head):
    print(head)
    print(f"{'shape':<14} {'step':<17} {'provider':<10} {'median ms':>10} {'p20 ms':>9} "
          f"{'p80 ms':>9} {'fused speedup':>14}")
    for r in rows:
        speed = f"{r['fused_speedup']:.2f}x" if r["fused_speedup"] else ""
        print(f"{r['shape']:<14} {r['step']:<17} {r['provider']:<10} {r['median_ms']:>10.2f} "
              f"{r['p20_ms']:>9.2f} {r['p80_ms']:>9.2f} {speed:>14}")


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows, path, head):
    """Bars: the fused op's speedup over each other provider, per shape and step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["shape"], r["step"]) for r in rows))
    others = list(dict.fromkeys(r["provider"] for r in rows if r["fused_speedup"]))
    width = 0.8 / max(len(others), 1)
    fig, ax = plt.subplots(figsize=(2.2 * len(cases) + 2, 4))
    for k, provider in enumerate(others):
        xs, ys = [], []
        for i, case in enumerate(cases):
            for r in rows:
                if (r["shape"], r["step"], r["provider"]) == (*case, provider):
                    xs.append(i + (k - (len(others) - 1) / 2) * width)
                    ys.append(r["fused_speedup"])
        bars = ax.bar(xs, ys, width, label=f"fused vs {provider}", edgecolor="black",
                      linewidth=0.5)
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(cases)), [f"{s}\n{st}" for s, st in cases], fontsize=8)
    ax.set_ylabel("speedup of the fused op (median times)")
    ax.set_title(textwrap.fill(head.lstrip("# "), 100), fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json")
    p.add_argument("--csv")
    p.add_argument("--plot")
    args = p.parse_args(argv)
    with open(args.json) as f:
        doc = json.load(f)
    rows = load_rows(doc)
    head = header(doc)
    print_table(rows, head)
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot:
        plot(rows, args.plot, head)


if __name__ == "__main__":
    main()
