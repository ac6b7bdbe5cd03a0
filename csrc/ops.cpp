// Schemas of the lic_quant ops and the Python module lic_quant._C: the C++ route's eager entry
// (quantize_eager) and the lists of csrc/lic_quant/checks.h. Implementations: cpu/quantize_cpu.cpp,
// cpu/mixture_cpu.cpp and cpu/entropy_bottleneck_cpu.cpp (CPU key), cuda/quantize_cuda.cu (CUDA
// key), autograd.cpp (Autograd key), host_scalars.cpp (draw_seed, scalar_tensors); fake kernels:
// lic_quant/_ops.py.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include "host_scalars.h"
#include "lic_quant/checks.h"
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
  c10::string_view mode, family;
  double scale_bound = 0.0, likelihood_bound = 0.0;
  bool zero_center = true;
  bool rate = false;
};

enum class Parsed { kOk, kNotHandled, kError };

bool utf8(PyObject* o, c10::string_view& out) {
  Py_ssize_t len = 0;
  const char* chars = PyUnicode_AsUTF8AndSize(o, &len);
  if (chars == nullptr) return false;
  out = c10::string_view(chars, static_cast<size_t>(len));
  return true;
}

// Checks the arguments of lic_quant.quantize (y, scales, means, seed, temperature, mode,
// scale_bound, likelihood_bound, zero_center, family) with checks.h and makes the seed and
// temperature tensors (host_scalars.h: no kernel). kNotHandled for anything the Python path must
// see (tensor subclasses, sparse tensors, seed or temperature tensors of another dtype, shape or
// device, devices other than CPU and CUDA, non-number scalars, seeds >= 2^63); kError with a
// Python exception set.
Parsed parse_eager(PyObject* const* args, EagerCall& call) {
  PyObject *y_o = args[0], *s_o = args[1], *m_o = args[2], *seed_o = args[3], *temp_o = args[4];
  const bool has_means = m_o != Py_None;
  const bool seed_is_tensor = exact_tensor(seed_o);
  const bool temp_is_tensor = exact_tensor(temp_o);
  if (!exact_tensor(y_o) || !exact_tensor(s_o) || (has_means && !exact_tensor(m_o)) ||
      !(seed_o == Py_None || PyLong_CheckExact(seed_o) || seed_is_tensor) ||
      !(plain_number(temp_o) || temp_is_tensor) || !PyUnicode_CheckExact(args[5]) ||
      !plain_number(args[6]) || !plain_number(args[7]) || !PyBool_Check(args[8]) ||
      !PyUnicode_CheckExact(args[9]) || !PyBool_Check(args[11])) {
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
  if (!utf8(args[5], call.mode) || !utf8(args[9], call.family)) return Parsed::kError;
  call.zero_center = args[8] == Py_True;
  call.rate = args[11] == Py_True;
  if (has_means) call.means = THPVariable_Unpack(m_o);
  // The kernels check all of this again (any caller of the ops may reach them); checking first
  // here keeps a bad call from drawing a seed.
  check_call(y, scales, call.means, call.family, call.mode, call.scale_bound,
             call.likelihood_bound, call.rate);
  // A float temperature is checked here: the CUDA kernels cannot read theirs without a sync.
  if (!temp_is_tensor) check_unit_interval("temperature", temperature);
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
// likelihood_bound, zero_center, family, backend, rate) -> (y_hat, likelihoods or bits): the eager forward of
// lic_quant.quantize on the C++/CUDA kernels, entered from Python once (the Python API calls it
// first). NotImplemented for backends other than "auto" and the one of y's device (the
// reference, Triton, a mismatch or a typo: the Python path's to run or to reject with its
// message) and for what parse_eager does not handle.
PyObject* quantize_eager(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 12) {
    PyErr_SetString(PyExc_TypeError, "quantize_eager takes 12 positional arguments");
    return nullptr;
  }
  if (!PyUnicode_CheckExact(args[10]) || !exact_tensor(args[0])) Py_RETURN_NOTIMPLEMENTED;
  c10::string_view backend;
  if (!utf8(args[10], backend)) return nullptr;
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
                            c.likelihood_bound, c.zero_center, c.family, c.rate);
  }
  return pair(std::move(std::get<0>(out)), std::move(std::get<1>(out)));
  END_HANDLE_TH_ERRORS
}

template <size_t N>
PyObject* names_tuple(const std::array<const char*, N>& names) {
  PyObject* t = PyTuple_New(N);
  for (size_t i = 0; t != nullptr && i < N; ++i) {
    PyTuple_SET_ITEM(t, i, PyUnicode_FromString(names[i]));
  }
  return t;
}

PyMethodDef methods[] = {
    {"quantize_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(quantize_eager)),
     METH_FASTCALL, "The eager forward of lic_quant.quantize (see lic_quant/api.py)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace
}  // namespace lic_quant

extern "C" {
// Importing lic_quant._C also runs the static op registrations of this library.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          lic_quant::methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  // checks.h's lists, compared with lic_quant/_checks.py's by the tests.
  if (PyModule_AddObject(module, "MODES", lic_quant::names_tuple(lic_quant::kModeNames)) != 0 ||
      PyModule_AddObject(module, "FAMILIES", lic_quant::names_tuple(lic_quant::kFamilyNames)) !=
          0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(lic_quant, m) {
  m.def(
      "quantize_forward(Tensor y, Tensor scales, Tensor? means, Tensor seed, Tensor temperature, "
      "str mode, float scale_bound, float likelihood_bound, bool zero_center, "
      "str family=\"gaussian\", bool rate=False) -> (Tensor, Tensor)");
  m.def(
      "quantize_backward(Tensor? grad_y_hat, Tensor grad_likelihoods, Tensor y, Tensor scales, "
      "Tensor? means, Tensor seed, Tensor temperature, str mode, float scale_bound, "
      "float likelihood_bound, bool zero_center, bool[3] output_mask, str family=\"gaussian\", "
      "bool rate=False) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("uniform_noise(Tensor seed, SymInt[] size) -> Tensor");
  // Mixtures (docs/spec.md section 7; cpu/mixture_cpu.cpp): scales, means and weights have shape
  // (K, *y.shape); the gradients are (y, scales, means, weights). rate=True (section 8): the
  // second output is the bits, shape (N,), and grad_likelihoods their gradient.
  m.def(
      "mixture_quantize_forward(Tensor y, Tensor scales, Tensor means, Tensor weights, "
      "Tensor seed, Tensor temperature, str mode, float scale_bound, float likelihood_bound, "
      "bool zero_center, str family, bool weights_are_logits, bool rate=False) "
      "-> (Tensor, Tensor)");
  m.def(
      "mixture_quantize_backward(Tensor? grad_y_hat, Tensor grad_likelihoods, Tensor y, "
      "Tensor scales, Tensor means, Tensor weights, Tensor seed, Tensor temperature, str mode, "
      "float scale_bound, float likelihood_bound, bool zero_center, str family, "
      "bool weights_are_logits, bool[4] output_mask, bool rate=False) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // The factorized prior (docs/spec.md section 9; cpu/entropy_bottleneck_cpu.cpp): z of shape
  // (N, C, ...), medians (C,), CompressAI's per-channel parameter lists; the gradients are
  // (z, matrices, biases, factors), an empty list where output_mask does not ask for one.
  m.def(
      "entropy_bottleneck_forward(Tensor z, Tensor medians, Tensor[] matrices, Tensor[] biases, "
      "Tensor[] factors, Tensor seed, Tensor temperature, str mode, float likelihood_bound) "
      "-> (Tensor, Tensor)");
  m.def(
      "entropy_bottleneck_backward(Tensor? grad_z_hat, Tensor grad_likelihoods, Tensor z, "
      "Tensor medians, Tensor[] matrices, Tensor[] biases, Tensor[] factors, Tensor seed, "
      "Tensor temperature, str mode, float likelihood_bound, bool[4] output_mask) "
      "-> (Tensor, Tensor[], Tensor[], Tensor[])");
}
