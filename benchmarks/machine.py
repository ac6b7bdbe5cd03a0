"""What CPU a benchmark ran on: model name, vector ISA level and threads, for result headers."""
from __future__ import annotations

import platform

import torch

# The widest vector extension the flags of /proc/cpuinfo announce, widest first.
ISA_LEVELS = (
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("avx", "AVX"),
    ("sse4_2", "SSE4.2"),
)
AVX512_SUBSETS = ("bw", "dq", "vl", "vnni", "bf16", "fp16")


def isa_level(flags: set[str]) -> str:
    for flag, name in ISA_LEVELS:
        if flag in flags:
            if name == "AVX-512":
                # the subsets compilers and oneDNN pick kernels by
                extras = [s for s in AVX512_SUBSETS if f"avx512{s}" in flags or
                          f"avx512_{s}" in flags]
                return f"AVX-512 ({', '.join(['F'] + [e.upper() for e in extras])})"
            return name
    return "baseline (no SSE4.2)"


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_description() -> dict:
    model, flags = read_cpuinfo()
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        aten = "?"
    return {"model": model, "isa": isa_level(flags) if flags else "unknown", "aten": aten,
            "threads": torch.get_num_threads(), "torch": torch.__version__}
