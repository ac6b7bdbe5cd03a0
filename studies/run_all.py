#!/usr/bin/env python
"""Run every study: rate-distortion, mismatch (reuses a model the R-D study trained), gradient.

    python studies/run_all.py --quick --out DIR      # ~15-20 min on 2 shared CPU cores
    python studies/run_all.py --full --out DIR       # GPU sizes (--device cuda is the default
                                                     # when one is present)
    python studies/run_all.py --tiny --out DIR       # seconds: the smoke test's sizes

Writes DIR/<study>/*.csv|json|png, DIR/models/ (checkpoint cache, reused on a rerun with the
same settings) and DIR/run_all.json (settings, wall time per study, every file written).
"""
from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from studies import common, gradient_bias_variance, mismatch, rate_distortion  # noqa: E402


def run_all(profile: str, out_dir: str, device: torch.device, seed: int = 0) -> dict:
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
    )
    for name, study in studies:
        print(f"== {name} ({profile})", file=sys.stderr, flush=True)
        common.seed_everything(common.study_seed(seed, name))
        with common.Timer() as t:
            paths = study()
        report["seconds"][name] = round(t.seconds, 1)
        report["files"][name] = {k: os.path.relpath(v, out_dir) for k, v in paths.items()}
        print(f"   {name}: {t.seconds:.0f} s", file=sys.stderr, flush=True)
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)
    common.write_json(os.path.join(out_dir, "run_all.json"), report)
    return report


def main(argv=None):
    args = common.parse_args(__doc__.split("\n")[0], argv)
    report = run_all(args.profile, args.out, common.pick_device(args.device), args.seed)
    print(f"done in {report['seconds']['total']:.0f} s; outputs in {args.out}")


if __name__ == "__main__":
    main()
