#!/usr/bin/env python
"""Run every study: rate-distortion, mismatch (reuses a model the R-D study trained), gradient,
zero-centre, sigma bound in training, the paired R-D test.

    python studies/run_all.py --quick --out DIR      # 2 shared CPU cores: about 11 min for
                                                     # the first three studies, under 2 min
                                                     # for zero_center and bound_training,
                                                     # about 1 h for paired_rd (run_all.json,
                                                     # rd/paired_rd.csv)
    python studies/run_all.py --full --out DIR       # GPU sizes (--device cuda is the default
                                                     # when one is present)
    python studies/run_all.py --tiny --out DIR       # the smoke test's sizes (under a minute)
    python studies/run_all.py --quick --only gradient,zero_center --out DIR
                                                     # some studies; DIR/run_all.json keeps
                                                     # the others' entries

Writes DIR/<study>/*.csv|json|png, DIR/models/ (checkpoint cache, reused on a rerun with the
same settings) and DIR/run_all.json (settings, wall time per study, every file written).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from studies import (bound_training, common, gradient_bias_variance, mismatch,  # noqa: E402
                     paired_rd, rate_distortion, zero_center)


def run_all(profile: str, out_dir: str, device: torch.device, seed: int = 0,
            only: list[str] | None = None) -> dict:
    """Run the studies (``only``: those named; the report of the others, if DIR/run_all.json has
    one from the same profile, is kept)."""
    common.ensure_dir(out_dir)
    cache_dir = os.path.join(out_dir, "models")
    report = {"profile": profile, "device": str(device), "seed": seed,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": " ".join(filter(None, (platform.machine(), platform.processor(),
                                                f"{os.cpu_count()} CPUs"))),
              "seconds": {}, "files": {}}
    start = time.perf_counter()
    studies = (
        ("rate_distortion", lambda: rate_distortion.run(profile, out_dir, device, seed, cache_dir)),
        ("mismatch", lambda: mismatch.run(profile, out_dir, device, seed, cache_dir)),
        ("gradient", lambda: gradient_bias_variance.run(profile, out_dir, device, seed)),
        ("zero_center", lambda: zero_center.run(profile, out_dir, device, seed)),
        ("bound_training", lambda: bound_training.run(profile, out_dir, device, seed)),
        ("paired_rd", lambda: paired_rd.run(profile, out_dir, device, seed)),
    )
    previous = os.path.join(out_dir, "run_all.json")
    if only:
        unknown = set(only) - {name for name, _ in studies}
        if unknown:
            raise SystemExit(f"--only: no study named {sorted(unknown)}")
        if os.path.exists(previous):
            with open(previous) as f:
                old = json.load(f)
            if old.get("profile") == profile:
                report["earlier_runs"] = old.get("earlier_runs", []) + [
                    {k: old[k] for k in ("torch", "threads", "machine", "device") if k in old}
                    | {"studies": [k for k in old["seconds"] if k != "total"]}]
                report["seconds"] = {k: v for k, v in old["seconds"].items() if k != "total"}
                report["files"] = dict(old["files"])
        studies = tuple((name, study) for name, study in studies if name in only)
    for name, study in studies:
        print(f"== {name} ({profile})", file=sys.stderr, flush=True)
        common.seed_everything(common.study_seed(seed, name))
        with common.Timer() as t:
            paths = study()
        report["seconds"][name] = round(t.seconds, 1)
        report["files"][name] = {k: os.path.relpath(v, out_dir) for k, v in paths.items()}
        print(f"   {name}: {t.seconds:.0f} s", file=sys.stderr, flush=True)
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)  # this invocation
    common.write_json(os.path.join(out_dir, "run_all.json"), report)
    return report


def main(argv=None):
    only = None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--only" in argv:  # a subset of the studies, comma-separated
        i = argv.index("--only")
        only = argv[i + 1].split(",")
        del argv[i:i + 2]
    args = common.parse_args(__doc__.split("\n")[0], argv)
    report = run_all(args.profile, args.out, common.pick_device(args.device), args.seed, only)
    print(f"done in {report['seconds']['total']:.0f} s; outputs in {args.out}")


if __name__ == "__main__":
    main()
