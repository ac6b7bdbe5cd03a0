"""Static SASS statistics of the built CUDA kernels: registers, stack and the instruction count of
each kernel's main loop (per element on the pack path), from `cuobjdump` (the CUDA toolkit's, or
the copy triton ships). Costs no GPU; docs/design/cuda_kernels.md says how the counts are used.

    python tools/cuda_sass_stats.py [build/temp.*/csrc/cuda/quantize_cuda.o | lic_quant/_C*.so] [--arch sm_90]
        [--csv benchmarks/results/sass.csv] [--label TEXT] [--match REGEX]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys


def find_cuobjdump():
    cands = [shutil.which("cuobjdump"),
             os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    spec = importlib.util.find_spec("triton")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        cands.append(os.path.join(loc, "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)


def short_name(mangled: str) -> str:
    # The EntropyBottleneck kernels (entropy_bottleneck_cuda.cu): <layers, storage, compute>.
    m = re.search(r"(eb_\w+?_kernel)ILi(\d+)E(d|f|N3c104HalfE|N3c108BFloat16E)", mangled)
    if m:
        dtype = {"d": "f64", "f": "f32", "N3c104HalfE": "f16", "N3c108BFloat16E": "bf16"}[m.group(3)]
        return f"{m.group(1)}<{dtype}, L={m.group(2)}>"
    m = re.search(r"(mixture_forward_kernel|mixture_backward_kernel|forward_rate_kernel|"
                  r"rate_finish_kernel|forward_kernel|backward_kernel|uniform_noise_kernel)"
                  r"(I.*?(L[ib]n?\d+E)+)?", mangled)
    if not m:
        return mangled[:60]
    name = m.group(1)
    t = m.group(2) or ""
    dtype = ("f32" if t.startswith(("Iff", "IfL")) else "f64" if t.startswith(("Idd", "IdL")) else
             "f16" if "Half" in t else "bf16" if "BFloat16" in t else "")
    ints = re.findall(r"Li(n?\d+)E", t)
    ints = [i.replace("n", "-") for i in ints]
    modes = {"-1": "runtime", "0": "noise", "1": "ste", "2": "mixed", "3": "sua"}
    # The third template constant is the likelihood family (lic_quant._checks.FAMILIES order);
    # the Gaussian's rows keep the names they had before families existed.
    families = {"0": "", "1": ", family=laplace", "2": ", family=logistic"}
    # A bool after them is the rate option (rate=True, docs/spec.md section 8); rate=False rows
    # keep their names.
    rate = ", rate" if re.search(r"Lb1E", t) else ""
    if name.startswith("mixture_") and len(ints) == 2:
        # Four elements per thread step, K read at run time; template constants: family, mode
        # (-1: read at run time), then the bools rate and logits (docs/design/cuda_kernels.md).
        family = families.get(ints[0], f", family={ints[0]}")
        bools = re.findall(r"Lb([01])E", t)
        rate = ", rate" if bools[:1] == ["1"] else ""
        logits = ", logits" if bools[1:2] == ["1"] else ""
        mode = modes.get(ints[1], ints[1])
        return f"{name}<{dtype}, N=4, any K, mode={mode}{family}{rate}{logits}>"
    if name == "forward_rate_kernel" and len(ints) == 1:
        # No loop: four elements per thread, then the chunk's reduction.
        family = families.get(ints[0], f", family={ints[0]}")
        return f"{name}<{dtype}, 4 per thread{family}>"
    if len(ints) in (2, 3):
        family = families.get(ints[2], f", family={ints[2]}") if len(ints) == 3 else ""
        return f"{name}<{dtype}, N={ints[0]}, mode={modes.get(ints[1], ints[1])}{family}{rate}>"
    return name


def mixture_path(ins, loops, name, K=3):
    """(piece loop span, instructions per element at K) of a mixture kernel. Its loops nest:
    [grid-stride loop >] piece loop (the four elements of a group; a second iteration only where
    the group crosses a block of the layout) > component loops (K iterations each, rolled, each
    iteration serving the four elements). The count per element at K is one group's code / 4:
    the code of the grid-stride loop (or, without one, the kernel) outside the piece loop, plus
    the piece loop's code outside its component loops once (every branch: an upper bound), plus
    K x the component loops that run for a group without zero_center (the forward's last loop,
    the mass; the backward's last two, the masses and slopes, then the gradients; with logits
    also the first two, the softmax's max and normalizer). The zero_center loop is left out."""
    if not loops:
        return None, None
    spans = sorted(loops, key=lambda l: l[1] - l[0], reverse=True)
    def size(l):
        return sum(1 for a, _ in ins if l[0] <= a <= l[1])
    def inside(a, b):
        return b[0] <= a[0] and a[1] <= b[1] and a != b
    piece = next((l for l in reversed(spans) if any(inside(c, l) for c in loops)), None)
    if piece is None:
        return None, None
    comps = sorted((c for c in loops if inside(c, piece)
                    and not any(inside(d, c) for d in loops)), key=lambda c: c[0])
    outer = next((l for l in reversed(spans) if inside(piece, l)), None)
    group = (size(outer) if outer else len(ins)) - size(piece)
    hot = comps[-1:] if "forward" in name else comps[-2:]
    if ", logits" in name:
        hot = comps[:2] + hot
    own = size(piece) - sum(size(c) for c in comps)
    return size(piece), (group + own + K * sum(size(c) for c in hot)) / 4


def nvcc_release() -> str:
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                                "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--csv", help="append the rows to this CSV (benchmarks/results/sass.csv)")
    ap.add_argument("--label", default="", help="what the commit does not say")
    ap.add_argument("--match", default="", help="only the kernels whose short name matches this "
                                                "regular expression (e.g. '^eb_')")
    args = ap.parse_args(argv)
    binary = args.binary or (glob.glob("lic_quant/_C*.so") +
                             glob.glob("build/temp.*/csrc/cuda/quantize_cuda.o") + [None])[0]
    tool = find_cuobjdump()
    if binary is None or tool is None:
        print("need a built object and cuobjdump")
        return 1
    res = subprocess.run([tool, "-res-usage", "-arch", args.arch, binary], capture_output=True,
                         text=True).stdout
    regs = {}
    for m in re.finditer(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+)", res):
        regs[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    sass = subprocess.run([tool, "-sass", "-arch", args.arch, binary], capture_output=True,
                          text=True).stdout
    rows = []
    for f in re.split(r"\n\s*Function : ", sass)[1:]:
        mangled = f.split("\n", 1)[0].strip()
        ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", f)]
        loop = None
        loops = []
        for a, t in ins:
            b = re.search(r"BRA (0x[0-9a-f]+)", t)
            if b and int(b.group(1), 16) < a:
                loops.append((int(b.group(1), 16), a))
                if loop is None or a - int(b.group(1), 16) > loop[1] - loop[0]:
                    loop = (int(b.group(1), 16), a)
        body = [t for a, t in ins if loop and loop[0] <= a <= loop[1]]
        name = short_name(mangled)
        n = re.search(r"N=(\d+)", name)
        per = len(body) / int(n.group(1)) if n else None
        nbody = len(body)
        if name.startswith("mixture_"):
            nbody, per = mixture_path(ins, loops, name)
            nbody = nbody or 0
        if name.startswith(("eb_forward_kernel", "eb_backward_kernel")):
            # forward: one element (both bin edges) per iteration; backward: one bin edge per
            # thread and iteration, so an element costs two threads' iterations.
            per = len(body) * (2 if name.startswith("eb_backward") else 1)
        reg, stack = regs.get(mangled, (None, None))
        if args.match and not re.search(args.match, name):
            continue
        rows.append((name, reg, stack, len(ins), nbody, per))
    print(f"{'kernel (' + args.arch + ')':68s} {'REG':>4s} {'STACK':>5s} {'SASS':>6s} {'loop':>6s} {'loop/elem':>9s}")
    for r in sorted(rows):
        per = "" if r[5] is None else f"{r[5]:.0f}"
        print(f"{r[0]:68s} {r[1]!s:>4s} {r[2]!s:>5s} {r[3]:6d} {r[4]:6d} {per:>9s}")
    print("loop = the longest backward branch's span: every path of the main loop (the backward "
          "holds both the p-skipping and the full path; a thread runs one), not the tail.")
    print("mixture_* rows: loop = the piece loop (four elements), each component loop once; "
          "loop/elem = one element at K = 3 (mixture_path: no zero_center). EntropyBottleneck: "
          "loop/elem is the forward's loop (both edges of one element) and twice the "
          "backward's (one edge per thread).")
    if args.csv:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "benchmarks"))
        import results_csv

        nvcc = nvcc_release()
        results_csv.append(args.csv, [
            {"arch": args.arch, "nvcc": nvcc, "kernel": r[0], "reg": r[1], "stack": r[2],
             "sass": r[3], "loop": r[4], "loop_per_elem": "" if r[5] is None else f"{r[5]:.0f}"}
            for r in sorted(rows)], label=args.label)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
