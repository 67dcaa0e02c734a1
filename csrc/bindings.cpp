// The pybind11 module invrender._C: importing it registers the ops (static initialisers in the
// other translation units) and exposes non-op helpers.
#include <pybind11/pybind11.h>

#include "build_info.h"
#include "common/checks.h"
#include "chamfer/chamfer_kernels.h"
#include "raster/raster_kernels.h"
#include "raymarch/raymarch_kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "invrender compiled kernels (ops are under torch.ops.invrender)";
  m.def("built_with_cuda", &invrender::built_with_cuda, "Whether the CUDA kernels were compiled.");
  m.def("cuda_archs", &invrender::cuda_archs,
        "Semicolon-separated CUDA architectures compiled in; empty for a CPU-only build.");
  m.def("_set_raster_face_order", &invrender::raster::set_face_order_for_testing,
        "Test-only: the CPU rasterizer considers each tile's faces shuffled with this seed "
        "(0: index order). Fragments must not depend on it.");
  m.def("_set_raymarch_gpu_backward_layout", &invrender::raymarch::set_gpu_backward_layout_for_testing,
        "Test-only: the CPU ray-marching backward uses the GPU's small chunks and checkpoints.");
  m.def("_nn_leaf_visits", &invrender::chamfer::leaf_visits_for_testing,
        "Test-only: k-d tree leaves scanned by the CPU nearest_neighbors since the last call "
        "(then reset).");
  m.def("_set_value_checks", &invrender::set_value_checks_for_testing,
        "Benchmark/test-only: False skips the checks of tensor values (finite inputs, indices in "
        "range) so their cost can be measured. Unsafe: bad input may then read out of bounds.");
#ifdef TORCH_VERSION_STRING
  m.attr("torch_version") = TORCH_VERSION_STRING;
#endif
}
