"""Draws every plot of benchmarks/results/plots/ from the CSVs in benchmarks/results/.

    python benchmarks/plot.py [--results benchmarks/results] [--out benchmarks/results/plots]

One PNG per view; a run is the rows sharing (date, commit, machine, label). A CSV that is missing
is skipped. The plots are derived files: redraw them after appending rows, never edit them.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_csv  # noqa: E402


def run_name(key, width=60):
    date, commit, machine, label = key
    # To the second: the series are keyed by this name, and runs a minute apart must stay apart.
    text = f"{date[:19].replace('T', ' ')} {commit} {machine.split(';')[0]}"
    return textwrap.fill(f"{text}; {label}" if label else text, width)


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def grouped_bars(ax, categories, series, ylabel, fmt="%.2f", errors=None):
    """series: name -> one value (or None) per category; errors: name -> ([low], [high])."""
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        if not ys:
            continue
        yerr = None
        if errors and name in errors:
            lo, hi = errors[name]
            yerr = [[e for e, v in zip(lo, values) if v is not None],
                    [e for e, v in zip(hi, values) if v is not None]]
        bars = ax.bar(xs, ys, width, yerr=yerr, capsize=2 if yerr else 0, label=name,
                      edgecolor="black", linewidth=0.4)
        if fmt and len(ys) * len(series) <= 40:
            ax.bar_label(bars, fmt=fmt, fontsize=6)
    ax.set_xticks(range(len(categories)), categories, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    if len(series) > 6:  # beside the axes: inside, a long list of runs hides the bars
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig = ax.figure  # tall enough for the list (two lines of 6 pt per run)
        fig.set_figheight(max(fig.get_figheight(), 0.25 * len(series)))
    else:
        ax.legend(fontsize=6)


def figure(n, width, height):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n, 1, figsize=(width, height * n), squeeze=False)
    return fig, [a[0] for a in axes]


def save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_op_cpu(rows, out):
    """Per run: the fused op's speedup over each other provider, per shape and step; and the
    fused op's own median time across runs."""
    paths = []
    runs = {k: v for k, v in results_csv.runs(rows).items() if any(r["fused_speedup"] for r in v)}
    if runs:
        fig, axes = figure(len(runs), 9, 3.2)
        for ax, (key, rs) in zip(axes, runs.items()):
            cases = list(dict.fromkeys((r["shape"], r["step"]) for r in rs))
            others = list(dict.fromkeys(r["provider"] for r in rs if r["fused_speedup"]))
            series = {f"fused vs {p}": [next((num(r["fused_speedup"]) for r in rs if
                                              (r["shape"], r["step"], r["provider"]) == (*c, p)),
                                             None) for c in cases] for p in others}
            grouped_bars(ax, [f"{s}\n{st}" for s, st in cases], series, "speedup (medians)",
                         "%.2fx")
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_title(run_name(key, 120), fontsize=7)
        paths.append(save(fig, os.path.join(out, "op_cpu_speedup.png")))
    all_runs = results_csv.runs([r for r in rows if r["provider"] == "fused"])
    cases = list(dict.fromkeys((r["shape"], r["step"]) for rs in all_runs.values() for r in rs))
    series, errors = {}, {}
    for key, rs in all_runs.items():
        by = {(r["shape"], r["step"]): r for r in rs}
        med = [num(by[c]["median_ms"]) if c in by else None for c in cases]
        series[run_name(key)] = med
        errors[run_name(key)] = ([m - num(by[c]["p20_ms"]) if c in by else 0 for c, m in
                                  zip(cases, med)],
                                 [num(by[c]["p80_ms"]) - m if c in by else 0 for c, m in
                                  zip(cases, med)])
    fig, (ax,) = figure(1, 11, 5)
    grouped_bars(ax, [f"{s}\n{st}" for s, st in cases], series, "fused op, ms (median, 20-80 %)",
                 "%.1f", errors)
    ax.set_title("CPU kernels, fused op per run (op_cpu.csv)", fontsize=9)
    paths.append(save(fig, os.path.join(out, "op_cpu_fused.png")))
    return paths


def plot_runs_by_case(rows, out, name, value, ylabel, title, skip=(), log=False):
    """One bar per run for every case (overhead.csv, overhead_cpp.csv); log: a logarithmic y
    axis, where runs differ by orders of magnitude."""
    runs = results_csv.runs([r for r in rows if r["case"] not in skip])
    cases = list(dict.fromkeys(r["case"] for rs in runs.values() for r in rs))
    series = {}
    for key, rs in runs.items():
        by = {r["case"]: num(r[value]) for r in rs}
        series[run_name(key)] = [by.get(c) for c in cases]
    fig, (ax,) = figure(1, max(10, 1.1 * len(cases)), 5.5)
    grouped_bars(ax, [textwrap.fill(c, 14) for c in cases], series, ylabel, None)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    return [save(fig, os.path.join(out, name))]


def plot_e2e(rows, out):
    runs = results_csv.runs(rows)
    fig, axes = figure(len(runs), 9, 3.6)
    for ax, (key, rs) in zip(axes, runs.items()):
        models = list(dict.fromkeys(r["model"] for r in rs))
        variants = list(dict.fromkeys((r["entropy_model"], r["compiled"]) for r in rs))
        series, errors = {}, {}
        for entropy, compiled in variants:
            name = f"{entropy}{' + torch.compile' if compiled == 'True' else ''}"
            match = [next((r for r in rs if (r["model"], r["entropy_model"], r["compiled"]) ==
                           (m, entropy, compiled)), None) for m in models]
            series[name] = [num(r["median_ms"]) if r else None for r in match]
            errors[name] = ([num(r["median_ms"]) - num(r["p20_ms"]) if r else 0 for r in match],
                            [num(r["p80_ms"]) - num(r["median_ms"]) if r else 0 for r in match])
        grouped_bars(ax, models, series, "training step, ms (median, 20-80 %)", "%.0f", errors)
        r0 = rs[0]
        ax.set_title(run_name(key, 120) + f"; {r0['device']} batch {r0['batch']} of "
                     f"{r0['size']}x{r0['size']}, mode {r0['mode']}", fontsize=7)
    return [save(fig, os.path.join(out, "e2e.png"))]


def plot_gpu(rows, out):
    """Per run and dtype: forward+backward bandwidth as a fraction of the device copy, per shape
    and provider (eager calls), the floor a fused op can reach."""
    groups = {}
    for key, rs in results_csv.runs(rows).items():
        for r in rs:
            if r["phase"] == "fwd+bwd":
                groups.setdefault((key, r["dtype"]), []).append(r)
    fig, axes = figure(len(groups), 10, 3.4)
    for ax, ((key, dtype), rs) in zip(axes, groups.items()):
        shapes = list(dict.fromkeys(r["shape"] for r in rs))
        providers = list(dict.fromkeys(r["provider"] for r in rs))
        series = {p: [next((100 * num(r["frac_copy"]) for r in rs if (r["shape"], r["provider"])
                            == (s, p)), None) for s in shapes] for p in providers}
        grouped_bars(ax, shapes, series, "fwd+bwd, % of copy bandwidth", "%.0f")
        ax.set_title(run_name(key, 120) + f"; {dtype}, mode {rs[0]['mode']}", fontsize=7)
    return [save(fig, os.path.join(out, "gpu.png"))]


def plot_sass(rows, out):
    """SASS instructions per element of the vectorized (pack-path) kernels, per run."""
    return plot_runs_by_case(
        [{**r, "case": r["kernel"]} for r in rows if r["loop_per_elem"] and "N=1," not in r["kernel"]
         and "runtime" not in r["kernel"]],
        out, "sass.png", "loop_per_elem", "SASS instructions per element (main loop, every path)",
        "CUDA kernels, static SASS count per element (sass.csv)")


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=os.path.join(here, "results"))
    p.add_argument("--out", help="default: <results>/plots")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.results, "plots")
    os.makedirs(out, exist_ok=True)
    views = {
        "op_cpu.csv": plot_op_cpu,
        "overhead.csv": lambda rows, out: plot_runs_by_case(
            rows, out, "overhead.png", "vs_torch_mul", "median time / torch.mul's (same run)",
            "Host overhead of one eager call, 64 elements (overhead.csv; backend='reference' left "
            "out)", skip=("backend='reference'",)),
        "overhead_cpp.csv": lambda rows, out: plot_runs_by_case(
            rows, out, "overhead_cpp.png", "us_per_call", "us per call (best of 7 rounds)",
            "Host work of one eager call timed from C++, 64 elements (overhead_cpp.csv)"),
        "e2e.csv": plot_e2e,
        "gpu.csv": plot_gpu,
        "sass.csv": plot_sass,
        "entropy_models.csv": lambda rows, out: plot_runs_by_case(
            [{**r, "case": f"{r['family']}: fused vs {r['provider']}"} for r in rows
             if r["provider"] != "fused"], out, "entropy_models.png", "fused_speedup",
            "speedup of the fused op (median ratio, same run)",
            "The op per family and the K = 3 mixture (gmm3: vs CompressAI's "
            "GaussianMixtureConditional), forward + backward (entropy_models.csv)"),
        "rate_output.csv": lambda rows, out: plot_runs_by_case(
            [{**r, "case": r["provider"]} for r in rows], out, "rate_output.png", "median_ms",
            "forward + backward, ms (median)",
            "rate=True against likelihoods then -log2().sum() (rate_output.csv)"),
        "entropy_bottleneck.csv": lambda rows, out: plot_runs_by_case(
            [{**r, "case": f"{r['shape']}: fused vs {r['provider']}"} for r in rows
             if r["provider"] != "fused"], out, "entropy_bottleneck.png", "fused_speedup",
            "speedup of lic_quant's EntropyBottleneck (median ratio, same run; log scale)",
            "EntropyBottleneck forward + backward vs CompressAI's, eager and torch.compile "
            "(entropy_bottleneck.csv; runs under load overstate the ratios)", log=True),
    }
    written = []
    for name, fn in views.items():
        path = os.path.join(args.results, name)
        if os.path.exists(path):
            rows = results_csv.read(path)
            if rows:
                written += fn(rows, out)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
