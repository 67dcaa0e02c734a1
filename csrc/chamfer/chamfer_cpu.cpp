// CPU nearest neighbours: a k-d tree per cloud of y (median splits on the widest axis, leaves of
// at most kLeaf points stored contiguously), queried depth first with pruning by the splitting
// planes. Trees are built in parallel over clouds, queries in parallel over points. The backward
// scatters into each cloud's y gradient from one thread per cloud (deterministic).
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "../common/cpu_dispatch.h"
#include "chamfer_kernels.h"

namespace invrender {
namespace chamfer {
namespace {

constexpr int32_t kLeaf = 16;
constexpr int64_t kBruteForce = 64;  // clouds this small are scanned directly
// The stack holds at most one entry per tree level (median splits: depth <= 32 for int32 sizes).
constexpr int kStack = 64;

template <typename T>
struct Node {
  int32_t begin, end;   // points [begin, end) of the tree order
  int32_t left, right;  // children (-1: leaf)
  int32_t axis;
  T split;
};

template <typename T>
struct KdTree {
  std::vector<T> pts;         // points in tree order, (m, D)
  std::vector<int32_t> orig;  // their indices in the cloud
  std::vector<Node<T>> nodes;
};

template <typename T>
void build_tree(const T* y, int64_t m, int64_t D, KdTree<T>& tree) {
  tree.orig.resize(m);
  std::iota(tree.orig.begin(), tree.orig.end(), 0);
  tree.nodes.clear();
  tree.nodes.reserve(2 * (m / kLeaf + 1) + 1);
  tree.nodes.push_back({0, static_cast<int32_t>(m), -1, -1, 0, T(0)});
  std::vector<int32_t> todo = {0};
  while (!todo.empty()) {
    const int32_t id = todo.back();
    todo.pop_back();
    const int32_t begin = tree.nodes[id].begin, end = tree.nodes[id].end;
    if (end - begin <= kLeaf) continue;
    // Widest axis of the node's bounding box.
    int32_t axis = 0;
    T widest = T(-1);
    for (int64_t k = 0; k < D; ++k) {
      T lo = std::numeric_limits<T>::infinity(), hi = -lo;
      for (int32_t p = begin; p < end; ++p) {
        const T v = y[tree.orig[p] * D + k];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      if (hi - lo > widest) {
        widest = hi - lo;
        axis = static_cast<int32_t>(k);
      }
    }
    const int32_t mid = begin + (end - begin) / 2;
    std::nth_element(tree.orig.begin() + begin, tree.orig.begin() + mid, tree.orig.begin() + end,
                     [&](int32_t a, int32_t b) {
                       const T va = y[a * D + axis], vb = y[b * D + axis];
                       return va < vb || (va == vb && a < b);
                     });
    const int32_t left = static_cast<int32_t>(tree.nodes.size());
    tree.nodes.push_back({begin, mid, -1, -1, 0, T(0)});
    tree.nodes.push_back({mid, end, -1, -1, 0, T(0)});
    Node<T>& n = tree.nodes[id];
    n.left = left;
    n.right = left + 1;
    n.axis = axis;
    n.split = y[tree.orig[mid] * D + axis];
    todo.push_back(left);
    todo.push_back(left + 1);
  }
  tree.pts.resize(m * D);
  for (int64_t p = 0; p < m; ++p)
    for (int64_t k = 0; k < D; ++k) tree.pts[p * D + k] = y[tree.orig[p] * D + k];
}

// Left holds coordinates <= split, right >= split along the axis; a query on one side is at least
// (q - split)^2 from every point of the other.
template <typename T>
INVRENDER_CPU_CLONES void query_tree(const KdTree<T>& tree, const T* q, int64_t D, T* best,
                                     int64_t* best_j) {
  struct Entry {
    int32_t node;
    T bound;
  };
  Entry stack[kStack];
  int top = 0;
  stack[top++] = {0, T(0)};
  while (top > 0) {
    const Entry e = stack[--top];
    if (e.bound > *best) continue;
    int32_t id = e.node;
    while (tree.nodes[id].left >= 0) {
      const Node<T>& n = tree.nodes[id];
      const T diff = q[n.axis] - n.split;
      const int32_t near = diff <= T(0) ? n.left : n.right, far = diff <= T(0) ? n.right : n.left;
      const T bound = diff * diff;
      if (bound <= *best && top < kStack) stack[top++] = {far, bound};
      id = near;
    }
    const Node<T>& leaf = tree.nodes[id];
    for (int32_t p = leaf.begin; p < leaf.end; ++p)
      keep_nearest(sq_dist(q, &tree.pts[p * D], D), int64_t(tree.orig[p]), best, best_j);
  }
}

template <typename T>
INVRENDER_CPU_CLONES void query_brute(const T* y, int64_t m, const T* q, int64_t D, T* best,
                                      int64_t* best_j) {
  for (int64_t j = 0; j < m; ++j) keep_nearest(sq_dist(q, y + j * D, D), j, best, best_j);
}

}  // namespace

template <typename T>
void nn_forward_cpu(const NNSizes& s, const T* x, const T* y, const int64_t* x_len,
                    const int64_t* y_len, T* dist, int64_t* idx) {
  std::vector<KdTree<T>> trees(s.B);
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      if (y_len[b] > kBruteForce) build_tree(y + b * s.M * s.D, y_len[b], s.D, trees[b]);
  });
  at::parallel_for(0, s.B * s.N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / s.N, i = n % s.N;
      T best = std::numeric_limits<T>::infinity();
      int64_t best_j = -1;
      if (i < x_len[b] && y_len[b] > 0) {
        const T* q = x + n * s.D;
        if (y_len[b] > kBruteForce) {
          query_tree(trees[b], q, s.D, &best, &best_j);
        } else {
          query_brute(y + b * s.M * s.D, y_len[b], q, s.D, &best, &best_j);
        }
      }
      dist[n] = best_j >= 0 ? best : T(0);
      idx[n] = best_j;
    }
  });
}

template <typename T>
void nn_backward_cpu(const NNSizes& s, const T* grad, const T* x, const T* y,
                     const int64_t* idx, T* gx, T* gy) {
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t i = 0; i < s.N; ++i) {
        const int64_t n = b * s.N + i, j = idx[n];
        if (j < 0) {
          for (int64_t k = 0; k < s.D; ++k) gx[n * s.D + k] = T(0);
          continue;
        }
        nn_backward_point(x + n * s.D, y + (b * s.M + j) * s.D, grad[n], s.D, gx + n * s.D,
                          gy == nullptr ? nullptr : gy + (b * s.M + j) * s.D, AddScatter());
      }
  });
}

#define INSTANTIATE(T)                                                                        \
  template void nn_forward_cpu<T>(const NNSizes&, const T*, const T*, const int64_t*,         \
                                  const int64_t*, T*, int64_t*);                              \
  template void nn_backward_cpu<T>(const NNSizes&, const T*, const T*, const T*,              \
                                   const int64_t*, T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace chamfer
}  // namespace invrender
