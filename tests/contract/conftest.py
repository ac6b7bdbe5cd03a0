"""The backends of docs/spec.md section 4 that this machine runs, as pytest fixtures.

A test that takes `backend` runs once per backend: "reference" (lic_quant/reference.py), "cpu"
(the C++ kernels), "cuda" (the CUDA kernels), "triton" (the compiled Triton kernels on CUDA
tensors) and "triton-interpreter" (the same Triton kernels in Triton's interpreter on CPU
tensors, through the same backend="triton"; tests/conftest.py sets TRITON_INTERPRET=1 when there
is no GPU). A backend this machine lacks is skipped with a reason naming what is missing.

`kernel_backend` is the same without the reference; `other_kernel` is every kernel backend but
the C++ CPU kernels, which the bit-identity tests use as their anchor.

LIC_QUANT_TEST_BACKENDS=cuda,triton (a comma-separated list of ids) runs only those backends'
cases (scripts/gpu_run.sh: the GPU's minutes go to the GPU backends; the CPU kernels still serve
as the bit-identity anchor).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

import lic_quant as lq

try:
    from lic_quant import triton_ops
except ImportError:  # pragma: no cover - triton_ops itself guards the triton import
    triton_ops = None

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Backend:
    id: str          # the test id: reference, cpu, cuda, triton, triton-interpreter
    name: str        # the backend= argument of gaussian_quantize
    device: str      # where its tensors live
    dtypes: tuple    # the input dtypes it takes

    @property
    def is_kernel(self) -> bool:
        return self.id != "reference"

    @property
    def is_triton(self) -> bool:
        return self.name == "triton"

    @property
    def is_interpreter(self) -> bool:
        return self.id == "triton-interpreter"

    def takes(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def need_dtype(self, dtype: torch.dtype) -> None:
        """Skips for a dtype the backend does not take (the Triton kernels have no float64)."""
        if dtype not in self.dtypes:
            pytest.skip(f"backend {self.id} takes {', '.join(str(d) for d in self.dtypes)}; "
                        f"not {dtype}")

    def to(self, *tensors):
        """The tensors on this backend's device (None stays None); differentiable moves."""
        out = tuple(None if t is None else t.to(self.device) for t in tensors)
        return out if len(out) != 1 else out[0]

    def quantize(self, y, scales, means=None, **kw):
        """gaussian_quantize(..., backend=self.name) with the inputs moved to the backend's device
        (autograd reaches the original leaves) and the outputs moved back to the CPU."""
        y, scales, means = (None if t is None else t.to(self.device) for t in (y, scales, means))
        y_hat, lik = lq.gaussian_quantize(y, scales, means, backend=self.name, **kw)
        return y_hat.cpu(), lik.cpu()

    def fn(self, **kw):
        """fn(y, scales, means) -> (y_hat, likelihoods) for helpers.run."""
        return lambda y, s, m: self.quantize(y, s, m, **kw)

    @property
    def forward_op(self):
        return (torch.ops.lic_quant.triton_quantize_forward if self.is_triton
                else torch.ops.lic_quant.quantize_forward)

    @property
    def backward_op(self):
        return (torch.ops.lic_quant.triton_quantize_backward if self.is_triton
                else torch.ops.lic_quant.quantize_backward)


def _triton_missing() -> str | None:
    if triton_ops is None or triton_ops.TRITON_ERROR is not None:
        err = None if triton_ops is None else triton_ops.TRITON_ERROR
        return f"triton does not import ({err})"
    return None


def _missing(backend_id: str) -> str | None:
    """Why this machine cannot run the backend, or None."""
    gpu = torch.cuda.is_available()
    if backend_id == "reference":
        return None
    if backend_id == "cpu":
        return None if lq.extension_available() else "the C++ extension lic_quant._C is not built"
    if backend_id == "cuda":
        if not lq.extension_available():
            return "the C++ extension lic_quant._C is not built"
        if not lq.cuda_kernels_built():
            return "lic_quant._C was built without its CUDA kernels"
        return None if gpu else "no CUDA device"
    if backend_id == "triton":
        if not gpu:
            return "no CUDA device (the compiled Triton kernels run on CUDA tensors)"
        if _triton_missing():
            return _triton_missing()
        return ("Triton's interpreter is on (TRITON_INTERPRET=1): the kernels are not compiled"
                if triton_ops.interpreted() else None)
    if backend_id == "triton-interpreter":
        if _triton_missing():
            return _triton_missing()
        if not triton_ops.interpreted():
            return ("a CUDA device is present, so TRITON_INTERPRET is not set and the Triton "
                    "kernels are compiled for it (the 'triton' backend)")
        return None
    raise ValueError(backend_id)


BACKENDS = {
    "reference": Backend("reference", "reference", "cpu", ALL_DTYPES),
    "cpu": Backend("cpu", "cpu", "cpu", ALL_DTYPES),
    "cuda": Backend("cuda", "cuda", "cuda", ALL_DTYPES),
    "triton": Backend("triton", "triton", "cuda", TRITON_DTYPES),
    "triton-interpreter": Backend("triton-interpreter", "triton", "cpu", TRITON_DTYPES),
}
KERNEL_IDS = ["cpu", "cuda", "triton", "triton-interpreter"]


SELECTED = [b for b in os.environ.get("LIC_QUANT_TEST_BACKENDS", "").split(",") if b]


def get_backend(backend_id: str) -> Backend:
    """The backend, or a skip naming what this machine lacks."""
    if SELECTED and backend_id not in SELECTED:
        pytest.skip(f"backend {backend_id}: not in LIC_QUANT_TEST_BACKENDS={','.join(SELECTED)}")
    why = _missing(backend_id)
    if why is not None:
        pytest.skip(f"backend {backend_id}: {why}")
    return BACKENDS[backend_id]


@pytest.fixture(params=list(BACKENDS))
def backend(request) -> Backend:
    return get_backend(request.param)


@pytest.fixture(params=KERNEL_IDS)
def kernel_backend(request) -> Backend:
    return get_backend(request.param)


@pytest.fixture(params=[b for b in KERNEL_IDS if b != "cpu"])
def other_kernel(request) -> Backend:
    """A kernel backend to compare bit for bit with the C++ CPU kernels (skipped without them)."""
    other = get_backend(request.param)
    anchor = _missing("cpu")  # the anchor runs whatever LIC_QUANT_TEST_BACKENDS selects
    if anchor is not None:
        pytest.skip(f"bit identity needs the C++ CPU kernels as the anchor: {anchor}")
    return other


@pytest.fixture
def reference_backend() -> Backend:
    return BACKENDS["reference"]


@pytest.fixture
def cpu_backend() -> Backend:
    """The C++ CPU kernels as the bit-identity anchor (not subject to LIC_QUANT_TEST_BACKENDS)."""
    why = _missing("cpu")
    if why is not None:
        pytest.skip(f"backend cpu: {why}")
    return BACKENDS["cpu"]


@pytest.fixture(params=["cpu", "cuda"])
def cpp_backend(request) -> Backend:
    """The backends of the C++ ops (torch.ops.lic_quant.quantize_forward / _backward)."""
    return get_backend(request.param)


@pytest.fixture
def cuda_and_triton() -> tuple[Backend, Backend]:
    return get_backend("cuda"), get_backend("triton")


def pytest_collection_modifyitems(items):
    # Triton's interpreter runs the kernels' float math in numpy, which warns on the inf and NaN
    # the tests feed it on purpose (overflow in multiply or cast); the results are checked.
    for item in items:
        if "triton-interpreter" in item.nodeid:
            item.add_marker(pytest.mark.filterwarnings("ignore::RuntimeWarning"))
