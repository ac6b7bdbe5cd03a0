"""Prints the benchmark table from pytest-benchmark JSON: median and 20/80% quantiles per
provider, and the fused op's speedup over each other provider measured in the same run."""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def quantile(data, q):
    data = sorted(data)
    pos = q * (len(data) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def main(path):
    with open(path) as f:
        doc = json.load(f)
    groups = defaultdict(dict)
    for b in doc["benchmarks"]:
        info = b["extra_info"]
        data = b["stats"].get("data") or [b["stats"]["median"]]
        groups[(info["shape"], info["step"])][info["provider"]] = (
            quantile(data, 0.5), quantile(data, 0.2), quantile(data, 0.8))
    machine = doc.get("machine_info", {})
    print(f"# {machine.get('cpu', {}).get('brand_raw', '?')}, torch threads "
          f"{doc['benchmarks'][0]['extra_info'].get('threads')}, {doc.get('datetime', '')}")
    print(f"{'shape':<14} {'step':<17} {'provider':<10} {'median ms':>10} {'p20 ms':>9} "
          f"{'p80 ms':>9} {'fused speedup':>14}")
    for (shape, step), provs in groups.items():
        fused = provs.get("fused")
        for name, (med, p20, p80) in provs.items():
            speed = f"{med / fused[0]:.2f}x" if fused and name != "fused" else ""
            print(f"{shape:<14} {step:<17} {name:<10} {med * 1e3:>10.2f} {p20 * 1e3:>9.2f} "
                  f"{p80 * 1e3:>9.2f} {speed:>14}")


if __name__ == "__main__":
    main(sys.argv[1])
