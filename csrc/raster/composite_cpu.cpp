// CPU loops of the compositing ops: at::parallel_for over pixels. Every pixel writes only its own
// outputs and gradients, so the backward is deterministic for any thread count.
#include <ATen/Parallel.h>

#include "../common/cpu_dispatch.h"
#include "composite_kernels.h"

namespace invrender {
namespace composite {
namespace {

// Pixels per parallel_for task: enough work per task even for a few layers.
constexpr int64_t kGrain = 64;

template <typename T>
INVRENDER_CPU_CLONES void composite_forward_range(const Sizes& s, const T* alpha, const T* colors,
                                                  const T* background, T* image, T* mask,
                                                  int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n)
    composite_forward_pixel(s, alpha, colors, background, image, mask, n);
}

template <typename T>
INVRENDER_CPU_CLONES void composite_backward_range(const Sizes& s, const T* grad_image,
                                                   const T* grad_mask, const T* alpha,
                                                   const T* colors, const T* background,
                                                   T* grad_alpha, T* grad_colors,
                                                   T* grad_background, int64_t begin,
                                                   int64_t end) {
  for (int64_t n = begin; n < end; ++n)
    composite_backward_pixel(s, grad_image, grad_mask, alpha, colors, background, grad_alpha,
                             grad_colors, grad_background, n);
}

template <typename T>
INVRENDER_CPU_CLONES void softras_forward_range(const Sizes& s, const SoftrasParams& p,
                                                const T* prob, const T* depth,
                                                const int64_t* face_idx, const T* colors,
                                                const T* background, T* image, T* silhouette,
                                                int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n)
    softras_forward_pixel(s, p, prob, depth, face_idx, colors, background, image, silhouette, n);
}

template <typename T>
INVRENDER_CPU_CLONES void softras_backward_range(
    const Sizes& s, const SoftrasParams& p, const T* grad_image, const T* grad_silhouette,
    const T* prob, const T* depth, const int64_t* face_idx, const T* colors, const T* background,
    T* grad_prob, T* grad_depth, T* grad_colors, T* grad_background, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n)
    softras_backward_pixel(s, p, grad_image, grad_silhouette, prob, depth, face_idx, colors,
                           background, grad_prob, grad_depth, grad_colors, grad_background, n);
}

}  // namespace

template <typename T>
void composite_forward_cpu(const Sizes& s, const T* alpha, const T* colors, const T* background,
                           T* image, T* mask) {
  at::parallel_for(0, s.B * s.P, kGrain, [&](int64_t begin, int64_t end) {
    composite_forward_range(s, alpha, colors, background, image, mask, begin, end);
  });
}

template <typename T>
void composite_backward_cpu(const Sizes& s, const T* grad_image, const T* grad_mask,
                            const T* alpha, const T* colors, const T* background, T* grad_alpha,
                            T* grad_colors, T* grad_background) {
  at::parallel_for(0, s.B * s.P, kGrain, [&](int64_t begin, int64_t end) {
    composite_backward_range(s, grad_image, grad_mask, alpha, colors, background, grad_alpha,
                             grad_colors, grad_background, begin, end);
  });
}

template <typename T>
void softras_forward_cpu(const Sizes& s, const SoftrasParams& p, const T* prob, const T* depth,
                         const int64_t* face_idx, const T* colors, const T* background, T* image,
                         T* silhouette) {
  at::parallel_for(0, s.B * s.P, kGrain, [&](int64_t begin, int64_t end) {
    softras_forward_range(s, p, prob, depth, face_idx, colors, background, image, silhouette,
                          begin, end);
  });
}

template <typename T>
void softras_backward_cpu(const Sizes& s, const SoftrasParams& p, const T* grad_image,
                          const T* grad_silhouette, const T* prob, const T* depth,
                          const int64_t* face_idx, const T* colors, const T* background,
                          T* grad_prob, T* grad_depth, T* grad_colors, T* grad_background) {
  at::parallel_for(0, s.B * s.P, kGrain, [&](int64_t begin, int64_t end) {
    softras_backward_range(s, p, grad_image, grad_silhouette, prob, depth, face_idx, colors,
                           background, grad_prob, grad_depth, grad_colors, grad_background, begin,
                           end);
  });
}

#define INSTANTIATE(T)                                                                          \
  template void composite_forward_cpu<T>(const Sizes&, const T*, const T*, const T*, T*, T*);   \
  template void composite_backward_cpu<T>(const Sizes&, const T*, const T*, const T*, const T*, \
                                          const T*, T*, T*, T*);                                \
  template void softras_forward_cpu<T>(const Sizes&, const SoftrasParams&, const T*, const T*,  \
                                       const int64_t*, const T*, const T*, T*, T*);             \
  template void softras_backward_cpu<T>(const Sizes&, const SoftrasParams&, const T*, const T*, \
                                        const T*, const T*, const int64_t*, const T*, const T*, \
                                        T*, T*, T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace composite
}  // namespace invrender
