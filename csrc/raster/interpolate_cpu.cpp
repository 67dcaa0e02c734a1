// CPU loops of the interpolation op. The forward parallelises over fragments; the backward
// scatters into each mesh's attribute gradients from one thread per mesh (deterministic).
#include <ATen/Parallel.h>

#include "interpolate_kernels.h"

namespace invrender {
namespace interp {

template <typename T>
void interpolate_forward_cpu(const InterpSizes& s, const T* attrs, const int64_t* faces,
                             const int64_t* face_idx, const T* bary, T* out) {
  at::parallel_for(0, s.B * s.P, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / s.P;
      interpolate_fragment(s, attrs + b * s.V * s.C, faces + b * s.F * 3, face_idx[n],
                           bary + 3 * n, out + n * s.C);
    }
  });
}

template <typename T>
void interpolate_backward_cpu(const InterpSizes& s, const T* grad, const T* attrs,
                              const int64_t* faces, const int64_t* face_idx, const T* bary,
                              T* grad_attrs, T* grad_bary) {
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t n = b * s.P; n < (b + 1) * s.P; ++n)
        interpolate_fragment_backward(
            s, attrs + b * s.V * s.C, faces + b * s.F * 3, face_idx[n], bary + 3 * n,
            grad + n * s.C, grad_attrs == nullptr ? nullptr : grad_attrs + b * s.V * s.C,
            grad_bary == nullptr ? nullptr : grad_bary + 3 * n, AddScatter());
  });
}

#define INSTANTIATE(T)                                                                          \
  template void interpolate_forward_cpu<T>(const InterpSizes&, const T*, const int64_t*,        \
                                           const int64_t*, const T*, T*);                       \
  template void interpolate_backward_cpu<T>(const InterpSizes&, const T*, const T*,             \
                                            const int64_t*, const int64_t*, const T*, T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace interp
}  // namespace invrender
