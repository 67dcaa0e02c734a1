// CUDA kernels of the rasterization op: the math of raster_math.h. Faces are turned into FaceRecs
// and counted per tile of kTile x kTile pixels (one thread per face); the torch glue turns the
// counts into offsets; a second pass fills each tile's face list; then one thread per pixel
// considers its tile's faces. Lists are filled with atomics in any order, but the selection
// compares (depth, face index), so the result does not depend on it. The backward scatters into
// the vertex gradients with atomicAdd (non-deterministic; the torch glue says so). No torch
// headers here (see design.md).
#include <cuda_runtime.h>

#include "../common/cuda_utils.cuh"
#include "raster_kernels.h"

namespace invrender {
namespace raster {
namespace {

using namespace invrender::cuda;

// Bins are indexed b * tiles + ty * tiles_x + tx over the whole batch.
struct Tiling {
  int64_t tiles_x, tiles;
};

inline Tiling tiling(const RasterParams& p) {
  const int64_t tx = (p.W + kTile - 1) / kTile, ty = (p.H + kTile - 1) / kTile;
  return {tx, tx * ty};
}

template <typename T>
__global__ void count_faces_kernel(RasterParams p, Tiling tl, const T* verts,
                                   const int64_t* faces, FaceRec<T>* recs,
                                   unsigned long long* counts) {
  const int64_t n = p.B * p.F;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = t / p.F;
    FaceRec<T> r;
    load_face(p, verts + b * p.V * 3, faces + 3 * t, r);
    recs[t] = r;
    int64_t tx0, tx1, ty0, ty1;
    if (!face_tiles(p, r, &tx0, &tx1, &ty0, &ty1)) continue;
    for (int64_t ty = ty0; ty <= ty1; ++ty)
      for (int64_t tx = tx0; tx <= tx1; ++tx)
        atomicAdd(counts + b * tl.tiles + ty * tl.tiles_x + tx, 1ull);
  }
}

template <typename T>
__global__ void fill_bins_kernel(RasterParams p, Tiling tl, const FaceRec<T>* recs,
                                 unsigned long long* cursor, int32_t* bin_faces) {
  const int64_t n = p.B * p.F;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = t / p.F, f = t % p.F;
    int64_t tx0, tx1, ty0, ty1;
    if (!face_tiles(p, recs[t], &tx0, &tx1, &ty0, &ty1)) continue;
    for (int64_t ty = ty0; ty <= ty1; ++ty)
      for (int64_t tx = tx0; tx <= tx1; ++tx) {
        const unsigned long long k = atomicAdd(cursor + b * tl.tiles + ty * tl.tiles_x + tx, 1ull);
        bin_faces[k] = static_cast<int32_t>(f);
      }
  }
}

template <typename T>
__global__ void rasterize_kernel(RasterParams p, Tiling tl, const FaceRec<T>* recs,
                                 const int64_t* bin_start, const int32_t* bin_faces,
                                 int64_t* face_idx, T* bary, T* dist, T* depth) {
  const int64_t n = p.B * p.H * p.W;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = t % p.W, i = (t / p.W) % p.H, b = t / (p.W * p.H);
    const T px = pixel_x<T>(j, p.W), py = pixel_y<T>(i, p.H);
    const FaceRec<T>* recs_b = recs + b * p.F;
    const int64_t bin = b * tl.tiles + (i / kTile) * tl.tiles_x + j / kTile;
    int64_t* fi = face_idx + t * p.L;
    T* fd = depth + t * p.L;
    int64_t count = 0;
    for (int64_t k = bin_start[bin]; k < bin_start[bin + 1]; ++k) {
      const int64_t f = bin_faces[k];
      consider_face(p, recs_b[f], f, px, py, fi, fd, count);
    }
    write_fragments(p, recs_b, px, py, fi, count, bary + 3 * t * p.L, dist + t * p.L, fd);
  }
}

template <typename T>
__global__ void rasterize_backward_kernel(RasterParams p, const T* gbary, const T* gdist,
                                          const T* gdepth, const T* verts, const int64_t* faces,
                                          const int64_t* face_idx, T* gverts) {
  const int64_t n = p.B * p.H * p.W * p.L;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t f = face_idx[t];
    if (f < 0) continue;
    const T* gb = gbary + 3 * t;
    if (gb[0] == T(0) && gb[1] == T(0) && gb[2] == T(0) && gdist[t] == T(0) && gdepth[t] == T(0))
      continue;
    const int64_t pix = t / p.L, b = pix / (p.H * p.W), ij = pix % (p.H * p.W);
    const int64_t* face = faces + (b * p.F + f) * 3;
    FaceRec<T> r;
    load_face(p, verts + b * p.V * 3, face, r);
    if (!r.valid) continue;
    T g[9] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
    eval_face_backward(r, pixel_x<T>(ij % p.W, p.W), pixel_y<T>(ij / p.W, p.H), gb, gdist[t],
                       gdepth[t], g);
    T* gv = gverts + b * p.V * 3;
#pragma unroll
    for (int k = 0; k < 3; ++k)
#pragma unroll
      for (int c = 0; c < 3; ++c)
        if (g[3 * k + c] != T(0)) atomicAdd(gv + 3 * face[k] + c, g[3 * k + c]);
  }
}

}  // namespace

int64_t rasterize_bins(const RasterParams& p) {
  return p.B * tiling(p).tiles;
}

template <typename T>
cudaError_t rasterize_count_cuda(const RasterParams& p, const T* verts, const int64_t* faces,
                                 FaceRec<T>* recs, int64_t* counts, cudaStream_t stream) {
  if (p.B * p.F == 0) return cudaSuccess;
  count_faces_kernel<T><<<blocks_for(p.B * p.F), kThreads, 0, stream>>>(
      p, tiling(p), verts, faces, recs, reinterpret_cast<unsigned long long*>(counts));
  return cudaGetLastError();
}

template <typename T>
cudaError_t rasterize_fill_cuda(const RasterParams& p, const FaceRec<T>* recs, int64_t* cursor,
                                int32_t* bin_faces, cudaStream_t stream) {
  if (p.B * p.F == 0) return cudaSuccess;
  fill_bins_kernel<T><<<blocks_for(p.B * p.F), kThreads, 0, stream>>>(
      p, tiling(p), recs, reinterpret_cast<unsigned long long*>(cursor), bin_faces);
  return cudaGetLastError();
}

template <typename T>
cudaError_t rasterize_pixels_cuda(const RasterParams& p, const FaceRec<T>* recs,
                                  const int64_t* bin_start, const int32_t* bin_faces,
                                  int64_t* face_idx, T* bary, T* dist, T* depth,
                                  cudaStream_t stream) {
  const int64_t n = p.B * p.H * p.W;
  if (n == 0) return cudaSuccess;
  rasterize_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(p, tiling(p), recs, bin_start,
                                                              bin_faces, face_idx, bary, dist,
                                                              depth);
  return cudaGetLastError();
}

template <typename T>
cudaError_t rasterize_backward_cuda(const RasterParams& p, const T* gbary, const T* gdist,
                                    const T* gdepth, const T* verts, const int64_t* faces,
                                    const int64_t* face_idx, T* gverts, cudaStream_t stream) {
  const int64_t n = p.B * p.H * p.W * p.L;
  if (n == 0) return cudaSuccess;
  rasterize_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      p, gbary, gdist, gdepth, verts, faces, face_idx, gverts);
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                                         \
  template cudaError_t rasterize_count_cuda<T>(const RasterParams&, const T*, const int64_t*,  \
                                               FaceRec<T>*, int64_t*, cudaStream_t);           \
  template cudaError_t rasterize_fill_cuda<T>(const RasterParams&, const FaceRec<T>*,          \
                                              int64_t*, int32_t*, cudaStream_t);               \
  template cudaError_t rasterize_pixels_cuda<T>(const RasterParams&, const FaceRec<T>*,        \
                                                const int64_t*, const int32_t*, int64_t*, T*,  \
                                                T*, T*, cudaStream_t);                         \
  template cudaError_t rasterize_backward_cuda<T>(const RasterParams&, const T*, const T*,     \
                                                  const T*, const T*, const int64_t*,          \
                                                  const int64_t*, T*, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace raster
}  // namespace invrender
