// The pybind11 module invrender._C: importing it registers the ops (static initialisers in the
// other translation units) and exposes non-op helpers.
#include <pybind11/pybind11.h>

#include "build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "invrender compiled kernels (ops are under torch.ops.invrender)";
  m.def("built_with_cuda", &invrender::built_with_cuda, "Whether the CUDA kernels were compiled.");
  m.def("cuda_archs", &invrender::cuda_archs,
        "Semicolon-separated CUDA architectures compiled in; empty for a CPU-only build.");
#ifdef TORCH_VERSION_STRING
  m.attr("torch_version") = TORCH_VERSION_STRING;
#endif
}
