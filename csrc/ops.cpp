// Schemas of the lic_quant ops. Implementations: cpu/quantize_cpu.cpp (CPU key),
// cuda/quantize_cuda.cu (CUDA key); fake kernels and autograd: lic_quant/_ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing lic_quant._C runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
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
