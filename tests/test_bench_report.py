"""benchmarks/report.py, results_csv.py, plot.py and machine.py: the CPU benchmark's table, the rows
it appends to its CSV, the plots drawn from the CSV and the CPU description in the header, on a
small synthetic pytest-benchmark JSON."""
from __future__ import annotations

import csv
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import machine  # noqa: E402
import plot  # noqa: E402
import report  # noqa: E402
import results_csv  # noqa: E402


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
        "datetime": "2026-11-26T00:00:00.123456+00:00",
        "commit_info": {"id": "0123456789abcdef", "dirty": True},
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
    results = tmp_path / "results"
    out_csv = results / "op_cpu.csv"
    report.main([str(path), "--csv", str(out_csv), "--label", "test build"])
    out = capsys.readouterr().out
    assert out.startswith("# Test CPU 9000; vector ISA AVX2 (ATen kernels: AVX2); 2 torch threads")
    rows = list(csv.DictReader(open(out_csv)))
    assert list(rows[0])[:5] == list(results_csv.COMMON)
    assert {(r["date"], r["commit"], r["machine"], r["torch"], r["label"]) for r in rows} == {
        ("2026-11-26T00:00:00Z", "0123456-dirty", "Test CPU 9000; AVX2", "2.14.1", "test build")}
    speed = {(r["step"], r["provider"]): r["fused_speedup"] for r in rows}
    assert float(speed[("forward", "eager")]) == pytest.approx(5.0)   # 5 ms / 1 ms
    assert float(speed[("forward+backward", "eager")]) == pytest.approx(11 / 4)
    assert speed[("forward", "fused")] == ""
    # a second run appends below the same header
    report.main([str(path), "--csv", str(out_csv)])
    assert len(list(csv.DictReader(open(out_csv)))) == 2 * len(rows)
    written = plot.main(["--results", str(results)])
    assert {os.path.basename(p) for p in written} == {"op_cpu_speedup.png", "op_cpu_fused.png"}
    assert all(os.path.getsize(p) > 1000 for p in written)


def test_append_refuses_a_different_header(tmp_path):
    path = str(tmp_path / "x.csv")
    ctx = {"date": "d", "commit": "c", "machine": "m", "torch": "t"}
    results_csv.append(path, [{"a": 1, "b": 2}], context=ctx)
    results_csv.append(path, [{"a": 3, "b": None}], context=ctx, label="second")
    rows = results_csv.read(path)
    assert [(r["a"], r["b"], r["label"]) for r in rows] == [("1", "2", ""), ("3", "", "second")]
    with pytest.raises(ValueError, match="header"):
        results_csv.append(path, [{"a": 1, "c": 2}], context=ctx)


def test_run_context_names_commit_machine_and_torch(monkeypatch):
    ctx = results_csv.run_context()
    assert set(ctx) == {"date", "commit", "machine", "torch"}
    assert ctx["date"].endswith("Z") and ctx["commit"] and ";" in ctx["machine"]
    monkeypatch.setenv("BENCH_COMMIT", "abc1234")
    assert results_csv.git_commit() == "abc1234"


def test_plots_of_the_committed_results(tmp_path):
    """Every committed CSV parses and plots (the files benchmarks/results/README.md describes)."""
    written = plot.main(["--out", str(tmp_path)])
    names = {os.path.basename(p) for p in written}
    assert {"op_cpu_speedup.png", "overhead.png", "overhead_cpp.png", "e2e.png", "gpu.png",
            "sass.png"} <= names
