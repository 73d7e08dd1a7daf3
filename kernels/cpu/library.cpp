// Op schemas of the `fastnofrost` library, and the (empty) Python module that loads them.
// CPU kernels are registered beside each op (ws.cpp, ws_grouped.cpp, pgd.cpp); CUDA kernels (Triton),
// fake kernels and autograd are registered from Python in fastnofrost/ops.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fastnofrost, m) {
  // Scaled weight standardization over the fan-in of each output channel.
  m.def("ws_forward(Tensor weight, Tensor? gain, float scale, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("ws_backward(Tensor grad, Tensor weight, Tensor? gain, Tensor mean, Tensor rstd, float scale)"
        " -> (Tensor, Tensor)");
  // The same over a list of weights (one model's), in one launch each way: the standardized
  // weights in one flat buffer (weight after weight), mean / rstd over all rows. A weight
  // without a gain has an empty (0-element) tensor in `gains` (Tensor?[] is not differentiable).
  // The backward reads one gradient per weight, each at its own address (no concatenation).
  m.def("ws_grouped_forward(Tensor[] weights, Tensor[] gains, float[] scales, float[] eps)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("ws_grouped_backward(Tensor[] grads, Tensor[] weights, Tensor[] gains, Tensor mean, Tensor rstd,"
        " float[] scales) -> (Tensor, Tensor)");
  // One L-inf PGD step: clip(clip(x_adv + alpha * sign(grad), x - eps, x + eps), lo, hi).
  m.def("pgd_step(Tensor x_adv, Tensor grad, Tensor x, float alpha, float eps, float lo, float hi) -> Tensor");
  m.def("pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x, float alpha, float eps, float lo, float hi) -> ()");
  // Uniform random start in the eps-ball, clipped to [lo, hi]; Philox keyed by `seed`.
  m.def("pgd_random_start(Tensor x, float eps, float lo, float hi, int seed) -> Tensor");
}

static struct PyModuleDef fastnofrost_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                                  "fastnofrost compiled CPU kernels (ops are registered on import).",
                                                  -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastnofrost_c_module); }
