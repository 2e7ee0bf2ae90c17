// Matrix-vector products for a batch-1 (or few-row) CPU frame step, bound by how fast weights stream
// from memory. Each weight is stored once in a blocked layout, [NB, K / KB, R, KB]: R output rows
// side by side, KB inputs of each, so a thread reads its share as one sequential stream of 64-byte
// lines (the layout oneDNN's prepacked weights and fbgemm's packed ones also aim for; this one is
// simpler and streams faster on the dev machine: `csm-service bench gemv`, docs/benchmarks.md). Rows are padded with zeros to
// a multiple of R; the caller passes the true row count n.
//
// Every x row is computed the same way whatever the number of rows M: blocks are taken in tiles that
// stay in L2 (TILE_BYTES) while every chunk of up to 4 x rows passes over them, so the weights come
// from memory once per call, x from cache once per tile, and a row's result does not depend on
// which other rows share the call (batch-invariant). Many rows (a prefill chunk) make it a plain
// register-blocked matrix product, 4 rows by 4 outputs at a time: slower than oneDNN's there
// (8192 x 2048 bf16 on the dev machine: 0.8 vs 1.2 ms at one row, 14 vs 11 ms at 128 rows, 56 vs
// 40 ms at 512; docs/benchmarks.md).
//
//   csm_cpu::gemv_f32 (x [M, K] f32,  w [NB, K/16, 4, 16] f32, n)          -> [M, n] f32
//   csm_cpu::gemv_bf16(x [M, K] bf16, w [NB, K/32, 4, 32] bf16, n)         -> [M, n] bf16  (AVX512-BF16)
//   csm_cpu::gemv_int8(x [M, K] f32,  w [NB, K/64, 4, 64] u8, scale [NB*4] f32, n) -> [M, n] f32 (VNNI)
//   csm_cpu::gemv_w8  (x [M, K] f32,  w [NB, K/64, 4, 64] s8, scale [NB*4] f32, n) -> [M, n] f32
//
// gemv_w8 is weight-only int8: x stays float32, each weight line is widened to float32 in registers
// (16 at a time) and multiplied in; only the weight is rounded.
//
// gemv_int8: w holds q + 128 for the per-output-channel int8 weight q (w ~ q * scale); x is rounded
// to int8 per group of 64 inputs, each group with its own scale (amax / 127), so one outlier costs
// its own group's precision, not the whole row's. Then
//   y[m, n] = scale[n] * sum_g xs[m, g] * (sum_{k in g} w[n, k] * xq[m, k] - 128 * sum_{k in g} xq[m, k]).
//
// Built at run time by csm_service/model/kernels/build.py with AVX-512 flags; loaded only on a CPU
// that has them.

#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t R = 4;        // output rows per block
constexpr int64_t MAX_MM = 4;   // x rows per pass over a block
constexpr int64_t G = 64;       // int8: inputs per activation scale (one 64-byte line)
constexpr int64_t BLOCK_WORK = 32768;  // weights per task below which a call stays on one thread
constexpr int64_t TILE_BYTES = 256 * 1024;  // weight blocks every x chunk passes over while in L2
constexpr float MIN_GROUP_AMAX = 1e-30f;  // int8: a group this small rounds to zeros (its 1/scale would overflow)

// block(b, m0, mm) for every weight block b and chunk of mm <= 4 x rows from m0, in parallel over blocks.
template <typename F>
void for_blocks(int64_t NB, int64_t M, int64_t K, int64_t block_bytes, const F& block) {
  const int64_t tile = std::max<int64_t>(1, TILE_BYTES / block_bytes);
  const int64_t grain = std::max<int64_t>(1, BLOCK_WORK / (R * K));
  at::parallel_for(0, NB, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t t0 = b0; t0 < b1; t0 += tile) {
      const int64_t t1 = std::min(b1, t0 + tile);
      for (int64_t m0 = 0; m0 < M; m0 += MAX_MM)
        for (int64_t b = t0; b < t1; ++b) block(b, m0, std::min(MAX_MM, M - m0));
    }
  });
}

// f(std::integral_constant<int, mm>) for mm in 1..4: a row chunk's size as a template argument.
template <typename F>
void with_rows(int64_t mm, const F& f) {
  switch (mm) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

void check_common(const at::Tensor& x, const at::Tensor& w, int64_t n, int64_t kb, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), name, ": x must be a contiguous [M, K] matrix");
  TORCH_CHECK(x.size(1) > 0, name, ": x has no columns");
  TORCH_CHECK(w.dim() == 4 && w.is_contiguous(), name, ": w must be a contiguous blocked [NB, K/", kb, ", 4, ", kb, "] weight");
  TORCH_CHECK(w.size(2) == R && w.size(3) == kb, name, ": w's blocks must be [4, ", kb, "]");
  TORCH_CHECK(w.size(1) * kb == x.size(1), name, ": x has ", x.size(1), " columns, w ", w.size(1) * kb);
  TORCH_CHECK(n > 0 && n <= w.size(0) * R && n > (w.size(0) - 1) * R, name, ": n=", n, " does not fit ", w.size(0), " blocks");
}

void check_scale(const at::Tensor& scale, const at::Tensor& w, const char* name) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == w.size(0) * R, name,
              ": scale must be float32 [NB * 4]");
}

// ---- float32 -----------------------------------------------------------------------------------
template <int MM>
void f32_block(const float* x, const float* wb, float* y, int64_t K, int64_t n_out, int64_t row0, int64_t n) {
  __m512 acc[MM][R];
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const float* wk = wb + k * R;  // [R, 16]
    __m512 xv[MM];
    for (int m = 0; m < MM; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      __m512 wv = _mm512_loadu_ps(wk + r * 16);
      for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R && row0 + r < n; ++r) y[m * n_out + row0 + r] = _mm512_reduce_add_ps(acc[m][r]);
}

at::Tensor gemv_f32(const at::Tensor& x, const at::Tensor& w, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "gemv_f32: x and w must be float32");
  check_common(x, w, n, 16, "gemv_f32");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_blocks(w.size(0), M, K, R * K * sizeof(float), [&](int64_t b, int64_t m0, int64_t mm) {
    const float* wb = wp + b * R * K;
    const float* xm = xp + m0 * K;
    float* ym = yp + m0 * n;
    with_rows(mm, [&](auto rows) { f32_block<decltype(rows)::value>(xm, wb, ym, K, n, b * R, n); });
  });
  return y;
}

// ---- bfloat16 ----------------------------------------------------------------------------------
template <int MM>
void bf16_block(const at::BFloat16* x, const at::BFloat16* wb, at::BFloat16* y, int64_t K, int64_t n_out,
                int64_t row0, int64_t n) {
  __m512 acc[MM][R];
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const at::BFloat16* wk = wb + k * R;  // [R, 32]
    __m512bh xv[MM];
    for (int m = 0; m < MM; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      __m512bh wv = (__m512bh)_mm512_loadu_si512(wk + r * 32);
      for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv, xv[m]);
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R && row0 + r < n; ++r)
      y[m * n_out + row0 + r] = at::BFloat16(_mm512_reduce_add_ps(acc[m][r]));  // round to nearest even
}

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "gemv_bf16: x and w must be bfloat16");
  check_common(x, w, n, 32, "gemv_bf16");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, n}, x.options());
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  for_blocks(w.size(0), M, K, R * K * sizeof(at::BFloat16), [&](int64_t b, int64_t m0, int64_t mm) {
    const at::BFloat16* wb = wp + b * R * K;
    const at::BFloat16* xm = xp + m0 * K;
    at::BFloat16* ym = yp + m0 * n;
    with_rows(mm, [&](auto rows) { bf16_block<decltype(rows)::value>(xm, wb, ym, K, n, b * R, n); });
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

template <int MM>
void int8_block(const int8_t* xq, const float* xs, const float* corr, const uint8_t* wb, const float* scale,
                float* y, int64_t K, int64_t n_out, int64_t row0, int64_t n) {
  const int64_t NG = K / G;
  __m512 acc[MM][R];
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < NG; ++g) {
    const uint8_t* wg = wb + g * G * R;  // [R, 64]
    __m512i xv[MM];
    for (int m = 0; m < MM; ++m) xv[m] = _mm512_loadu_si512(xq + m * K + g * G);
    __m512i dot[MM][R];
    for (int r = 0; r < R; ++r) {
      __m512i wv = _mm512_loadu_si512(wg + r * G);
      for (int m = 0; m < MM; ++m) dot[m][r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv[m]);
    }
    for (int m = 0; m < MM; ++m) {
      const __m512 s = _mm512_set1_ps(xs[m * NG + g]);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m][r]), s, acc[m][r]);
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R && row0 + r < n; ++r)
      y[m * n_out + row0 + r] = (_mm512_reduce_add_ps(acc[m][r]) - corr[m]) * scale[row0 + r];
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gemv_int8: x must be float32");
  TORCH_CHECK(w.scalar_type() == at::kByte, "gemv_int8: w must be uint8 (q + 128)");
  check_common(x, w, n, G, "gemv_int8");
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
  for_blocks(w.size(0), M, K, R * K, [&](int64_t b, int64_t m0, int64_t mm) {
    const uint8_t* wb = wp + b * R * K;
    const int8_t* xm = xq.data() + m0 * K;
    const float* sm = xs.data() + m0 * NG;
    const float* cm = corr.data() + m0;
    float* ym = yp + m0 * n;
    with_rows(mm, [&](auto rows) { int8_block<decltype(rows)::value>(xm, sm, cm, wb, sp, ym, K, n, b * R, n); });
  });
  return y;
}

// ---- int8 weights, float32 activations ---------------------------------------------------------
template <int MM>
void w8_block(const float* x, const int8_t* wb, const float* scale, float* y, int64_t K, int64_t n_out,
              int64_t row0, int64_t n) {
  __m512 acc[MM][R];
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += G) {
    const int8_t* wk = wb + k * R;  // [R, 64]
    for (int q = 0; q < 4; ++q) {  // 16 inputs at a time
      __m512 xv[MM];
      for (int m = 0; m < MM; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k + 16 * q);
      for (int r = 0; r < R; ++r) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wk + r * G + 16 * q));
        const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
        for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
      }
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R && row0 + r < n; ++r) y[m * n_out + row0 + r] = _mm512_reduce_add_ps(acc[m][r]) * scale[row0 + r];
}

at::Tensor gemv_w8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gemv_w8: x must be float32");
  TORCH_CHECK(w.scalar_type() == at::kChar, "gemv_w8: w must be int8");
  check_common(x, w, n, G, "gemv_w8");
  check_scale(scale, w, "gemv_w8");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor y = at::empty({M, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_blocks(w.size(0), M, K, R * K, [&](int64_t b, int64_t m0, int64_t mm) {
    const int8_t* wb = wp + b * R * K;
    const float* xm = xp + m0 * K;
    float* ym = yp + m0 * n;
    with_rows(mm, [&](auto rows) { w8_block<decltype(rows)::value>(xm, wb, sp, ym, K, n, b * R, n); });
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
