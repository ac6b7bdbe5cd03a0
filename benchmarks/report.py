"""The CPU benchmark's table from pytest-benchmark JSON: median and 20/80 % quantiles per provider,
and the fused op's speedup over each other provider measured in the same run; optionally the same
rows appended to a CSV (benchmarks/results/op_cpu.csv; benchmarks/plot.py draws from it).

    python benchmarks/report.py RESULT.json [--csv benchmarks/results/op_cpu.csv] [--label TEXT]

The header names the CPU, its vector ISA level and the thread count (recorded in the JSON by
benchmarks/conftest.py at run time; read from this machine for older files). The CSV rows carry
the run's date, the commit pytest-benchmark recorded and the machine.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import results_csv
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


def csv_rows(doc):
    """The rows of op_cpu.csv after its common columns."""
    cpu = doc.get("machine_info", {}).get("lic_quant") or {}
    rounds = {(b["extra_info"]["shape"], b["extra_info"]["step"], b["extra_info"]["provider"]):
              b["stats"].get("rounds", len(b["stats"].get("data") or [1]))
              for b in doc["benchmarks"]}
    threads = doc["benchmarks"][0]["extra_info"].get("threads", cpu.get("threads", ""))
    return [{"threads": threads, "aten_isa": cpu.get("aten", ""), "shape": r["shape"],
             "step": r["step"], "provider": r["provider"],
             "rounds": rounds[(r["shape"], r["step"], r["provider"])],
             "median_ms": r["median_ms"], "p20_ms": r["p20_ms"], "p80_ms": r["p80_ms"],
             "fused_speedup": r["fused_speedup"]} for r in load_rows(doc)]


def csv_context(doc):
    """date, commit, machine and torch of the run the JSON holds (pytest-benchmark records the
    commit and its dirty flag; conftest.py the CPU)."""
    ctx = dict(results_csv.run_context())
    if doc.get("datetime"):
        ctx["date"] = doc["datetime"][:19] + "Z"
    info = doc.get("commit_info") or {}
    if info.get("id") and len(info["id"]) >= 7 and info["id"] != "unversioned":
        ctx["commit"] = info["id"][:7] + ("-dirty" if info.get("dirty") else "")
    cpu = doc.get("machine_info", {}).get("lic_quant")
    if cpu:
        ctx["machine"] = f"{cpu['model']}; {cpu['isa']}"
        ctx["torch"] = cpu.get("torch", ctx["torch"])
    return ctx


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json")
    p.add_argument("--csv", help="append the rows to this CSV (header checked)")
    p.add_argument("--label", default="", help="what the commit does not say (build flags, env)")
    args = p.parse_args(argv)
    with open(args.json) as f:
        doc = json.load(f)
    rows = load_rows(doc)
    head = header(doc)
    print_table(rows, head)
    if args.csv:
        results_csv.append(args.csv, csv_rows(doc), label=args.label, context=csv_context(doc))


if __name__ == "__main__":
    main()
