// CPU loops of the voxel ops: the math of voxel_math.h inside at::parallel_for.
// Forward passes parallelise over output elements. Backward passes scatter into the grid
// gradient, so they parallelise over the batch only: each batch element is owned by one thread and
// the result does not depend on the thread count (deterministic).
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "voxel_kernels.h"

namespace invrender {
namespace voxel {
namespace {

// Grain sizes: enough work per task to amortise scheduling.
constexpr int64_t kVoxelGrain = 4096;
constexpr int64_t kPixelGrain = 64;

// Calls f(integral_constant<bool, nearest>, integral_constant<int, chunk>) with the channel chunk
// specialised for the single-channel case.
template <typename F>
void dispatch_project(bool nearest, int64_t channels, const F& f) {
  using One = std::integral_constant<int, 1>;
  using Many = std::integral_constant<int, kChunk>;
  if (nearest) {
    if (channels == 1) f(std::true_type(), One()); else f(std::true_type(), Many());
  } else {
    if (channels == 1) f(std::false_type(), One()); else f(std::false_type(), Many());
  }
}

}  // namespace

template <typename T>
void rotation_forward_cpu(const T* az, const T* el, const T* roll, T* R, int64_t n) {
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) rotation_forward(az[i], el[i], roll[i], R + 9 * i);
  });
}

template <typename T>
void rotation_backward_cpu(const T* gR, const T* az, const T* el, const T* roll, T* gaz, T* gel,
                           T* groll, int64_t n) {
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      rotation_backward(gR + 9 * i, az[i], el[i], roll[i], gaz + i, gel + i, groll + i);
  });
}

template <typename T>
void rotate_forward_cpu(const Geometry& g, const T* vox, const T* rot, T* out, bool nearest) {
  const int64_t rows = g.B * g.Do * g.Ho;
  const int64_t grain = std::max<int64_t>(1, kVoxelGrain / std::max<int64_t>(g.Wo, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t h = i % g.Ho, d = (i / g.Ho) % g.Do, b = i / (g.Ho * g.Do);
      if (nearest)
        rotate_forward_span<T, true>(g, vox, rot, out, b, d, h, 0, g.Wo);
      else
        rotate_forward_span<T, false>(g, vox, rot, out, b, d, h, 0, g.Wo);
    }
  });
}

template <typename T>
void rotate_backward_cpu(const Geometry& g, const T* gout, const T* vox, const T* rot, T* gvox,
                         T* grot, bool nearest) {
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t d = 0; d < g.Do; ++d)
        for (int64_t h = 0; h < g.Ho; ++h) {
          if (nearest)
            rotate_backward_span<T, true>(g, gout, vox, rot, gvox, acc, b, d, h, 0, g.Wo,
                                          AddScatter());
          else
            rotate_backward_span<T, false>(g, gout, vox, rot, gvox, acc, b, d, h, 0, g.Wo,
                                           AddScatter());
        }
      for (int k = 0; k < 9; ++k) grot[9 * b + k] = static_cast<T>(acc[k]);
    }
  });
}

template <typename T>
void project_forward_cpu(const Geometry& g, const T* vox, const T* rot, T* img, T tau,
                         bool nearest) {
  const int64_t n = g.B * g.Ho * g.Wo;
  dispatch_project(nearest, g.C, [&](auto nearest_c, auto chunk_c) {
    constexpr bool Nearest = decltype(nearest_c)::value;
    constexpr int Chunk = decltype(chunk_c)::value;
    at::parallel_for(0, n, kPixelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t w = i % g.Wo, h = (i / g.Wo) % g.Ho, b = i / (g.Wo * g.Ho);
        project_forward_pixel<T, Nearest, Chunk>(g, vox, rot, img, tau, b, h, w);
      }
    });
  });
}

template <typename T>
void project_backward_cpu(const Geometry& g, const T* gimg, const T* img, const T* vox,
                          const T* rot, T* gvox, T* grot, T tau, bool nearest) {
  dispatch_project(nearest, g.C, [&](auto nearest_c, auto chunk_c) {
    constexpr bool Nearest = decltype(nearest_c)::value;
    constexpr int Chunk = decltype(chunk_c)::value;
    at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t h = 0; h < g.Ho; ++h)
          for (int64_t w = 0; w < g.Wo; ++w)
            project_backward_pixel<T, Nearest, double, AddScatter, Chunk>(
                g, gimg, img, vox, rot, gvox, acc, tau, b, h, w, AddScatter());
        for (int k = 0; k < 9; ++k) grot[9 * b + k] = static_cast<T>(acc[k]);
      }
    });
  });
}

#define INSTANTIATE(T)                                                                         \
  template void rotation_forward_cpu<T>(const T*, const T*, const T*, T*, int64_t);            \
  template void rotation_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, T*, T*,   \
                                         int64_t);                                             \
  template void rotate_forward_cpu<T>(const Geometry&, const T*, const T*, T*, bool);          \
  template void rotate_backward_cpu<T>(const Geometry&, const T*, const T*, const T*, T*, T*,  \
                                       bool);                                                  \
  template void project_forward_cpu<T>(const Geometry&, const T*, const T*, T*, T, bool);      \
  template void project_backward_cpu<T>(const Geometry&, const T*, const T*, const T*,         \
                                        const T*, T*, T*, T, bool);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace voxel
}  // namespace invrender
