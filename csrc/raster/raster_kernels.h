// Launchers of the rasterization op on raw pointers, for the CPU loops (raster_cpu.cpp) and the
// CUDA kernels (raster_cuda.cu). No torch types. All pointers contiguous:
//
//   verts (B, V, 3)   faces (B, F, 3) int64 (rows with an index < 0: padding)
//   face_idx (B, H, W, L) int64   bary (B, H, W, L, 3)   dist, depth (B, H, W, L)
#pragma once

#include <cstdint>

#include "raster_math.h"

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace invrender {
namespace raster {

template <typename T>
void rasterize_forward_cpu(const RasterParams& p, const T* verts, const int64_t* faces,
                           int64_t* face_idx, T* bary, T* dist, T* depth);
// gverts zero-initialised.
template <typename T>
void rasterize_backward_cpu(const RasterParams& p, const T* gbary, const T* gdist,
                            const T* gdepth, const T* verts, const int64_t* faces,
                            const int64_t* face_idx, T* gverts);

#if defined(WITH_CUDA) || defined(__CUDACC__)
// recs: scratch of B * F face records.
template <typename T>
cudaError_t rasterize_forward_cuda(const RasterParams& p, const T* verts, const int64_t* faces,
                                   FaceRec<T>* recs, int64_t* face_idx, T* bary, T* dist,
                                   T* depth, cudaStream_t stream);
// gverts zero-initialised.
template <typename T>
cudaError_t rasterize_backward_cuda(const RasterParams& p, const T* gbary, const T* gdist,
                                    const T* gdepth, const T* verts, const int64_t* faces,
                                    const int64_t* face_idx, T* gverts, cudaStream_t stream);
#endif

}  // namespace raster
}  // namespace invrender
