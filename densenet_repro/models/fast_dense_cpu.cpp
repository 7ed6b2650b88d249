// CPU kernels of the fast dense block: affine_relu, relu_bwd, col_stats, lincomb (and has_avx512).
// What each computes, the tensor layout they expect and how the module is built and loaded:
// fast_dense_cpu.py, which compiles this file with torch.utils.cpp_extension.load on first use.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>
#include <vector>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define FD_AVX512 1
#endif

namespace {

// ---- scalar float <-> storage conversions (bf16: round to nearest even, as c10::BFloat16) ----
inline float bf2f(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline uint16_t f2bf(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
template <typename T> struct IO;
template <> struct IO<float> {
  static inline float ld(const float* p) { return *p; }
  static inline void st(float* p, float v) { *p = v; }
};
template <> struct IO<uint16_t> {
  static inline float ld(const uint16_t* p) { return bf2f(*p); }
  static inline void st(uint16_t* p, float v) { *p = f2bf(v); }
};

#ifdef FD_AVX512
// ---- 16 float lanes at a time, masked tails (a row of 12 channels is one masked vector) ----
inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
// Runs body(j, mask) over 16-channel chunks: full chunks with a compile-time all-ones mask (plain
// loads and stores: masked stores are slow on some CPUs), then one masked tail chunk.
#define FD_CHUNKS(c, body) do { \
    int64_t j_ = 0; \
    for (; j_ + 16 <= (c); j_ += 16) { const int64_t j = j_; const __mmask16 m = 0xFFFF; body } \
    if (j_ < (c)) { const int64_t j = j_; const __mmask16 m = lanes((c) - j_); body } \
  } while (0)
template <typename T> struct VIO;
inline __m512 vf_(const float* p, __mmask16 m) { return m == 0xFFFF ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p); }
// Tail stores of the first t < 16 lanes as 32/16/8/4-byte plain stores: masked stores are slow on
// some CPUs (AMD Zen 4/5), and a 12-channel row is all tail.
inline void sf_tail(float* p, __m512 v, int t) {
  __m256 a = _mm512_castps512_ps256(v);
  if (t & 8) { _mm256_storeu_ps(p, a); a = _mm512_extractf32x8_ps(v, 1); p += 8; }
  __m128 b = _mm256_castps256_ps128(a);
  if (t & 4) { _mm_storeu_ps(p, b); b = _mm256_extractf128_ps(a, 1); p += 4; }
  if (t & 2) { _mm_storel_pi(reinterpret_cast<__m64*>(p), b); b = _mm_movehl_ps(b, b); p += 2; }
  if (t & 1) _mm_store_ss(p, b);
}
inline void sf_(float* p, __m512 v, __mmask16 m) {
  if (m == 0xFFFF) _mm512_storeu_ps(p, v); else sf_tail(p, v, _mm_popcnt_u32(m));
}
inline void sh_tail(uint16_t* p, __m256i h, int t) {
  __m128i a = _mm256_castsi256_si128(h);
  if (t & 8) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), a); a = _mm256_extracti128_si256(h, 1); p += 8; }
  if (t & 4) { _mm_storel_epi64(reinterpret_cast<__m128i*>(p), a); a = _mm_srli_si128(a, 8); p += 4; }
  if (t & 2) { int32_t v = _mm_cvtsi128_si32(a); std::memcpy(p, &v, 4); a = _mm_srli_si128(a, 4); p += 2; }
  if (t & 1) { uint16_t v = uint16_t(_mm_cvtsi128_si32(a)); std::memcpy(p, &v, 2); }
}
template <> struct VIO<float> {
  static inline __m512 ld(const float* p, __mmask16 m) { return vf_(p, m); }
  static inline void st(float* p, __m512 v, __mmask16 m) { sf_(p, v, m); }
};
template <> struct VIO<uint16_t> {
  static inline __m512 ld(const uint16_t* p, __mmask16 m) {
    __m256i h = m == 0xFFFF ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static inline void st(uint16_t* p, __m512 v, __mmask16 m) {
    __m256bh h = _mm512_cvtneps_pbh(v);  // round to nearest even
    __m256i hi; std::memcpy(&hi, &h, sizeof(hi));
    if (m == 0xFFFF) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), hi); else sh_tail(p, hi, _mm_popcnt_u32(m));
  }
};
inline __m512 vf(const float* p, __mmask16 m) { return vf_(p, m); }
#endif

constexpr int64_t ROW_GRAIN = 256;   // rows per parallel task
constexpr int64_t ROW_BLOCK = 256;   // rows summed in float before adding into double

void check2d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, name, ": expected a 2-D view with contiguous channels");
}

// ---------------------------------- one row of each kernel ----------------------------------

template <typename T>
void affine_relu_row(const T* __restrict__ x, T* __restrict__ z, int64_t c,
                     const float* __restrict__ sc, const float* __restrict__ sh) {
#ifdef FD_AVX512
  const __m512 zero = _mm512_setzero_ps();
  FD_CHUNKS(c, {
    __m512 u = _mm512_fmadd_ps(VIO<T>::ld(x + j, m), vf(sc + j, m), vf(sh + j, m));
    VIO<T>::st(z + j, _mm512_max_ps(u, zero), m);
  });
#else
  for (int64_t j = 0; j < c; ++j) {
    float u = IO<T>::ld(x + j) * sc[j] + sh[j];
    IO<T>::st(z + j, u > 0.f ? u : 0.f);
  }
#endif
}

template <typename T>
void relu_bwd_row(const T* __restrict__ dz, const T* __restrict__ x, T* __restrict__ d, bool acc_d,
                  int64_t c, const float* __restrict__ sc, const float* __restrict__ sh,
                  const float* __restrict__ mu, const float* __restrict__ ga,
                  float* __restrict__ ady, float* __restrict__ adyx) {
#ifdef FD_AVX512
  const __m512 zero = _mm512_setzero_ps();
  FD_CHUNKS(c, {
    __m512 xv = VIO<T>::ld(x + j, m);
    __m512 u = _mm512_fmadd_ps(xv, vf(sc + j, m), vf(sh + j, m));
    __mmask16 pos = _mm512_mask_cmp_ps_mask(m, u, zero, _CMP_GT_OQ);
    __m512 dy = _mm512_maskz_mov_ps(pos, VIO<T>::ld(dz + j, m));
    __m512 gdy = _mm512_mul_ps(vf(ga + j, m), dy);
    VIO<T>::st(d + j, acc_d ? _mm512_add_ps(VIO<T>::ld(d + j, m), gdy) : gdy, m);
    sf_(ady + j, _mm512_add_ps(vf(ady + j, m), dy), m);
    sf_(adyx + j, _mm512_fmadd_ps(dy, _mm512_sub_ps(xv, vf(mu + j, m)), vf(adyx + j, m)), m);
  });
#else
  for (int64_t j = 0; j < c; ++j) {
    float xv = IO<T>::ld(x + j);
    float u = xv * sc[j] + sh[j];
    float dy = u > 0.f ? IO<T>::ld(dz + j) : 0.f;
    float gdy = ga[j] * dy;
    IO<T>::st(d + j, acc_d ? IO<T>::ld(d + j) + gdy : gdy);
    ady[j] += dy;
    adyx[j] += dy * (xv - mu[j]);
  }
#endif
}

template <typename T>
void stats_row(const T* __restrict__ y, int64_t c, const float* __restrict__ centre,
               float* __restrict__ a1, float* __restrict__ a2) {
  // a1 += y - centre, a2 += (y - centre)^2
#ifdef FD_AVX512
  FD_CHUNKS(c, {
    __m512 v = _mm512_sub_ps(VIO<T>::ld(y + j, m), vf(centre + j, m));
    sf_(a1 + j, _mm512_add_ps(vf(a1 + j, m), v), m);
    sf_(a2 + j, _mm512_fmadd_ps(v, v, vf(a2 + j, m)), m);
  });
#else
  for (int64_t j = 0; j < c; ++j) { float v = IO<T>::ld(y + j) - centre[j]; a1[j] += v; a2[j] += v * v; }
#endif
}

template <typename T>
void lincomb_row(const T* __restrict__ g, const T* __restrict__ d, const T* __restrict__ x,
                 T* __restrict__ o, int64_t c, const float* __restrict__ a, const float* __restrict__ b,
                 const float* __restrict__ cc) {
  // o = g + a*d + b*x + cc  (g may be null: 0)
#ifdef FD_AVX512
  FD_CHUNKS(c, {
    __m512 v = _mm512_fmadd_ps(vf(b + j, m), VIO<T>::ld(x + j, m), vf(cc + j, m));
    v = _mm512_fmadd_ps(vf(a + j, m), VIO<T>::ld(d + j, m), v);
    if (g) v = _mm512_add_ps(VIO<T>::ld(g + j, m), v);
    VIO<T>::st(o + j, v, m);
  });
#else
  for (int64_t j = 0; j < c; ++j)
    IO<T>::st(o + j, (g ? IO<T>::ld(g + j) : 0.f) + a[j] * IO<T>::ld(d + j) + b[j] * IO<T>::ld(x + j) + cc[j]);
#endif
}

// ------------------------------------- whole kernels ---------------------------------------

// Per-channel sums of f(row) over all rows: float within blocks of ROW_BLOCK rows, double across.
template <typename RowFn>
void reduce_rows(int64_t rows, int64_t c, int nacc, RowFn row_fn, std::vector<double>& out) {
  int nt = at::get_num_threads();
  std::vector<double> part(size_t(nt) * nacc * c, 0.0);
  at::parallel_for(0, rows, ROW_GRAIN, [&](int64_t r0, int64_t r1) {
    double* p = part.data() + size_t(at::get_thread_num()) * nacc * c;
    std::vector<float> acc(size_t(nacc) * c);
    for (int64_t b0 = r0; b0 < r1; b0 += ROW_BLOCK) {
      int64_t b1 = std::min(r1, b0 + ROW_BLOCK);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t r = b0; r < b1; ++r) row_fn(r, acc.data());
      for (int64_t j = 0; j < nacc * c; ++j) p[j] += acc[j];
    }
  });
  out.assign(size_t(nacc) * c, 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t j = 0; j < nacc * c; ++j) out[j] += part[size_t(t) * nacc * c + j];
}

#ifdef FD_AVX512
// col_stats pass for c <= 16*NV channels: (sum (y - centre), sum (y - centre)^2) -> out[0:c], out[c:2c]
template <typename T, int NV>
void stats_regs(const T* y, int64_t ly, int64_t rows, int64_t c, const float* centre, std::vector<double>& out) {
  float cpad[64] = {0};
  std::copy(centre, centre + c, cpad);
  __mmask16 mk[NV];
  for (int v = 0; v < NV; ++v) mk[v] = lanes(c - 16 * v);
  int nt = at::get_num_threads();
  std::vector<double> part(size_t(nt) * 2 * 16 * NV, 0.0);
  at::parallel_for(0, rows, ROW_BLOCK, [&](int64_t r0, int64_t r1) {
    double* p = part.data() + size_t(at::get_thread_num()) * 2 * 16 * NV;
    __m512 cv[NV];
    for (int v = 0; v < NV; ++v) cv[v] = _mm512_loadu_ps(cpad + 16 * v);
    for (int64_t b0 = r0; b0 < r1; b0 += ROW_BLOCK) {
      int64_t b1 = std::min(r1, b0 + ROW_BLOCK);
      __m512 a1[NV], a2[NV];
      for (int v = 0; v < NV; ++v) { a1[v] = _mm512_setzero_ps(); a2[v] = _mm512_setzero_ps(); }
      for (int64_t r = b0; r < b1; ++r) {
        const T* yr = y + r * ly;
        for (int v = 0; v < NV; ++v) {
          __m512 x = _mm512_maskz_sub_ps(mk[v], VIO<T>::ld(yr + 16 * v, mk[v]), cv[v]);
          a1[v] = _mm512_add_ps(a1[v], x); a2[v] = _mm512_fmadd_ps(x, x, a2[v]);
        }
      }
      float t1[16 * NV], t2[16 * NV];
      for (int v = 0; v < NV; ++v) { _mm512_storeu_ps(t1 + 16 * v, a1[v]); _mm512_storeu_ps(t2 + 16 * v, a2[v]); }
      for (int j = 0; j < 16 * NV; ++j) { p[j] += t1[j]; p[16 * NV + j] += t2[j]; }
    }
  });
  out.assign(2 * size_t(c), 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t j = 0; j < c; ++j) {
      out[j] += part[size_t(t) * 2 * 16 * NV + j];
      out[c + j] += part[size_t(t) * 2 * 16 * NV + 16 * NV + j];
    }
}
#endif

template <typename F>
void dispatch(const at::Tensor& t, F f) {
  if (t.scalar_type() == at::kFloat) f(float(0));
  else if (t.scalar_type() == at::kBFloat16) f(uint16_t(0));
  else TORCH_CHECK(false, "fast dense block kernels support float32 and bfloat16, got ", t.scalar_type());
}
template <typename T> T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }
const float* fptr(const at::Tensor& t, int64_t c) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == c,
              "per-channel vectors must be contiguous float32 of length ", c);
  return t.data_ptr<float>();
}
at::Tensor dvec(const std::vector<double>& v, int64_t off, int64_t c) {
  auto t = at::empty({c}, at::TensorOptions().dtype(at::kDouble));
  std::memcpy(t.data_ptr<double>(), v.data() + off, sizeof(double) * c);
  return t;
}

}  // namespace

// z = max(0, x * scale + shift)
void affine_relu(at::Tensor x, at::Tensor z, at::Tensor scale, at::Tensor shift) {
  check2d(x, "x"); check2d(z, "z");
  TORCH_CHECK(x.sizes() == z.sizes() && x.scalar_type() == z.scalar_type(), "affine_relu: x and z differ");
  int64_t c = x.size(1);
  const float* sc = fptr(scale, c); const float* sh = fptr(shift, c);
  dispatch(x, [&](auto tag) { using T = decltype(tag);
    const T* xp = ptr<T>(x); T* zp = ptr<T>(z); int64_t lx = x.stride(0), lz = z.stride(0);
    at::parallel_for(0, x.size(0), ROW_GRAIN, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) affine_relu_row<T>(xp + r * lx, zp + r * lz, c, sc, sh);
    });
  });
}

// dy = dz * [x * scale + shift > 0];  d = (accumulate ? d : 0) + gamma * dy;
// returns (sum dy, sum dy * (x - mean)) in double
std::vector<at::Tensor> relu_bwd(at::Tensor dz, at::Tensor x, at::Tensor d, at::Tensor scale, at::Tensor shift,
                                 at::Tensor mean, at::Tensor gamma, bool accumulate) {
  check2d(dz, "dz"); check2d(x, "x"); check2d(d, "d");
  TORCH_CHECK(dz.sizes() == x.sizes() && d.sizes() == x.sizes(), "relu_bwd: shapes differ");
  TORCH_CHECK(dz.scalar_type() == x.scalar_type() && d.scalar_type() == x.scalar_type(), "relu_bwd: dtypes differ");
  int64_t c = x.size(1);
  const float* sc = fptr(scale, c); const float* sh = fptr(shift, c);
  const float* mu = fptr(mean, c); const float* ga = fptr(gamma, c);
  std::vector<double> sums;
  dispatch(x, [&](auto tag) { using T = decltype(tag);
    const T* dzp = ptr<T>(dz); const T* xp = ptr<T>(x); T* dp = ptr<T>(d);
    int64_t ldz = dz.stride(0), lx = x.stride(0), ld = d.stride(0);
    reduce_rows(x.size(0), c, 2, [&](int64_t r, float* acc) {
      relu_bwd_row<T>(dzp + r * ldz, xp + r * lx, dp + r * ld, accumulate, c, sc, sh, mu, ga, acc, acc + c);
    }, sums);
  });
  return {dvec(sums, 0, c), dvec(sums, c, c)};
}

// per-channel mean and biased variance, two passes (the second centred on the first's mean)
std::vector<at::Tensor> col_stats(at::Tensor y) {
  check2d(y, "y");
  int64_t c = y.size(1), rows = y.size(0);
  std::vector<float> centre(c, 0.f);
  std::vector<double> s1, s2;
  dispatch(y, [&](auto tag) { using T = decltype(tag);
    const T* yp = ptr<T>(y); int64_t ly = y.stride(0);
    auto pass = [&](std::vector<double>& out) {
#ifdef FD_AVX512
      if (c <= 64) {  // up to 4 vectors of channels: accumulate in registers over a block of rows
        switch ((c + 15) / 16) {
          case 1: stats_regs<T, 1>(yp, ly, rows, c, centre.data(), out); return;
          case 2: stats_regs<T, 2>(yp, ly, rows, c, centre.data(), out); return;
          case 3: stats_regs<T, 3>(yp, ly, rows, c, centre.data(), out); return;
          default: stats_regs<T, 4>(yp, ly, rows, c, centre.data(), out); return;
        }
      }
#endif
      reduce_rows(rows, c, 2, [&](int64_t r, float* acc) { stats_row<T>(yp + r * ly, c, centre.data(), acc, acc + c); }, out);
    };
    pass(s1);
    for (int64_t j = 0; j < c; ++j) centre[j] = float(s1[j] / double(rows));
    pass(s2);
  });
  auto mean = at::empty({c}, at::TensorOptions().dtype(at::kDouble));
  auto var = at::empty({c}, at::TensorOptions().dtype(at::kDouble));
  for (int64_t j = 0; j < c; ++j) {
    double dm = s2[j] / double(rows);  // mean of (y - centre)
    mean.data_ptr<double>()[j] = double(centre[j]) + dm;
    var.data_ptr<double>()[j] = std::max(0.0, s2[c + j] / double(rows) - dm * dm);
  }
  return {mean, var};
}

// out = g + a * d + b * x + c   (g may be None)
void lincomb(c10::optional<at::Tensor> g, at::Tensor d, at::Tensor x, at::Tensor out, at::Tensor a, at::Tensor b, at::Tensor cc) {
  check2d(d, "d"); check2d(x, "x"); check2d(out, "out");
  if (g) { check2d(*g, "g"); TORCH_CHECK(g->sizes() == x.sizes() && g->scalar_type() == x.scalar_type(), "lincomb: g differs"); }
  TORCH_CHECK(d.sizes() == x.sizes() && out.sizes() == x.sizes(), "lincomb: shapes differ");
  TORCH_CHECK(d.scalar_type() == x.scalar_type() && out.scalar_type() == x.scalar_type(), "lincomb: dtypes differ");
  int64_t c = x.size(1);
  const float* ap = fptr(a, c); const float* bp = fptr(b, c); const float* cp = fptr(cc, c);
  dispatch(x, [&](auto tag) { using T = decltype(tag);
    const T* gp = g ? ptr<T>(*g) : nullptr; int64_t lg = g ? g->stride(0) : 0;
    const T* dp = ptr<T>(d); const T* xp = ptr<T>(x); T* op = ptr<T>(out);
    int64_t ld = d.stride(0), lx = x.stride(0), lo = out.stride(0);
    at::parallel_for(0, x.size(0), ROW_GRAIN, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        lincomb_row<T>(gp ? gp + r * lg : nullptr, dp + r * ld, xp + r * lx, op + r * lo, c, ap, bp, cp);
    });
  });
}

bool has_avx512() {
#ifdef FD_AVX512
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // wrap_pybind_function: C++ exceptions (TORCH_CHECK) reach Python as torch's error types
  m.def("affine_relu", torch::wrap_pybind_function(affine_relu), "affine_relu");
  m.def("relu_bwd", torch::wrap_pybind_function(relu_bwd), "relu_bwd");
  m.def("col_stats", torch::wrap_pybind_function(col_stats), "col_stats");
  m.def("lincomb", torch::wrap_pybind_function(lincomb), "lincomb");
  m.def("has_avx512", torch::wrap_pybind_function(has_avx512), "has_avx512");
}
