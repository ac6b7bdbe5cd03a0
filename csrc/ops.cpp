// Schemas of the lic_quant ops and the Python module lic_quant._C. Implementations:
// cpu/quantize_cpu.cpp (CPU key), cuda/quantize_cuda.cu (CUDA key), autograd.cpp (Autograd key,
// draw_seed, scalar_tensors); fake kernels: lic_quant/_ops.py.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include "autograd.h"
#include "lic_quant/op_args.h"
#include "lic_quant/op_handles.h"

#include <cmath>
#include <optional>
#include <string>
#include <tuple>

namespace lic_quant {
namespace {

#ifdef LIC_QUANT_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

constexpr int64_t kReleaseGilFrom = 1 << 16;

// A Python int or float (not bool, not a subclass: those take the checked Python path).
bool plain_number(PyObject* o) { return PyFloat_CheckExact(o) || PyLong_CheckExact(o); }

bool exact_tensor(PyObject* o) { return THPVariable_CheckExact(o); }

// The arguments of one eager call, checked, with the seed and temperature as the ops take them.
struct EagerCall {
  at::Tensor y, scales;
  std::optional<at::Tensor> means;
  at::Tensor seed, temperature;
  c10::string_view mode;
  double scale_bound = 0.0, likelihood_bound = 0.0;
  bool zero_center = true;
};

enum class Parsed { kOk, kNotHandled, kError };

// Checks the nine arguments of gaussian_quantize (y, scales, means, seed, temperature, mode,
// scale_bound, likelihood_bound, zero_center) with the Python API's messages and makes the seed
// and temperature tensors (csrc/autograd.h: no kernel). kNotHandled for anything the Python path
// must see (tensor subclasses, sparse tensors, seed or temperature tensors of another dtype,
// shape or device, devices other than CPU and CUDA, non-number scalars, seeds >= 2^63); kError
// with a Python exception set.
Parsed parse_eager(PyObject* const* args, EagerCall& call) {
  PyObject *y_o = args[0], *s_o = args[1], *m_o = args[2], *seed_o = args[3], *temp_o = args[4];
  const bool has_means = m_o != Py_None;
  const bool seed_is_tensor = exact_tensor(seed_o);
  const bool temp_is_tensor = exact_tensor(temp_o);
  if (!exact_tensor(y_o) || !exact_tensor(s_o) || (has_means && !exact_tensor(m_o)) ||
      !(seed_o == Py_None || PyLong_CheckExact(seed_o) || seed_is_tensor) ||
      !(plain_number(temp_o) || temp_is_tensor) || !PyUnicode_CheckExact(args[5]) ||
      !plain_number(args[6]) || !plain_number(args[7]) || !PyBool_Check(args[8])) {
    return Parsed::kNotHandled;
  }
  const at::Tensor& y = THPVariable_Unpack(y_o);
  const at::Tensor& scales = THPVariable_Unpack(s_o);
  const c10::Device device = y.device();
  const bool dense = y.layout() == at::kStrided && scales.layout() == at::kStrided &&
                     (!has_means || THPVariable_Unpack(m_o).layout() == at::kStrided);
  const bool device_ok = device.is_cpu() || (kWithCuda && device.is_cuda());
  if (!dense || !device_ok) return Parsed::kNotHandled;
  // Tensors the ops take as they are: 0-dim, on y's device, of the schema's dtype.
  auto usable = [&](PyObject* o, at::ScalarType dtype) {
    const at::Tensor& t = THPVariable_Unpack(o);
    return t.layout() == at::kStrided && t.dim() == 0 && t.scalar_type() == dtype &&
           t.device() == device;
  };
  if ((seed_is_tensor && !usable(seed_o, at::kLong)) ||
      (temp_is_tensor && !usable(temp_o, at::kDouble))) {
    return Parsed::kNotHandled;
  }

  std::optional<int64_t> seed;
  if (!seed_is_tensor && seed_o != Py_None) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(seed_o, &overflow);
    if (overflow != 0) return Parsed::kNotHandled;  // the Python path maps [2^63, 2^64) or raises
    seed = static_cast<int64_t>(v);
  }
  const double temperature = temp_is_tensor ? 0.0 : PyFloat_AsDouble(temp_o);
  call.scale_bound = PyFloat_AsDouble(args[6]);
  call.likelihood_bound = PyFloat_AsDouble(args[7]);
  if (PyErr_Occurred()) return Parsed::kError;  // an int too large for a double
  Py_ssize_t mode_len = 0;
  const char* mode_chars = PyUnicode_AsUTF8AndSize(args[5], &mode_len);
  if (mode_chars == nullptr) return Parsed::kError;
  call.mode = c10::string_view(mode_chars, static_cast<size_t>(mode_len));
  call.zero_center = args[8] == Py_True;

  TORCH_CHECK_TYPE(y.is_floating_point(),
                   "lic_quant: y must be float16, bfloat16, float32 or float64; got ",
                   y.scalar_type());
  check_like(scales, y, "scales");
  if (has_means) {
    call.means = THPVariable_Unpack(m_o);
    check_like(*call.means, y, "means");
  }
  parse_mode(call.mode);  // checked here too: the Triton backend never reaches the C++ ops
  if (!temp_is_tensor) {
    TORCH_CHECK_VALUE(temperature >= 0.0 && temperature <= 1.0,
                      "lic_quant: temperature must be [0.0, 1.0]; got ", temperature);
  }
  // Also checked by the Autograd kernel, which inference mode skips.
  TORCH_CHECK_VALUE(call.scale_bound >= 0.0 && std::isfinite(call.scale_bound),
                    "lic_quant: scale_bound must be finite and >= 0; got ", call.scale_bound);
  TORCH_CHECK_VALUE(call.likelihood_bound >= 0.0 && call.likelihood_bound < 1.0,
                    "lic_quant: likelihood_bound must lie in [0, 1); got ",
                    call.likelihood_bound);
  call.y = y;
  call.scales = scales;
  if (seed_is_tensor && temp_is_tensor) {
    call.seed = THPVariable_Unpack(seed_o);
    call.temperature = THPVariable_Unpack(temp_o);
  } else if (seed_is_tensor) {
    call.seed = THPVariable_Unpack(seed_o);
    call.temperature = temperature_tensor(device, temperature);
  } else if (temp_is_tensor) {
    call.seed = seed_tensor(device, seed);
    call.temperature = THPVariable_Unpack(temp_o);
  } else {
    std::tie(call.seed, call.temperature) = scalar_tensors(device, seed, temperature);
  }
  return Parsed::kOk;
}

PyObject* pair(at::Tensor a, at::Tensor b) {
  PyObject* result = PyTuple_New(2);
  if (result == nullptr) return nullptr;
  PyTuple_SET_ITEM(result, 0, THPVariable_Wrap(std::move(a)));
  PyTuple_SET_ITEM(result, 1, THPVariable_Wrap(std::move(b)));
  return result;
}

// lic_quant._C.quantize_eager(y, scales, means, seed, temperature, mode, scale_bound,
// likelihood_bound, zero_center, backend) -> (y_hat, likelihoods): the eager forward of
// gaussian_quantize on the C++/CUDA kernels, entered from Python once (the Python API calls it
// first). NotImplemented for backends other than "auto" and the one of y's device (the
// reference, Triton, a mismatch or a typo: the Python path's to run or to reject with its
// message) and for what parse_eager does not handle.
PyObject* quantize_eager(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 10) {
    PyErr_SetString(PyExc_TypeError, "quantize_eager takes 10 positional arguments");
    return nullptr;
  }
  if (!PyUnicode_CheckExact(args[9]) || !exact_tensor(args[0])) Py_RETURN_NOTIMPLEMENTED;
  Py_ssize_t backend_len = 0;
  const char* backend_chars = PyUnicode_AsUTF8AndSize(args[9], &backend_len);
  if (backend_chars == nullptr) return nullptr;
  const c10::string_view backend(backend_chars, static_cast<size_t>(backend_len));
  const bool on_cuda = THPVariable_Unpack(args[0]).device().is_cuda();
  if (backend != "auto" && backend != (on_cuda ? "cuda" : "cpu")) Py_RETURN_NOTIMPLEMENTED;
  EagerCall c;
  switch (parse_eager(args, c)) {
    case Parsed::kNotHandled: Py_RETURN_NOTIMPLEMENTED;
    case Parsed::kError: return nullptr;
    case Parsed::kOk: break;
  }
  std::tuple<at::Tensor, at::Tensor> out;
  {
    // Other Python threads may run while a large call computes; for a small one, releasing and
    // taking back the GIL would cost more than the kernels.
    std::optional<pybind11::gil_scoped_release> no_gil;
    if (c.y.numel() >= kReleaseGilFrom) no_gil.emplace();
    out = forward_op().call(c.y, c.scales, c.means, c.seed, c.temperature, c.mode, c.scale_bound,
                            c.likelihood_bound, c.zero_center);
  }
  return pair(std::move(std::get<0>(out)), std::move(std::get<1>(out)));
  END_HANDLE_TH_ERRORS
}

// lic_quant._C.eager_arguments(y, scales, means, seed, temperature, mode, scale_bound,
// likelihood_bound, zero_center) -> (seed tensor, temperature tensor): the same checks and the
// same seed and temperature as quantize_eager, for backends that launch their kernels from
// Python (Triton); NotImplemented where quantize_eager would return it.
PyObject* eager_arguments(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 9) {
    PyErr_SetString(PyExc_TypeError, "eager_arguments takes 9 positional arguments");
    return nullptr;
  }
  EagerCall c;
  switch (parse_eager(args, c)) {
    case Parsed::kNotHandled: Py_RETURN_NOTIMPLEMENTED;
    case Parsed::kError: return nullptr;
    case Parsed::kOk: break;
  }
  return pair(std::move(c.seed), std::move(c.temperature));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"quantize_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(quantize_eager)),
     METH_FASTCALL, "The eager forward of lic_quant.gaussian_quantize (see lic_quant/api.py)."},
    {"eager_arguments",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(eager_arguments)), METH_FASTCALL,
     "Checked arguments, seed and temperature tensors of an eager call (Triton backend)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace
}  // namespace lic_quant

extern "C" {
// Importing lic_quant._C also runs the static op registrations of this library.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          lic_quant::methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lic_quant, m) {
  m.def(
      "quantize_forward(Tensor y, Tensor scales, Tensor? means, Tensor seed, Tensor temperature, "
      "str mode, float scale_bound, float likelihood_bound, bool zero_center) -> (Tensor, Tensor)");
  m.def(
      "quantize_backward(Tensor? grad_y_hat, Tensor grad_likelihoods, Tensor y, Tensor scales, "
      "Tensor? means, Tensor seed, Tensor temperature, str mode, float scale_bound, "
      "float likelihood_bound, bool zero_center, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("uniform_noise(Tensor seed, SymInt[] size) -> Tensor");
}
