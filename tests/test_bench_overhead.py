"""Smoke tests of the host-overhead benchmarks (they are run by hand, so CI keeps them working):
each runs to its end on a tiny budget, prints every row and appends the rows to a CSV with the
columns of benchmarks/results/. No timing is asserted."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest

import lic_quant as lq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built")


def _run(script, *args, timeout):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _header(name):
    with open(os.path.join(ROOT, "benchmarks", "results", name), newline="") as f:
        return next(csv.reader(f))


def test_bench_overhead_prints_every_case_and_the_bar(tmp_path):
    out = tmp_path / "overhead.csv"
    text = _run("bench_overhead.py", "--quick", "--csv", str(out), "--label", "smoke",
                timeout=300)
    for case in ("torch.mul forward", "torch.mul + torch.add (2 outputs)",
                 "gaussian_quantize fwd + autograd.grad", "likelihoods only", "with means", "nn.GaussianConditional",
                 "backend='reference'"):
        assert re.search(re.escape(case) + r".*\d+\.\d+x", text), case
    assert re.search(r"bar \(issue 9\): .* = \d+\.\d+x", text)
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == _header("overhead.csv")
    assert len(rows) == 10 and {r["label"] for r in rows} == {"smoke"}
    assert "nn.GaussianConditional" in {r["case"] for r in rows}


def test_bench_overhead_cpp_prints_every_row(tmp_path):
    out = tmp_path / "overhead_cpp.csv"
    text = _run("bench_overhead_cpp.py", "--calls", "50", "--csv", str(out), timeout=600)
    rows = dict(re.findall(r"^(\S.*?)\s+(\d+\.\d+)$", text, flags=re.M))
    assert len(rows) == 12 and all(float(v) > 0 for v in rows.values()), text
    saved = list(csv.DictReader(open(out)))
    assert list(saved[0]) == _header("overhead_cpp.csv")
    assert {r["case"]: float(r["us_per_call"]) for r in saved} == pytest.approx(
        {k: float(v) for k, v in rows.items()}, abs=1e-3)
