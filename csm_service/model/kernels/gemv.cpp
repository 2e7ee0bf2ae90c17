// Matrix products for a CPU frame step: one row (a batch-1 step) to a few hundred (a prefill chunk).
// With few rows they are bound by how fast the weights stream from memory; with many, by the
// multiply units. Each weight is stored once, in a blocked layout [NB, K / KP, 64, KP]: a block is
// 64 output channels, and each 64-byte-or-wider line holds those 64 outputs' next KP inputs
// (KP = 4 bytes / element: the inputs one 32-bit lane of a dot-product instruction takes). A block
// reads as one sequential stream, and a row's KP inputs, broadcast to every lane, multiply 64
// outputs at a time: an outer product, with no horizontal sums. Rows are padded with zeros to a
// multiple of 64; the caller passes the true row count n.
//
// Every output accumulates its inputs in one fixed order (k ascending, one float32 lane), whatever
// the number of rows M or threads: a row's result does not depend on which other rows share the
// call (batch-invariant). Work goes block by block, each block in K tiles that stay in L2
// (K_TILE_BYTES) while every chunk of up to MR rows passes over them with its sums in registers
// (MR x 4 vectors), so weights come from memory once per call. Measured on the dev machine
// (8192 x 2048 bf16, `csm-service bench gemv`, docs/benchmarks.md): faster than oneDNN's
// prepacked product with few rows, level with it at 128 and 512.
//
//   csm_cpu::gemv_f32 (x [M, K] f32,  w [NB, K,   64, 1] f32, n)                  -> [M, n] f32
//   csm_cpu::gemv_bf16(x [M, K] bf16, w [NB, K/2, 64, 2] bf16, n)                 -> [M, n] bf16 (AVX512-BF16)
//   csm_cpu::gemv_int8(x [M, K] f32,  w [NB, K/4, 64, 4] u8, scale [NB*64] f32, n) -> [M, n] f32 (VNNI)
//   csm_cpu::gemv_w8  (x [M, K] f32,  w [NB, K,   64, 1] s8, scale [NB*64] f32, n) -> [M, n] f32
//
// gemv_w8 is weight-only int8: x stays float32, each weight line is widened to float32 in registers
// (16 at a time) and multiplied in; only the weight is rounded.
//
// gemv_int8: w holds q + 128 for the per-output-channel int8 weight q (w ~ q * scale); x is rounded
// to int8 per group of 64 inputs, each group with its own scale (amax / 127), so one outlier costs
// its own group's precision, not the whole row's. Then
//   y[m, n] = scale[n] * (sum_g xs[m, g] * sum_{k in g} w[n, k] * xq[m, k]  -  128 * sum_g xs[m, g] * sum_{k in g} xq[m, k]).
//
// Built at run time by csm_service/model/kernels/build.py with AVX-512 flags; loaded only on a CPU
// that has them.

#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t NW = 64;     // output channels per block
constexpr int64_t V = NW / 16;  // float32 vectors per block row of outputs
constexpr int64_t G = 64;      // int8: inputs per activation scale
constexpr int64_t BLOCK_WORK = 32768;  // weights per task below which a call stays on one thread
constexpr int64_t K_TILE_BYTES = 128 * 1024;  // weight bytes of a block every row chunk passes over while in L2
constexpr float MIN_GROUP_AMAX = 1e-30f;  // int8: a group this small rounds to zeros (its 1/scale would overflow)

// f(std::integral_constant<int, rows>) with rows = min(mm, MR): a row chunk's size as a template argument.
template <int MR, typename F>
void with_rows(int64_t mm, const F& f) {
  if constexpr (MR == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    if (mm >= MR) f(std::integral_constant<int, MR>{});
    else with_rows<MR - 1>(mm, f);
  }
}

// For every block b (in parallel), every K tile [k0, k1) (a multiple of 64 inputs) and every chunk
// of up to MR rows from m0: tile(rows, m0, b, k0, k1, acc + m0 * 64), which adds the tile's products
// to the chunk's running sums acc [rows, 64] (zero before the first tile). Then finish(b, acc):
// acc [M, 64] holds block b's sums for every row.
template <int MR, typename Tile, typename Finish>
void for_tiles(int64_t M, int64_t K, int64_t NB, int64_t elem_bytes, const Tile& tile, const Finish& finish) {
  const int64_t k_tile = std::max<int64_t>(G, K_TILE_BYTES / (NW * elem_bytes) / G * G);
  const int64_t grain = std::max<int64_t>(1, BLOCK_WORK / (NW * K));
  at::parallel_for(0, NB, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> acc(M * NW);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t k0 = 0; k0 < K; k0 += k_tile) {
        const int64_t k1 = std::min(K, k0 + k_tile);
        for (int64_t m0 = 0; m0 < M; m0 += MR)
          with_rows<MR>(M - m0, [&](auto rows) { tile(rows, m0, b, k0, k1, acc.data() + m0 * NW); });
      }
      finish(b, acc.data());
    }
  });
}

template <int MM>
inline void load_sums(const float* io, __m512 (&acc)[MM][V]) {
  for (int m = 0; m < MM; ++m)
    for (int j = 0; j < V; ++j) acc[m][j] = _mm512_loadu_ps(io + m * NW + 16 * j);
}

template <int MM>
inline void store_sums(float* io, const __m512 (&acc)[MM][V]) {
  for (int m = 0; m < MM; ++m)
    for (int j = 0; j < V; ++j) _mm512_storeu_ps(io + m * NW + 16 * j, acc[m][j]);
}

// Block b's outputs [b * 64, min(n, b * 64 + 64)) of every row: y[m, c] = out(m, c, sum).
template <typename T, typename Out>
void write_block(T* y, const float* acc, int64_t M, int64_t n, int64_t b, const Out& out) {
  const int64_t c0 = b * NW, c1 = std::min(n, c0 + NW);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = c0; c < c1; ++c) y[m * n + c] = out(m, c, acc[m * NW + c - c0]);
}

void check_common(const at::Tensor& x, const at::Tensor& w, int64_t n, int64_t kp, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), name, ": x must be a contiguous [M, K] matrix");
  TORCH_CHECK(x.size(1) > 0, name, ": x has no columns");
  TORCH_CHECK(w.dim() == 4 && w.is_contiguous(), name, ": w must be a contiguous blocked [NB, K/", kp, ", 64, ", kp, "] weight");
  TORCH_CHECK(w.size(2) == NW && w.size(3) == kp, name, ": w's blocks must be [K/", kp, ", 64, ", kp, "]");
  TORCH_CHECK(w.size(1) * kp == x.size(1), name, ": x has ", x.size(1), " columns, w ", w.size(1) * kp);
  TORCH_CHECK(n > 0 && n <= w.size(0) * NW && n > (w.size(0) - 1) * NW, name, ": n=", n, " does not fit ", w.size(0), " blocks");
}

void check_scale(const at::Tensor& scale, const at::Tensor& w, const char* name) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == w.size(0) * NW, name,
              ": scale must be float32 [NB * 64]");
}

// ---- float32 activations, float32 or int8 weights (FMA) ---------------------------------------
inline __m512 widen16(const float* w) { return _mm512_loadu_ps(w); }
inline __m512 widen16(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}

// gemv_f32's tile (W = float) and gemv_w8's (W = int8_t, widened to float32 in registers).
template <int MM, typename W>
void fma_tile(const float* x, int64_t K, const W* wb, int64_t k0, int64_t k1, float* io) {
  __m512 acc[MM][V];
  load_sums(io, acc);
  for (int64_t k = k0; k < k1; ++k) {
    const W* wk = wb + k * NW;  // [64]
    __m512 wv[V];
    for (int j = 0; j < V; ++j) wv[j] = widen16(wk + 16 * j);
    for (int m = 0; m < MM; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m * K + k]);
      for (int j = 0; j < V; ++j) acc[m][j] = _mm512_fmadd_ps(wv[j], xv, acc[m][j]);
    }
  }
  store_sums(io, acc);
}

at::Tensor gemv_f32(const at::Tensor& x, const at::Tensor& w, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "gemv_f32: x and w must be float32");
  check_common(x, w, n, 1, "gemv_f32");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_tiles<6>(
      M, K, w.size(0), sizeof(float),
      [&](auto rows, int64_t m0, int64_t b, int64_t k0, int64_t k1, float* io) {
        fma_tile<decltype(rows)::value>(xp + m0 * K, K, wp + b * K * NW, k0, k1, io);
      },
      [&](int64_t b, const float* acc) { write_block(yp, acc, M, n, b, [](int64_t, int64_t, float s) { return s; }); });
  return y;
}

// ---- bfloat16 ----------------------------------------------------------------------------------
template <int MM>
void bf16_tile(const at::BFloat16* x, int64_t K, const at::BFloat16* wb, int64_t k0, int64_t k1, float* io) {
  __m512 acc[MM][V];
  load_sums(io, acc);
  for (int64_t k = k0; k < k1; k += 2) {
    const at::BFloat16* wk = wb + k * NW;  // [64, 2]
    __m512bh wv[V];
    for (int j = 0; j < V; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(wk + 32 * j);
    for (int m = 0; m < MM; ++m) {
      int32_t pair;  // x[m, k], x[m, k + 1]
      std::memcpy(&pair, x + m * K + k, sizeof(pair));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < V; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], wv[j], xv);
    }
  }
  store_sums(io, acc);
}

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "gemv_bf16: x and w must be bfloat16");
  check_common(x, w, n, 2, "gemv_bf16");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, n}, x.options());
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  for_tiles<6>(
      M, K, w.size(0), sizeof(at::BFloat16),
      [&](auto rows, int64_t m0, int64_t b, int64_t k0, int64_t k1, float* io) {
        bf16_tile<decltype(rows)::value>(xp + m0 * K, K, wp + b * K * NW, k0, k1, io);
      },
      [&](int64_t b, const float* acc) {
        write_block(yp, acc, M, n, b, [](int64_t, int64_t, float s) { return at::BFloat16(s); });  // nearest even
      });
  return y;
}

// ---- int8 weights, int8 activations per group ----------------------------------------------------
// One x row -> xq [K] int8, xs [K/G] scales; returns 128 * sum_g xs[g] * sum(xq in g), or NaN if
// the row holds a NaN or an infinity, so the row's outputs are NaN as a float product's would be.
float quantize_row(const float* x, int64_t K, int8_t* xq, float* xs) {
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  __m512 nonfinite = _mm512_setzero_ps();  // sums x - x: 0 while every x is finite, NaN after
  float correction = 0.f;
  for (int64_t g = 0; g < K / G; ++g) {
    const float* xg = x + g * G;
    __m512 v[4], amax = _mm512_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm512_loadu_ps(xg + 16 * i);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(v[i]));
      nonfinite = _mm512_add_ps(nonfinite, _mm512_sub_ps(v[i], v[i]));
    }
    const float a = _mm512_reduce_max_ps(amax);
    const float s = a > MIN_GROUP_AMAX ? a / 127.f : 1.f;
    const __m512 inv = _mm512_set1_ps(1.f / s);
    __m512i sum = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], inv));  // nearest, ties to even
      q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);  // |q| <= 127 (finite x already is)
      sum = _mm512_add_epi32(sum, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * G + 16 * i), _mm512_cvtepi32_epi8(q));
    }
    xs[g] = s;
    correction += 128.f * static_cast<float>(_mm512_reduce_add_epi32(sum)) * s;
  }
  return std::isfinite(_mm512_reduce_add_ps(nonfinite)) ? correction : std::nanf("");
}

// Groups [k0 / 64, k1 / 64): per group, exact int32 sums of u8 weight x s8 input over its 64 inputs
// (16 instructions of 4 each), then added into the float sums times the group's scale.
template <int MM>
void int8_tile(const int8_t* xq, const float* xs, int64_t K, const uint8_t* wb, int64_t k0, int64_t k1, float* io) {
  const int64_t NG = K / G;
  __m512 acc[MM][V];
  load_sums(io, acc);
  for (int64_t g = k0 / G; g < k1 / G; ++g) {
    __m512i dot[MM][V];
    for (int m = 0; m < MM; ++m)
      for (int j = 0; j < V; ++j) dot[m][j] = _mm512_setzero_si512();
    for (int64_t k = g * G; k < (g + 1) * G; k += 4) {
      const uint8_t* wk = wb + k * NW;  // [64, 4]
      __m512i wv[V];
      for (int j = 0; j < V; ++j) wv[j] = _mm512_loadu_si512(wk + 64 * j);
      for (int m = 0; m < MM; ++m) {
        int32_t quad;  // xq[m, k .. k + 3]
        std::memcpy(&quad, xq + m * K + k, sizeof(quad));
        const __m512i xv = _mm512_set1_epi32(quad);
        for (int j = 0; j < V; ++j) dot[m][j] = _mm512_dpbusd_epi32(dot[m][j], wv[j], xv);
      }
    }
    for (int m = 0; m < MM; ++m) {
      const __m512 s = _mm512_set1_ps(xs[m * NG + g]);
      for (int j = 0; j < V; ++j) acc[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m][j]), s, acc[m][j]);
    }
  }
  store_sums(io, acc);
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gemv_int8: x must be float32");
  TORCH_CHECK(w.scalar_type() == at::kByte, "gemv_int8: w must be uint8 (q + 128)");
  check_common(x, w, n, 4, "gemv_int8");
  TORCH_CHECK(x.size(1) % G == 0, "gemv_int8: K must be a multiple of ", G);
  check_scale(scale, w, "gemv_int8");
  const int64_t M = x.size(0), K = x.size(1), NG = K / G;
  std::vector<int8_t> xq(M * K);
  std::vector<float> xs(M * NG), corr(M);
  const float* xp = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) corr[m] = quantize_row(xp + m * K, K, xq.data() + m * K, xs.data() + m * NG);
  at::Tensor y = at::empty({M, n}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_tiles<3>(
      M, K, w.size(0), 1,
      [&](auto rows, int64_t m0, int64_t b, int64_t k0, int64_t k1, float* io) {
        int8_tile<decltype(rows)::value>(xq.data() + m0 * K, xs.data() + m0 * NG, K, wp + b * K * NW, k0, k1, io);
      },
      [&](int64_t b, const float* acc) {
        write_block(yp, acc, M, n, b, [&](int64_t m, int64_t c, float s) { return (s - corr[m]) * sp[c]; });
      });
  return y;
}

// ---- int8 weights, float32 activations (weight-only int8): fma_tile above ----------------------
at::Tensor gemv_w8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gemv_w8: x must be float32");
  TORCH_CHECK(w.scalar_type() == at::kChar, "gemv_w8: w must be int8");
  check_common(x, w, n, 1, "gemv_w8");
  check_scale(scale, w, "gemv_w8");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_tiles<6>(
      M, K, w.size(0), 1,
      [&](auto rows, int64_t m0, int64_t b, int64_t k0, int64_t k1, float* io) {
        fma_tile<decltype(rows)::value>(xp + m0 * K, K, wp + b * K * NW, k0, k1, io);
      },
      [&](int64_t b, const float* acc) {
        write_block(yp, acc, M, n, b, [&](int64_t, int64_t c, float s) { return s * sp[c]; });
      });
  return y;
}

}  // namespace

TORCH_LIBRARY(csm_cpu, m) {
  m.def("gemv_f32(Tensor x, Tensor w, int n) -> Tensor");
  m.def("gemv_bf16(Tensor x, Tensor w, int n) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor w, Tensor scale, int n) -> Tensor");
  m.def("gemv_w8(Tensor x, Tensor w, Tensor scale, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(csm_cpu, CPU, m) {
  m.impl("gemv_f32", gemv_f32);
  m.impl("gemv_bf16", gemv_bf16);
  m.impl("gemv_int8", gemv_int8);
  m.impl("gemv_w8", gemv_w8);
}
