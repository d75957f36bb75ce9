// The 2x2 average pool with stride 2 of the tutorial's LeNet, on CPU, for float32 and
// float64 contiguous (N, C, H, W) inputs with even H and W (src/normlab/models.py):
//
//   forward   y[i, j]  = (x[2i, 2j] + x[2i, 2j+1] + x[2i+1, 2j] + x[2i+1, 2j+1]) / 4
//   backward  dx[2i + a, 2j + b] = dy[i, j] / 4    for a, b in {0, 1}
//
// One pass each way over the plane, where torch's general kernel walks every window.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace normlab {
namespace {

using at::Tensor;

template <typename T>
void pool_planes(const T* x, T* y, int64_t planes, int64_t H, int64_t W) {
  const int64_t h = H / 2, w = W / 2;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < h; ++i) {
        const T* __restrict top = x + (p * H + 2 * i) * W;
        const T* __restrict bottom = top + W;
        T* __restrict out = y + (p * h + i) * w;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j)
          out[j] = ((top[2 * j] + top[2 * j + 1]) + (bottom[2 * j] + bottom[2 * j + 1])) * T(0.25);
      }
    }
  });
}

template <typename T>
void unpool_planes(const T* g, T* dx, int64_t planes, int64_t h, int64_t w) {
  const int64_t W = 2 * w;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < h; ++i) {
        const T* __restrict row = g + (p * h + i) * w;
        T* __restrict top = dx + (p * 2 * h + 2 * i) * W;
        T* __restrict bottom = top + W;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) {
          const T v = row[j] * T(0.25);
          top[2 * j] = v;
          top[2 * j + 1] = v;
          bottom[2 * j] = v;
          bottom[2 * j + 1] = v;
        }
      }
    }
  });
}

Tensor avg_pool2x2_forward(const Tensor& input) {
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  Tensor out = at::empty({N, C, H / 2, W / 2}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::avg_pool2x2_forward", [&] {
    pool_planes(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N * C, H, W);
  });
  return out;
}

Tensor avg_pool2x2_backward(const Tensor& grad_out) {
  Tensor g = grad_out.contiguous();
  const int64_t N = g.size(0), C = g.size(1), h = g.size(2), w = g.size(3);
  Tensor dx = at::empty({N, C, 2 * h, 2 * w}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "normlab::avg_pool2x2_backward", [&] {
    unpool_planes(g.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), N * C, h, w);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("avg_pool2x2_forward(Tensor input) -> Tensor");
  m.def("avg_pool2x2_backward(Tensor grad_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("avg_pool2x2_forward", &avg_pool2x2_forward);
  m.impl("avg_pool2x2_backward", &avg_pool2x2_backward);
}

}  // namespace normlab
