"""GPU benchmark of lic_quant.gaussian_quantize: forward, backward and forward+backward.

Providers: the eager pure-PyTorch reference, torch.compile of that reference, the fused CUDA
kernels and, when lic_quant.triton_ops is present and runs, the Triton kernels. Times are medians
of CUDA-event timings (triton.testing.do_bench, which flushes the L2 cache before every call).
Bandwidth is counted with the cost model of docs/spec.md section 5 (per element, float32: 20 B
forward, 32 B backward, 52 B both) for every provider, so it reads as "how close to the floor of a fused op",
and is compared with a device-to-device copy measured in the same run. Peak memory is that of one
training step (forward + backward) above what the inputs and upstream gradients already hold.
Per provider, the host time of an eager training step (issued back to back) is set beside the
same step replayed from a CUDA graph: what the host adds on top of the device work.

Upstream gradients: g_yhat ~ N(0, 1), g_P < 0 everywhere (the sign of a -log P rate loss).

    python benchmarks/bench_gpu.py                       # all shapes, float32, mode sua
    python benchmarks/bench_gpu.py --dtypes float32,bfloat16 --csv benchmarks/results/gpu.csv
    python benchmarks/bench_gpu.py --dry-run             # CPU plumbing check, no GPU needed

Rows go to benchmarks/results/scratch/gpu.csv (ignored by git) unless --csv names another file
(benchmarks/results/gpu.csv is the committed one); they are appended after every shape, so a run
cut short keeps what it measured. The table is printed at the end (--md also writes it).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402

import lic_quant as lq  # noqa: E402
import results_csv  # noqa: E402

SHAPES = {  # the bar's shape first: if a time limit cuts the run short, its numbers are in
    "8x192x64x64": (8, 192, 64, 64),
    "16x320x16x16": (16, 320, 16, 16),
    "1x320x68x120": (1, 320, 68, 120),
    "16x192x128x128": (16, 192, 128, 128),  # 50M elements: saturates the bandwidth
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
PHASES = ("fwd", "bwd", "fwd+bwd")
BAR_SHAPE, BAR_FRACTION, BAR_SPEEDUP = "8x192x64x64", 0.85, 1.3
temp_value = 0.5  # sua temperature


def bytes_per_element(dtype: torch.dtype) -> dict[str, int]:
    """docs/spec.md section 5: forward reads y, mu, sigma and writes y_hat, P; backward reads
    g_yhat, g_P, y, mu, sigma and writes three gradients. P and g_P are float32 (float64 for float64)."""
    e = torch.empty((), dtype=dtype).element_size()
    p = 8 if dtype == torch.float64 else 4
    fwd = 3 * e + e + p
    bwd = 4 * e + p + 3 * e  # reads g_yhat, y, mu, sigma and g_P; writes three gradients
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


# -------------------------------------------------------------------------------------------------
# Providers: fn(y, scales, means, seed_t, temp_t) -> (y_hat, likelihoods)


def make_providers(mode: str, device: str, want_triton: bool):
    def eager_ref(y, s, m, seed, temp):
        return lq.gaussian_quantize(y, s, m, mode=mode, temperature=temp_value, seed=seed,
                                    backend="reference")

    def fused(y, s, m, seed, temp):
        return lq.gaussian_quantize(y, s, m, mode=mode, temperature=temp, seed=seed,
                                    backend="cuda" if device == "cuda" else "cpu")

    providers = {"eager_ref": eager_ref,
                 "compiled_ref": torch.compile(eager_ref, dynamic=False),
                 "fused_cuda": fused}
    if want_triton:
        def triton(y, s, m, seed, temp):
            return lq.gaussian_quantize(y, s, m, mode=mode, temperature=temp, seed=seed,
                                        backend="triton")
        try:  # a hook: present once lic_quant/triton_ops.py exists and runs on this device
            y = torch.randn(1000, device=device)
            s = torch.rand(1000, device=device) + 0.1
            seed = lq.make_seed(1, y.device)
            temp = torch.tensor(temp_value, dtype=torch.float64, device=device)
            a = triton(y, s, y * 0.5, seed, temp)
            b = fused(y, s, y * 0.5, seed, temp)
            assert torch.equal(a[0], b[0]), "triton y_hat differs from the CUDA kernels"
            providers["triton"] = triton
        except Exception as exc:  # noqa: BLE001
            print(f"[bench] triton provider skipped: {type(exc).__name__}: {exc}"[:300])
    return providers


# -------------------------------------------------------------------------------------------------
# Timing


def make_timer(device: str):
    if device == "cuda":
        from triton.testing import do_bench

        def bench(fn):
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        return bench

    def bench_cpu(fn):  # --dry-run: a few host-timed calls, only to exercise the plumbing
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    return bench_cpu


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, bench, nbytes: int) -> dict:
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    del src, dst
    return {"bytes": 2 * n * 4, "ms": ms, "GBps": 2 * n * 4 / ms / 1e6}


def make_inputs(shape, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    y = torch.randn(shape, device=device, dtype=dtype, generator=g) * 3
    s = torch.rand(shape, device=device, dtype=dtype, generator=g) * 2 + 0.05
    m = torch.randn(shape, device=device, dtype=dtype, generator=g)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g_yhat = torch.randn(shape, device=device, dtype=dtype, generator=g)
    g_lik = -(torch.rand(shape, device=device, dtype=lik_dtype, generator=g) + 0.1)
    return [t.requires_grad_() for t in (y, s, m)], (g_yhat, g_lik)


def measure(fn, leaves, upstream, seed, temp, bench, device) -> dict:
    out = {}

    def forward():
        return fn(*leaves, seed, temp)

    def step():
        return torch.autograd.grad(forward(), leaves, upstream)

    out["fwd"] = bench(forward)
    outs = forward()
    try:
        torch.autograd.grad(outs, leaves, upstream, retain_graph=True)
        out["bwd"] = bench(lambda: torch.autograd.grad(outs, leaves, upstream, retain_graph=True))
        out["bwd_method"] = "retain_graph"
    except RuntimeError:
        out["bwd"] = None
        out["bwd_method"] = "difference"
    del outs
    out["fwd+bwd"] = bench(step)
    if out["bwd"] is None:
        out["bwd"] = max(out["fwd+bwd"] - out["fwd"], 0.0)
    out["fwd+bwd_graph"] = graph_time(step, bench) if device == "cuda" else None
    out["host_issue_ms"], out["host_wall_ms"] = host_times(step, device)
    # peak memory of one training step above inputs and upstreams
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grads = step()
        sync(device)
        out["peak_step_bytes"] = torch.cuda.max_memory_allocated() - base
        del grads
    else:
        out["peak_step_bytes"] = None
    return out


def host_times(step, device, calls: int = 200) -> tuple[float, float]:
    """Eager training steps back to back, timed on the host: (issue, wall) ms per step. `issue`
    is the host time to run the Python, the checks, the dispatch and the launches (the GPU works
    asynchronously meanwhile); `wall` ends after a synchronize, so it is max(host, device) per
    step. Set beside the CUDA-graph replay time (device work alone, no host) they show what the
    host costs: eager wall within 2x of graph replay is issue 9's bar at 16x320x16x16."""
    for _ in range(10):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    t1 = time.perf_counter()
    sync(device)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3 / calls, (t2 - t0) * 1e3 / calls


def graph_time(step, bench):
    """Median time of one training step replayed from a CUDA graph (no launch gaps), or None
    where the provider cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        ms = bench(graph.replay)
        del graph
        return ms
    except Exception as exc:  # noqa: BLE001
        print(f"[bench] graph capture failed: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def check_fused(providers, leaves, seed, temp):
    """Sanity before timing: fused y_hat equals the reference's bit for bit."""
    with torch.no_grad():
        a = providers["fused_cuda"](*leaves, seed, temp)
        b = providers["eager_ref"](*leaves, seed, temp)
    assert torch.equal(a[0], b[0]), "fused y_hat differs from the reference"
    rel = ((a[1].double() - b[1].double()).norm() / b[1].double().norm()).item()
    assert rel < 1e-5, f"fused likelihoods differ from the reference: rel {rel:.2e}"


# -------------------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count, memory_GiB=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, capability=f"{p.major}.{p.minor}")
    else:
        env.update(gpu="cpu-dry-run", cuda=None)
    return env


CSV_FIELDS = ("dtype", "shape", "numel", "provider", "phase", "ms", "model_GBps", "frac_copy",
              "speedup_vs_compiled", "bwd_method", "peak_step_MiB", "graph_ms", "graph_frac_copy",
              "host_issue_ms", "host_wall_ms")


def write_results(rows, env, copy, args, dtypes, written, device, label=""):
    """Appends rows[written:] to the CSV (called after every shape, so a run cut short keeps what
    it measured) and returns the table of all rows so far."""
    base = {(r["shape"], r["dtype"], r["phase"]): r["ms"] for r in rows if r["provider"] == "compiled_ref"}
    for r in rows:
        b = base.get((r["shape"], r["dtype"], r["phase"]))
        r["speedup_vs_compiled"] = b / r["ms"] if b and r["ms"] else None
    result = {"environment": env, "copy": copy, "mode": args.mode, "temperature": temp_value,
              "bytes_per_element": {str(d).split(".")[-1]: bytes_per_element(d) for d in dtypes},
              "rows": rows}
    run = {"triton": env["triton"], "cuda": env.get("cuda"), "mode": args.mode,
           "temperature": temp_value, "copy_GBps": copy["GBps"]}
    results_csv.append(args.csv, [{**run, **{k: r.get(k) for k in CSV_FIELDS}}
                                  for r in rows[written:]], label=label, device=device)
    return render(result)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--mode", default="sua", choices=lq.MODES)
    ap.add_argument("--providers", default="eager_ref,compiled_ref,fused_cuda,triton")
    ap.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "results", "scratch",
                                                  "gpu.csv"),
                    help="append the rows here (benchmarks/results/gpu.csv is the committed one)")
    ap.add_argument("--label", default="", help="what the commit does not say")
    ap.add_argument("--md", help="also write the table (markdown) to this file")
    ap.add_argument("--copy-bytes", type=int, default=1 << 30)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script")
    args = ap.parse_args(argv)

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (use --dry-run to check the script on the CPU)")
        return 2
    shapes = {k: SHAPES[k] for k in args.shapes.split(",")}
    if args.dry_run:
        shapes = {k: (1, 3, 5, 7) for k in list(shapes)[:2]}
        args.copy_bytes = 1 << 20
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    wanted = args.providers.split(",")
    bench = make_timer(device)
    env = environment(device)
    print(f"[bench] {env}")
    copy = copy_bandwidth(device, bench, args.copy_bytes)
    print(f"[bench] device-to-device copy: {copy['GBps']:.0f} GB/s ({copy['ms']:.3f} ms for "
          f"{copy['bytes'] / 1e9:.2f} GB read+written)")
    providers = make_providers(args.mode, device, "triton" in wanted)
    providers = {k: v for k, v in providers.items() if k in wanted}

    rows, written, table = [], 0, ""
    for dtype in dtypes:
        bpe = bytes_per_element(dtype)
        for name, shape in shapes.items():
            numel = math.prod(shape)
            leaves, upstream = make_inputs(shape, dtype, device)
            seed = lq.make_seed(1234, leaves[0].device)
            temp = torch.tensor(temp_value, dtype=torch.float64, device=device)
            check_fused(providers if "fused_cuda" in providers else make_providers(
                args.mode, device, False), leaves, seed, temp)
            for prov, fn in providers.items():
                try:
                    r = measure(fn, leaves, upstream, seed, temp, bench, device)
                except Exception as exc:  # noqa: BLE001
                    print(f"[bench] {prov} {name} {dtype} failed: {exc}")
                    traceback.print_exc()
                    continue
                for phase in PHASES:
                    ms = r[phase]
                    gbps = bpe[phase] * numel / ms / 1e6 if ms else float("nan")
                    rows.append({"provider": prov, "shape": name, "dtype": str(dtype).split(".")[-1],
                                 "phase": phase, "ms": ms, "model_GBps": gbps,
                                 "frac_copy": gbps / copy["GBps"],
                                 "bwd_method": r["bwd_method"] if phase == "bwd" else None,
                                 "peak_step_MiB": (r["peak_step_bytes"] / 2**20
                                                   if r["peak_step_bytes"] is not None else None),
                                 "numel": numel})
                g = r["fwd+bwd_graph"]
                rows[-1]["graph_ms"] = g
                rows[-1]["host_issue_ms"] = r["host_issue_ms"]
                rows[-1]["host_wall_ms"] = r["host_wall_ms"]
                rows[-1]["graph_frac_copy"] = (bpe["fwd+bwd"] * numel / g / 1e6 / copy["GBps"]
                                               if g else None)
                print(f"[bench] {dtype} {name:>15} {prov:>13}: fwd {r['fwd']:.4f} ms, "
                      f"bwd {r['bwd']:.4f} ms ({r['bwd_method']}), fwd+bwd {r['fwd+bwd']:.4f} ms; "
                      f"eager step host {1e3 * r['host_issue_ms']:.0f} us, wall "
                      f"{1e3 * r['host_wall_ms']:.0f} us, graph {fmt(g and 1e3 * g, '.0f')} us")
            del leaves, upstream
            if device == "cuda":
                torch.cuda.empty_cache()
            table = write_results(rows, env, copy, args, dtypes, written, device, args.label)
            written = len(rows)

    print(f"[bench] appended {written} rows to {args.csv}")
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    print(table)
    return 0


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def render(result) -> str:
    env, copy = result["environment"], result["copy"]
    lines = [f"# lic_quant GPU benchmark: {env['gpu']}",
             "",
             f"torch {env['torch']}, triton {env['triton']}, CUDA {env.get('cuda')}, "
             f"{env['date_utc']} UTC; mode {result['mode']} (T = {result['temperature']}), "
             f"means given, g_P < 0. Median of CUDA-event timings (do_bench, L2 flushed).",
             f"Device-to-device copy: {copy['GBps']:.0f} GB/s. GB/s below = docs/spec.md section 5 bytes "
             f"({result['bytes_per_element']}) / time, for every provider.",
             "",
             "| dtype | shape | provider | fwd ms | bwd ms | fwd+bwd ms | fwd+bwd GB/s | % of copy | "
             "x vs compile | graph fwd+bwd ms | graph % of copy | peak step MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for r in result["rows"]:
        by.setdefault((r["dtype"], r["shape"], r["provider"]), {})[r["phase"]] = r
    for (dt, shape, prov), ph in by.items():
        fb = ph["fwd+bwd"]
        graph_pct = None if fb.get("graph_frac_copy") is None else 100 * fb["graph_frac_copy"]
        cells = [dt, shape, prov, fmt(ph["fwd"]["ms"], ".4f"),
                 fmt(ph["bwd"]["ms"], ".4f") + ("*" if ph["bwd"]["bwd_method"] == "difference" else ""),
                 fmt(fb["ms"], ".4f"), fmt(fb["model_GBps"], ".0f"), fmt(100 * fb["frac_copy"], ".1f"),
                 fmt(fb["speedup_vs_compiled"], ".2f"), fmt(fb.get("graph_ms"), ".4f"),
                 fmt(graph_pct, ".1f"), fmt(fb["peak_step_MiB"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per phase, fused CUDA: " + "; ".join(
        f"{r['dtype']} {r['shape']} {r['phase']} {r['model_GBps']:.0f} GB/s "
        f"({100 * r['frac_copy']:.0f}%)" for r in result["rows"] if r["provider"] == "fused_cuda"))
    bar = [r for r in result["rows"] if r["provider"] == "fused_cuda" and r["shape"] == BAR_SHAPE
           and r["dtype"] == "float32" and r["phase"] == "fwd+bwd"]
    if bar:
        r = bar[0]
        sp = r["speedup_vs_compiled"]
        ok = r["frac_copy"] >= BAR_FRACTION and sp is not None and sp >= BAR_SPEEDUP
        lines.append("")
        lines.append(f"BAR (float32 {BAR_SHAPE} fwd+bwd, eager calls): {100 * r['frac_copy']:.1f}% "
                     f"of copy (need {100 * BAR_FRACTION:.0f}%), {fmt(sp, '.2f')}x vs torch.compile "
                     f"(need {BAR_SPEEDUP}x): {'PASS' if ok else 'FAIL'}; from a CUDA graph: "
                     f"{fmt(None if r.get('graph_frac_copy') is None else 100 * r['graph_frac_copy'], '.1f')}% of copy")
    lines.append("(* bwd = fwd+bwd - fwd where the graph could not be backpropagated twice)")
    lines += ["",
              "Host overhead of one eager training step (forward + autograd.grad), 200 steps back "
              "to back: host = time to issue a step (Python, checks, dispatch, launches), wall = "
              "per step until the GPU is done, graph = the same step replayed from a CUDA graph "
              "(device work alone).",
              "",
              "| dtype | shape | provider | eager host us | eager wall us | graph us | "
              "wall / graph |",
              "|---|---|---|---:|---:|---:|---:|"]
    for (dt, shape, prov), ph in by.items():
        fb = ph["fwd+bwd"]
        host, wall, graph = (fb.get(k) for k in ("host_issue_ms", "host_wall_ms", "graph_ms"))
        ratio = wall / graph if wall and graph else None
        lines.append("| " + " | ".join([
            dt, shape, prov, fmt(host and 1e3 * host, ".0f"), fmt(wall and 1e3 * wall, ".0f"),
            fmt(graph and 1e3 * graph, ".0f"), fmt(ratio, ".2f")]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
