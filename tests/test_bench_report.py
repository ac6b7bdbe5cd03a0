"""benchmarks/report.py and benchmarks/machine.py: the CPU benchmark's table, CSV, plot and the
CPU description in its header, on a small synthetic pytest-benchmark JSON."""
from __future__ import annotations

import csv
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import machine  # noqa: E402
import report  # noqa: E402


@pytest.mark.parametrize("flags, level", [
    ({"sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512cd"},
     "AVX-512 (F, BW, VL, BF16)"),
    ({"avx2", "avx512f"}, "AVX-512 (F)"),
    ({"sse4_2", "avx", "avx2", "fma"}, "AVX2"),
    ({"sse4_2", "avx"}, "AVX"),
    ({"sse2"}, "baseline (no SSE4.2)"),
])
def test_isa_level_is_the_widest_announced(flags, level):
    assert machine.isa_level(flags) == level


def test_cpuinfo_model_and_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx avx2\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx avx2\n")
    model, flags = machine.read_cpuinfo(str(cpuinfo))
    assert model == "Test CPU 9000" and flags == {"fpu", "avx", "avx2"}


def synthetic_run():
    def bench(provider, step, times):
        return {"extra_info": {"shape": "4x4", "step": step, "provider": provider, "threads": 2},
                "stats": {"data": times, "median": sorted(times)[len(times) // 2]}}
    return {
        "datetime": "2026-11-26T00:00:00",
        "machine_info": {"lic_quant": {"model": "Test CPU 9000", "isa": "AVX2", "aten": "AVX2",
                                       "threads": 2, "torch": "2.14.1"}},
        "benchmarks": [bench("eager", "forward", [0.004, 0.005, 0.006]),
                       bench("fused", "forward", [0.001, 0.001, 0.002]),
                       bench("eager", "forward+backward", [0.010, 0.012, 0.011]),
                       bench("fused", "forward+backward", [0.004, 0.004, 0.004])],
    }


def test_table_csv_and_plot(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(synthetic_run()))
    report.main([str(path), "--csv", str(tmp_path / "run.csv"), "--plot", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert out.startswith("# Test CPU 9000; vector ISA AVX2 (ATen kernels: AVX2); 2 torch threads")
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    speed = {(r["step"], r["provider"]): r["fused_speedup"] for r in rows}
    assert float(speed[("forward", "eager")]) == pytest.approx(5.0)   # 5 ms / 1 ms
    assert float(speed[("forward+backward", "eager")]) == pytest.approx(11 / 4)
    assert speed[("forward", "fused")] == ""
    assert (tmp_path / "r.png").stat().st_size > 1000
