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

// Test-only: the CPU forward considers each tile's faces shuffled with this seed (0: index order).
void set_face_order_for_testing(int64_t seed);

template <typename T>
void rasterize_forward_cpu(const RasterParams& p, const T* verts, const int64_t* faces,
                           int64_t* face_idx, T* bary, T* dist, T* depth);
// gverts zero-initialised.
template <typename T>
void rasterize_backward_cpu(const RasterParams& p, const T* gbary, const T* gdist,
                            const T* gdepth, const T* verts, const int64_t* faces,
                            const int64_t* face_idx, T* gverts);

#if defined(WITH_CUDA) || defined(__CUDACC__)
// The forward in three launches around an exclusive scan done by the caller:
//   1. rasterize_count_cuda: face records (recs, B * F) and per-bin face counts (counts,
//      rasterize_bins(p) entries, zero-initialised);
//   2. the caller turns counts into bin_start (exclusive offsets, rasterize_bins(p) + 1 entries),
//      allocates bin_faces (bin_start[last] entries) and passes a copy of bin_start as cursor;
//   3. rasterize_fill_cuda fills bin_faces; rasterize_pixels_cuda writes the fragments.
int64_t rasterize_bins(const RasterParams& p);
template <typename T>
cudaError_t rasterize_count_cuda(const RasterParams& p, const T* verts, const int64_t* faces,
                                 FaceRec<T>* recs, int64_t* counts, cudaStream_t stream);
template <typename T>
cudaError_t rasterize_fill_cuda(const RasterParams& p, const FaceRec<T>* recs, int64_t* cursor,
                                int32_t* bin_faces, cudaStream_t stream);
template <typename T>
cudaError_t rasterize_pixels_cuda(const RasterParams& p, const FaceRec<T>* recs,
                                  const int64_t* bin_start, const int32_t* bin_faces,
                                  int64_t* face_idx, T* bary, T* dist, T* depth,
                                  cudaStream_t stream);
// gverts zero-initialised.
template <typename T>
cudaError_t rasterize_backward_cuda(const RasterParams& p, const T* gbary, const T* gdist,
                                    const T* gdepth, const T* verts, const int64_t* faces,
                                    const int64_t* face_idx, T* gverts, cudaStream_t stream);
#endif

}  // namespace raster
}  // namespace invrender
