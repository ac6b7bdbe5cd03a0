"""One CSV per benchmark under benchmarks/results/, rows appended run after run.

Every row starts with the same columns: when it was measured (UTC), at which commit, on which
machine (CPU model and vector ISA level, or GPU name), with which torch, and a free-text label
for what the commit alone does not say (a build flag, an environment variable, "before"). The
benchmark's own columns follow. Appending checks the file's header first, so a benchmark whose
columns change fails loudly instead of writing a CSV that no longer parses.

    from results_csv import append, read, run_context
    append("benchmarks/results/overhead.csv", rows, label="after")
"""
from __future__ import annotations

import csv
import datetime
import functools
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
COMMON = ("date", "commit", "machine", "torch", "label")


def git_commit(root: str = ROOT) -> str:
    """Short hash of HEAD, with "-dirty" when tracked files outside benchmarks/results/ differ
    from it (the numbers then belong to a tree no commit holds). BENCH_COMMIT overrides it, for copies of the tree without
    .git (the device machine of scripts/gpu_run.sh)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "--short=7", "HEAD")
        if head.returncode != 0:
            return "unknown"
        # The result CSVs themselves change as a run appends: they do not make the tree dirty.
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                    ":!benchmarks/results").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def machine_name(device: str = "cpu") -> str:
    """GPU name for a CUDA device; otherwise the CPU model and its widest vector ISA."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    from machine import cpu_description

    cpu = cpu_description()
    return f"{cpu['model']}; {cpu['isa']}"


@functools.lru_cache(maxsize=None)
def run_context(device: str = "cpu") -> dict:
    """The leading columns of every row of one run, gathered once."""
    import torch

    now = datetime.datetime.now(datetime.timezone.utc)
    return {"date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git_commit(),
            "machine": machine_name(device), "torch": torch.__version__}


def append(path: str, rows: list[dict], label: str = "", context: dict | None = None,
           device: str = "cpu") -> str:
    """Appends rows (dicts with the same keys, in column order) to the CSV at path, each headed
    by the run's context; writes the header when the file is new. Returns path."""
    if not rows:
        return path
    ctx = dict(context or run_context(device))
    ctx.setdefault("label", label)
    if label:
        ctx["label"] = label
    fields = list(COMMON) + [k for k in rows[0] if k not in COMMON]
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if exists:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != fields:
            raise ValueError(f"{path}: header {header} differs from this benchmark's columns "
                             f"{fields}; write to a new file or convert the old one")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="raise")
        if not exists:
            w.writeheader()
        for r in rows:
            w.writerow({**{k: ctx.get(k, "") for k in COMMON},
                        **{k: "" if v is None else v for k, v in r.items() if k not in COMMON}})
    return path


def read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def runs(rows: list[dict]) -> dict:
    """Rows grouped by run (date, commit, machine, label), in file order."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["date"], r["commit"], r["machine"], r["label"]), []).append(r)
    return out
