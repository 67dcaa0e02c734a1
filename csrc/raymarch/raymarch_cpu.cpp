// CPU loops of the ray marching op. The forward parallelises over rays; the backward scatters
// into the volume gradients, so it parallelises over the batch only (deterministic).
#include <ATen/Parallel.h>

#include <atomic>

#include "../common/cpu_dispatch.h"
#include "raymarch_kernels.h"

namespace invrender {
namespace raymarch {
namespace {

// Test-only (set_gpu_backward_layout_for_testing): the CPU backward uses the GPU's small chunks
// and checkpoints, so that the CPU tests cover the re-marching that only the GPU needs otherwise.
std::atomic<bool> g_gpu_layout{false};

template <typename T>
INVRENDER_CPU_CLONES void forward_rays(const RayParams& p, const T* absorption, const T* emission,
                                       const T* rot, T* color, T* alpha, T* depth_sum,
                                       int64_t begin, int64_t end) {
  const Geometry& g = p.g;
  for (int64_t n = begin; n < end; ++n) {
    const int64_t j = n % g.Wo, i = (n / g.Wo) % g.Ho, b = n / (g.Wo * g.Ho);
    raymarch_forward_ray(p, absorption, emission, rot, color, alpha, depth_sum, b, i, j);
  }
}

template <typename T>
INVRENDER_CPU_CLONES void backward_image(const RayParams& p, const T* gcolor, const T* galpha,
                                         const T* gdepth, const T* absorption, const T* emission,
                                         const T* rot, T* gabs, T* gem, T* grot, int64_t b) {
  const Geometry& g = p.g;
  double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  const bool gpu_layout = g_gpu_layout.load();
  for (int64_t i = 0; i < g.Ho; ++i)
    for (int64_t j = 0; j < g.Wo; ++j)
      if (gpu_layout)
        raymarch_backward_ray<T, double, AddScatter, kGpuRayChunk, kGpuRayCheckpoints>(
            p, gcolor, galpha, gdepth, absorption, emission, rot, gabs, gem, acc, b, i, j,
            AddScatter());
      else
        raymarch_backward_ray(p, gcolor, galpha, gdepth, absorption, emission, rot, gabs, gem,
                              acc, b, i, j, AddScatter());
  for (int k = 0; k < 9; ++k) grot[9 * b + k] = static_cast<T>(acc[k]);
}

}  // namespace

void set_gpu_backward_layout_for_testing(bool on) { g_gpu_layout.store(on); }

template <typename T>
void raymarch_forward_cpu(const RayParams& p, const T* absorption, const T* emission,
                          const T* rot, T* color, T* alpha, T* depth_sum) {
  const Geometry& g = p.g;
  at::parallel_for(0, g.B * g.Ho * g.Wo, 16, [&](int64_t begin, int64_t end) {
    forward_rays(p, absorption, emission, rot, color, alpha, depth_sum, begin, end);
  });
}

template <typename T>
void raymarch_backward_cpu(const RayParams& p, const T* gcolor, const T* galpha, const T* gdepth,
                           const T* absorption, const T* emission, const T* rot, T* gabs, T* gem,
                           T* grot) {
  at::parallel_for(0, p.g.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      backward_image(p, gcolor, galpha, gdepth, absorption, emission, rot, gabs, gem, grot, b);
  });
}

#define INSTANTIATE(T)                                                                        \
  template void raymarch_forward_cpu<T>(const RayParams&, const T*, const T*, const T*, T*,   \
                                        T*, T*);                                              \
  template void raymarch_backward_cpu<T>(const RayParams&, const T*, const T*, const T*,      \
                                         const T*, const T*, const T*, T*, T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace raymarch
}  // namespace invrender
