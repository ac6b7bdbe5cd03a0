"""lic_quant under DistributedDataParallel: 2 processes, gloo, CPU tensors.

Checks (the behaviour docs/distributed.md describes):
- the gradients DDP leaves on every rank are the average of the ranks' local gradients (each
  recomputed on a plain copy of the model with the same noise), and the parameters stay equal;
- noise seeding: ranks that call torch.manual_seed with one value draw the same op seed, hence
  the same noise for same-shaped inputs; torch.manual_seed(base + rank) or an explicit
  seed=... per rank gives each rank its own stream.
"""
from __future__ import annotations

import copy
import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lic_quant as lq

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


class TinyCodec(nn.Module):
    """Encoder, a network predicting scales and means, the fused op, decoder. (The op directly
    rather than lic_quant.nn's module: importing compressai would cost each process seconds.)"""

    def __init__(self):
        super().__init__()
        self.encode = nn.Conv2d(3, 8, 4, stride=4)
        self.hyper = nn.Conv2d(8, 16, 3, padding=1)
        self.decode = nn.ConvTranspose2d(8, 3, 4, stride=4)

    def forward(self, x):
        y = self.encode(x)
        scales, means = self.hyper(y.detach()).chunk(2, dim=1)
        y_hat, likelihoods = lq.gaussian_quantize(y, nn.functional.softplus(scales), means,
                                                  mode="mixed")
        bpp = -likelihoods.log2().sum() / (x.shape[0] * x.shape[2] * x.shape[3])
        return bpp + 100 * (self.decode(y_hat) - x).square().mean()


def gathered(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t.contiguous())
    return out


def worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    # A rank that fails stops the run (spawn ends the other); the timeout bounds any wait.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        check_training(rank)
        check_seeding(rank)
    finally:
        dist.destroy_process_group()
    # Both checks passed (a failure raised above and ends the rank with its traceback). Leave
    # without the interpreter's finalization: DDP keeps the gloo group, hence its worker threads,
    # alive past destroy_process_group, and a worker thread that releases the last collective's
    # Python tensors while the interpreter finalizes aborts the process ("terminate called without
    # an active exception", SIGABRT), failing a test whose checks passed. A torch race, not
    # lic_quant's: docs/distributed.md ("Ending a worker") has the cause, the rates and the
    # reproducer without lic_quant, scripts/repro_ddp_exit.py.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_training(rank: int) -> None:
    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = TinyCodec()
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
    torch.manual_seed(7 + rank)  # each rank its own noise stream
    for step in range(3):
        x = torch.rand(2, 3, 16, 16, generator=data)
        local = copy.deepcopy(model)  # the same weights, no gradient averaging
        rng = torch.get_rng_state()
        optimizer.zero_grad()
        ddp(x).backward()
        torch.set_rng_state(rng)  # the local copy draws the very noise seed DDP's forward drew
        local(x).backward()
        for (name, p), q in zip(model.named_parameters(), local.parameters()):
            expected = torch.stack(gathered(q.grad)).mean(0)
            # DDP sums in gloo's order and divides by the world size: last-bit differences
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7,
                                       msg=f"step {step}, {name}")
            assert torch.isfinite(p.grad).all()
        optimizer.step()
    for name, p in model.named_parameters():
        a, b = gathered(p.detach())
        assert torch.equal(a, b), f"{name} differs between the ranks"


def noise_of_one_call(**kwargs) -> torch.Tensor:
    """u itself: with mode noise and the lattice at 0, y_hat = y + u = u for y = 0."""
    zeros = torch.zeros(4, 8, 8)
    y_hat, _ = lq.gaussian_quantize(zeros, torch.ones_like(zeros), mode="noise",
                                    zero_center=False, **kwargs)
    return y_hat


def check_seeding(rank: int) -> None:
    torch.manual_seed(1234)  # the same value on every rank
    a, b = gathered(noise_of_one_call())
    assert torch.equal(a, b), "same manual_seed on every rank: the noise should be the same"

    torch.manual_seed(1234 + rank)  # a stream per rank
    a, b = gathered(noise_of_one_call())
    assert not torch.equal(a, b)

    a, b = gathered(noise_of_one_call(seed=2**40 + rank))  # an explicit seed per rank
    assert not torch.equal(a, b)
    assert torch.equal(a if rank == 0 else b, lq.uniform_noise((4, 8, 8), seed=2**40 + rank))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)
