// CPU nearest neighbours: a k-d tree per cloud of y (median splits on the widest axis, leaves of
// at most kLeaf points stored contiguously), queried depth first. Each node keeps its bounding box
// and the smallest cloud index it holds: a node is skipped when its box is farther than the best
// distance so far, or exactly as far and holding no index below the best one. Without the second
// rule, ties (duplicated or zero-padded points) made the search visit every leaf: quadratic time.
// The nearer child is searched first, the one with the smaller index on equal box distances, so a
// query among n copies of one point reads one leaf. Trees are built in parallel over clouds, queries
// in parallel over points. The backward scatters into each cloud's y gradient from one thread per
// cloud (deterministic).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
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

std::atomic<int64_t> g_leaf_visits{0};  // leaves scanned (leaf_visits_for_testing)

struct Node {
  int32_t begin, end;   // points [begin, end) of the tree order
  int32_t left, right;  // children (-1: leaf)
  int32_t min_idx;      // smallest cloud index among the node's points
};

template <typename T>
struct KdTree {
  int64_t D = 0;
  std::vector<T> pts;         // points in tree order, (m, D)
  std::vector<int32_t> orig;  // their indices in the cloud
  std::vector<Node> nodes;
  std::vector<T> box;         // per node: lower corner (D) then upper corner (D)

  const T* lo(int32_t id) const { return &box[id * 2 * D]; }
  const T* hi(int32_t id) const { return &box[id * 2 * D + D]; }
};

// Appends a node over tree order [begin, end) with its bounding box and smallest index.
template <typename T>
int32_t add_node(const T* y, int32_t begin, int32_t end, KdTree<T>& tree) {
  const int64_t D = tree.D;
  const int32_t id = static_cast<int32_t>(tree.nodes.size());
  int32_t min_idx = std::numeric_limits<int32_t>::max();
  tree.box.resize((id + 1) * 2 * D);
  T* lo = &tree.box[id * 2 * D];
  T* hi = lo + D;
  std::fill(lo, lo + D, std::numeric_limits<T>::infinity());
  std::fill(hi, hi + D, -std::numeric_limits<T>::infinity());
  for (int32_t p = begin; p < end; ++p) {
    const int32_t j = tree.orig[p];
    min_idx = std::min(min_idx, j);
    for (int64_t k = 0; k < D; ++k) {
      lo[k] = std::min(lo[k], y[j * D + k]);
      hi[k] = std::max(hi[k], y[j * D + k]);
    }
  }
  tree.nodes.push_back({begin, end, -1, -1, min_idx});
  return id;
}

template <typename T>
void build_tree(const T* y, int64_t m, int64_t D, KdTree<T>& tree) {
  tree.D = D;
  tree.orig.resize(m);
  std::iota(tree.orig.begin(), tree.orig.end(), 0);
  tree.nodes.clear();
  tree.nodes.reserve(2 * (m / kLeaf + 1) + 1);
  tree.box.clear();
  tree.box.reserve((2 * (m / kLeaf + 1) + 1) * 2 * D);
  add_node(y, 0, static_cast<int32_t>(m), tree);
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
      const T w = tree.hi(id)[k] - tree.lo(id)[k];
      if (w > widest) {
        widest = w;
        axis = static_cast<int32_t>(k);
      }
    }
    // Median split; equal coordinates are ordered by index, so on ties the left child holds the
    // smaller indices (which the query visits first).
    const int32_t mid = begin + (end - begin) / 2;
    std::nth_element(tree.orig.begin() + begin, tree.orig.begin() + mid, tree.orig.begin() + end,
                     [&](int32_t a, int32_t b) {
                       const T va = y[a * D + axis], vb = y[b * D + axis];
                       return va < vb || (va == vb && a < b);
                     });
    const int32_t left = add_node(y, begin, mid, tree);
    const int32_t right = add_node(y, mid, end, tree);
    tree.nodes[id].left = left;
    tree.nodes[id].right = right;
    todo.push_back(left);
    todo.push_back(right);
  }
  tree.pts.resize(m * D);
  for (int64_t p = 0; p < m; ++p)
    for (int64_t k = 0; k < D; ++k) tree.pts[p * D + k] = y[tree.orig[p] * D + k];
}

// Squared distance from q to a box: sq_dist to the box's point nearest q. Each coordinate gap is at
// most |q_k - y_k| for every point y of the box, and the same code sums them (rounding, FMA
// contraction included, is monotonic), so the bound never exceeds the distance sq_dist gives any
// point inside, and equals it for a box that is one point (all duplicates). Inlined into
// query_tree's clone, so that both distances are compiled alike.
template <typename T>
inline T box_dist(const T* q, const T* lo, const T* hi, int64_t D) {
  T p[kMaxDim];
  for (int64_t k = 0; k < D; ++k) p[k] = std::min(std::max(q[k], lo[k]), hi[k]);
  return sq_dist(q, p, D);
}

// A node at box distance `bound` holding indices >= min_idx can't improve (best, best_j).
template <typename T>
inline bool cannot_improve(T bound, int32_t min_idx, T best, int64_t best_j) {
  return best_j >= 0 && (bound > best || (bound == best && min_idx >= best_j));
}

// Returns the number of leaves scanned.
template <typename T>
INVRENDER_CPU_CLONES int64_t query_tree(const KdTree<T>& tree, const T* q, int64_t D, T* best,
                                        int64_t* best_j) {
  int64_t leaves = 0;
  struct Entry {
    int32_t node;
    T bound;
  };
  Entry stack[kStack];
  int top = 0;
  stack[top++] = {0, box_dist(q, tree.lo(0), tree.hi(0), D)};
  while (top > 0) {
    const Entry e = stack[--top];
    int32_t id = e.node;
    if (cannot_improve(e.bound, tree.nodes[id].min_idx, *best, *best_j)) continue;
    bool skip = false;
    while (tree.nodes[id].left >= 0) {
      const Node& n = tree.nodes[id];
      const T bl = box_dist(q, tree.lo(n.left), tree.hi(n.left), D);
      const T br = box_dist(q, tree.lo(n.right), tree.hi(n.right), D);
      const bool left_first =
          bl < br || (bl == br && tree.nodes[n.left].min_idx < tree.nodes[n.right].min_idx);
      const int32_t near = left_first ? n.left : n.right, far = left_first ? n.right : n.left;
      const T near_bound = left_first ? bl : br, far_bound = left_first ? br : bl;
      if (!cannot_improve(far_bound, tree.nodes[far].min_idx, *best, *best_j))
        stack[top++] = {far, far_bound};
      if (cannot_improve(near_bound, tree.nodes[near].min_idx, *best, *best_j)) {
        skip = true;
        break;
      }
      id = near;
    }
    if (skip) continue;
    const Node& leaf = tree.nodes[id];
    ++leaves;
    for (int32_t p = leaf.begin; p < leaf.end; ++p)
      keep_nearest(sq_dist(q, &tree.pts[p * D], D), int64_t(tree.orig[p]), best, best_j);
  }
  return leaves;
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
    int64_t leaves = 0;
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / s.N, i = n % s.N;
      T best = std::numeric_limits<T>::infinity();
      int64_t best_j = -1;
      if (i < x_len[b] && y_len[b] > 0) {
        const T* q = x + n * s.D;
        if (y_len[b] > kBruteForce) {
          leaves += query_tree(trees[b], q, s.D, &best, &best_j);
        } else {
          query_brute(y + b * s.M * s.D, y_len[b], q, s.D, &best, &best_j);
        }
      }
      dist[n] = best_j >= 0 ? best : T(0);
      idx[n] = best_j;
    }
    g_leaf_visits.fetch_add(leaves, std::memory_order_relaxed);
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

int64_t leaf_visits_for_testing() { return g_leaf_visits.exchange(0); }

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
