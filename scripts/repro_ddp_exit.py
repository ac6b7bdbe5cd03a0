"""Counts how often a spawned 2-rank gloo job dies at interpreter exit (docs/distributed.md,
"Ending a worker").

Each trial starts two ranks the way tests/test_ddp.py does (torch.multiprocessing, start method
"spawn", init over tcp://127.0.0.1, gloo, one intra-op thread), runs either three DDP training
steps on a tiny model and then all_gather/all_reduce checks (--model ddp), or the checks alone
(--model collectives), calls destroy_process_group, and leaves either through the interpreter's
normal finalization (--exit normal) or with os._exit(0) (--exit os_exit). The driver records every
rank's exit code (negative: killed by that signal, -6 = SIGABRT) and ends with one SUMMARY line.

Without --with-lic-quant it is plain torch: a reproducer that does not involve lic_quant. The
smallest one is `--model collectives --keep-group` (no DDP; the rank keeps a reference to the
group past destroy_process_group, as DDP does). --with-lic-quant also imports lic_quant in every
rank and runs its fused op in the DDP step (from --lic-quant-root, which needs the compiled _C).

Examples (run niced on a small machine; the abort needs load, e.g. a build running beside it):

    nice -n 19 python scripts/repro_ddp_exit.py --trials 100                       # DDP
    nice -n 19 python scripts/repro_ddp_exit.py --trials 100 --exit os_exit        # the workaround
    nice -n 19 python scripts/repro_ddp_exit.py --trials 100 --model collectives --keep-group
    nice -n 19 python scripts/repro_ddp_exit.py --trials 100 --model collectives   # group freed
    nice -n 19 python scripts/repro_ddp_exit.py --trials 100 --with-lic-quant

--load K adds K busy-loop processes for the duration. --cores raises the core-size limit in the
ranks (core_pattern "core" puts the file in the rank's directory) and keeps the core of every rank
killed by a signal in --workdir/tNNNN/rR/, for
`gdb -batch -ex "thread apply all bt" $(which python) core`. Logs of failed trials are kept there.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Spawned ranks inherit the driver's sys.path: the repository root makes `import lic_quant`
# resolve to this checkout.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

WORLD = 2


class Tiny(nn.Module):
    def __init__(self, with_op: bool):
        super().__init__()
        self.with_op = with_op
        self.encode = nn.Linear(16, 8)
        self.hyper = nn.Linear(8, 16)
        self.decode = nn.Linear(8, 16)

    def forward(self, x):
        y = self.encode(x)
        if self.with_op:
            import lic_quant as lq
            scales, means = self.hyper(y.detach()).chunk(2, dim=1)
            y_hat, likelihoods = lq.gaussian_quantize(y, nn.functional.softplus(scales), means,
                                                      mode="mixed")
            rate = -likelihoods.log2().mean()
        else:
            y_hat = y + torch.rand_like(y) - 0.5
            rate = self.hyper(y).square().mean()
        return rate + (self.decode(y_hat) - x).square().mean()


_kept = []


def worker(rank: int, port: int, opts: dict) -> None:
    rankdir = Path(opts["trialdir"]) / f"r{rank}"
    rankdir.mkdir(parents=True, exist_ok=True)
    # The rank's own log, so that the abort message is attributed to a trial and a rank.
    log = os.open(rankdir / "log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if opts["cores"]:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        os.chdir(rankdir)  # core_pattern "core" writes into the working directory
    if opts["with_lic_quant"]:
        import lic_quant  # noqa: F401
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    group = dist.group.WORLD
    try:
        if opts.get("model", "ddp") == "ddp":
            torch.manual_seed(0)
            model = Tiny(opts["with_lic_quant"])
            ddp = nn.parallel.DistributedDataParallel(model)
            optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
            torch.manual_seed(7 + rank)
            for _ in range(3):
                optimizer.zero_grad()
                ddp(torch.rand(4, 16)).backward()
                optimizer.step()
            params = [p.detach() for p in model.parameters()]
        else:
            params = [torch.full((5,), 1.0) for _ in range(4)]
        for p in params:
            out = [torch.empty_like(p) for _ in range(WORLD)]
            dist.all_gather(out, p.contiguous())
            assert torch.equal(out[0], out[1])
        t = torch.ones(3)
        dist.all_reduce(t)
        assert t.tolist() == [2.0] * 3
    finally:
        dist.destroy_process_group()
    if opts.get("keep_group"):
        # What DDP does implicitly (see docs/distributed.md): the group outlives
        # destroy_process_group, and with it gloo's worker threads.
        _kept.append(group)
    del group
    print(f"rank {rank} done", flush=True)
    if opts["exit"] == "os_exit":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    # --exit normal: return; the spawn bootstrap ends with sys.exit, i.e. the interpreter's
    # finalization (atexit, module teardown, C++ static destructors) runs.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe(code: int | None) -> str:
    if code is None:
        return "hung"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def run_trial(trial: int, opts: dict, timeout: float) -> list[int | None]:
    opts = dict(opts, trialdir=str(Path(opts["workdir"]) / f"t{trial:04d}"))
    ctx = mp.start_processes(worker, args=(free_port(), opts), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    codes = []
    for p in ctx.processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    for f in getattr(ctx, "error_files", []):
        try:
            os.unlink(f)
        except OSError:
            pass
    return codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--with-lic-quant", action="store_true",
                    help="import lic_quant in every rank and run its op in the step")
    ap.add_argument("--lic-quant-root", default=str(ROOT), metavar="DIR",
                    help="the checkout whose lic_quant (with its compiled _C) the ranks import")
    ap.add_argument("--exit", choices=("normal", "os_exit"), default="normal")
    ap.add_argument("--model", choices=("ddp", "collectives"), default="ddp",
                    help="ddp: 3 DDP steps, then all_gather and all_reduce; collectives: "
                         "all_gather and all_reduce only")
    ap.add_argument("--keep-group", action="store_true",
                    help="keep a reference to the default group after destroy_process_group")
    ap.add_argument("--load", type=int, default=0, metavar="K",
                    help="busy-loop processes running beside the trials")
    ap.add_argument("--cores", action="store_true",
                    help="enable core dumps in the ranks and keep those of ranks killed by a signal")
    ap.add_argument("--workdir", default="/tmp/repro_ddp_exit",
                    help="per-rank logs (and cores) of failed trials are kept here")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per trial")
    args = ap.parse_args()

    if args.with_lic_quant:
        sys.path.insert(0, str(Path(args.lic_quant_root).resolve()))  # inherited by the ranks
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    opts = dict(with_lic_quant=args.with_lic_quant, exit=args.exit, cores=args.cores,
                model=args.model, keep_group=args.keep_group,
                workdir=str(workdir))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    loads = []
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(args.load)]
    outcomes = collections.Counter()  # per rank
    failed = []
    start = time.monotonic()
    try:
        for trial in range(args.trials):
            codes = run_trial(trial, opts, args.timeout)
            loads.append(os.getloadavg()[0])
            trialdir = workdir / f"t{trial:04d}"
            for code in codes:
                outcomes[describe(code)] += 1
            if all(c == 0 for c in codes):
                shutil.rmtree(trialdir, ignore_errors=True)
            else:
                failed.append((trial, codes))
                msg = "; ".join(f"r{r} {describe(c)}" for r, c in enumerate(codes))
                print(f"trial {trial}: {msg} (logs in {trialdir})", flush=True)
            if (trial + 1) % 25 == 0:
                print(f"  {trial + 1} trials, {time.monotonic() - start:.0f} s, "
                      f"failed trials so far {len(failed)}, load average {os.getloadavg()[0]:.1f}",
                      flush=True)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    done = trial + 1
    aborted = sum(1 for _, codes in failed if -signal.SIGABRT in codes)
    print(f"SUMMARY torch {torch.__version__} lic_quant={'yes' if args.with_lic_quant else 'no'} "
          f"model={args.model} keep_group={'yes' if args.keep_group else 'no'} "
          f"exit={args.exit} load={args.load}: {done} trials, {len(failed)} failed, "
          f"{aborted} with a SIGABRT rank; ranks: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
          + f"; {time.monotonic() - start:.0f} s, mean 1-min load average "
          f"{sum(loads) / max(1, len(loads)):.1f} on {os.cpu_count()} CPUs", flush=True)


if __name__ == "__main__":
    main()
