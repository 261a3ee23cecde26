/* Weight-only quantised linear layers for CPU: out[M, N] = x[M, K] @ dequant(W)[N, K]^T (+ bias).
   quant_linear.py compiles this file once and loads it with ctypes.

   Weights stay quantised in memory; each tile of weight rows is dequantised in registers and
   used for several rows of x at once, so decode (M small) reads 1 (int8) or 1/2 (int4) byte per
   weight instead of 2 or 4. x and out are float32 (the caller converts other dtypes).

   int8: w [N, K] int8; w = q * scale[n, k / G].
   int4: w [N, K / 2] uint8 in blocks of 32 weights (GGUF Q4_0/Q4_1 nibble order: byte b of a
         block holds weight b in its low nibble and weight b + 16 in its high one);
         w = q * scale[n, k / G] + min[n, k / G], q in 0..15.
   Scales and mins are float16; G is the group size (K for one scale per output channel). */

#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));

#define NB 2 /* weight rows per tile */
#define MB 4 /* x rows per tile; NB * MB accumulators stay in registers (16 with AVX2) */

static inline v8f ld(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline v8f splat(float f) { return (v8f){f, f, f, f, f, f, f, f}; }
static inline float hsum(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
#ifdef __AVX2__
#include <immintrin.h>
/* GCC scalarises __builtin_convertvector from 8 bytes; the AVX2 widening loads are one op. */
static inline v8f i8f(const int8_t *p) {
    return (v8f)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline v8f nib_lo(const uint8_t *p) {
    const __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return (v8f)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(15))));
}
static inline v8f nib_hi(const uint8_t *p) {
    const __m128i b = _mm_srli_epi16(_mm_loadl_epi64((const __m128i *)p), 4);
    return (v8f)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(15))));
}
#else
static inline v8f i8f(const int8_t *p) {
    v8f v;
    for (int i = 0; i < 8; i++) v[i] = (float)p[i];
    return v;
}
static inline v8f nib_lo(const uint8_t *p) {
    v8f v;
    for (int i = 0; i < 8; i++) v[i] = (float)(p[i] & 15);
    return v;
}
static inline v8f nib_hi(const uint8_t *p) {
    v8f v;
    for (int i = 0; i < 8; i++) v[i] = (float)(p[i] >> 4);
    return v;
}
#endif

/* acc[i][j] += x[m0 + i, k0 : k0 + 8] * w[j] for the tile's rows. */
#define FMA_ROWS(w, koff)                                                              \
    for (int i = 0; i < mb; i++) {                                                     \
        const v8f xv = ld(x + (m0 + i) * K + (koff));                                  \
        for (int j = 0; j < nb; j++) acc[i][j] += xv * (w)[j];                         \
    }

static inline __attribute__((always_inline)) void tile_i8(
    const float *x, const int8_t *w, const _Float16 *scales, const float *bias, float *out,
    int64_t m0, int mb, int64_t n0, int nb, int64_t N, int64_t K, int64_t G) {
    v8f acc[MB][NB];
    for (int i = 0; i < mb; i++) for (int j = 0; j < nb; j++) acc[i][j] = splat(0.0f);
    const int64_t groups = K / G;
    for (int64_t g = 0; g < groups; g++) {
        v8f s[NB];
        for (int j = 0; j < nb; j++) s[j] = splat((float)scales[(n0 + j) * groups + g]);
        for (int64_t k = g * G; k < (g + 1) * G; k += 8) {
            v8f wv[NB];
            for (int j = 0; j < nb; j++) wv[j] = i8f(w + (n0 + j) * K + k) * s[j];
            FMA_ROWS(wv, k)
        }
    }
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++)
            out[(m0 + i) * N + n0 + j] = hsum(acc[i][j]) + (bias ? bias[n0 + j] : 0.0f);
}

static inline __attribute__((always_inline)) void tile_i4(
    const float *x, const uint8_t *w, const _Float16 *scales, const _Float16 *mins, const float *bias,
    float *out, int64_t m0, int mb, int64_t n0, int nb, int64_t N, int64_t K, int64_t G) {
    v8f acc[MB][NB];
    for (int i = 0; i < mb; i++) for (int j = 0; j < nb; j++) acc[i][j] = splat(0.0f);
    const int64_t groups = K / G;
    for (int64_t g = 0; g < groups; g++) {
        v8f s[NB], z[NB];
        for (int j = 0; j < nb; j++) {
            s[j] = splat((float)scales[(n0 + j) * groups + g]);
            z[j] = splat((float)mins[(n0 + j) * groups + g]);
        }
        for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
            for (int half = 0; half < 2; half++) { /* bytes 0-7: weights 0-7 and 16-23; 8-15: 8-15, 24-31 */
                const uint8_t *p = w + (n0 * K + k) / 2 + half * 8;
                v8f wv[NB];
                for (int j = 0; j < nb; j++) wv[j] = nib_lo(p + j * K / 2) * s[j] + z[j];
                FMA_ROWS(wv, k + half * 8)
                for (int j = 0; j < nb; j++) wv[j] = nib_hi(p + j * K / 2) * s[j] + z[j];
                FMA_ROWS(wv, k + 16 + half * 8)
            }
        }
    }
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++)
            out[(m0 + i) * N + n0 + j] = hsum(acc[i][j]) + (bias ? bias[n0 + j] : 0.0f);
}

/* The tile loops: weight-row tiles are shared out over threads; each thread streams its rows
   once and reuses them from L1 for every MB-row slice of x. Full tiles get constant sizes so
   the compiler keeps the accumulators in registers. */
#define TILES(CALL)                                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                \
    for (int64_t n0 = 0; n0 < N; n0 += NB) {                                           \
        const int nb = N - n0 >= NB ? NB : (int)(N - n0);                             \
        int64_t m0 = 0;                                                                \
        if (nb == NB) {                                                                \
            for (; m0 + MB <= M; m0 += MB) CALL(m0, MB, n0, NB);                       \
            for (; m0 < M; m0++) CALL(m0, 1, n0, NB);                                  \
        } else {                                                                       \
            for (; m0 < M; m0++) CALL(m0, 1, n0, 1);                                   \
        }                                                                              \
    }

void linear_int8(const float *x, const int8_t *w, const _Float16 *scales, const float *bias, float *out,
                 int64_t M, int64_t N, int64_t K, int64_t G, int nthreads) {
#define CALL_I8(m0, mb, n0, nb) tile_i8(x, w, scales, bias, out, m0, mb, n0, nb, N, K, G)
    TILES(CALL_I8)
}

void linear_int4(const float *x, const uint8_t *w, const _Float16 *scales, const _Float16 *mins,
                 const float *bias, float *out, int64_t M, int64_t N, int64_t K, int64_t G, int nthreads) {
#define CALL_I4(m0, mb, n0, nb) tile_i4(x, w, scales, mins, bias, out, m0, mb, n0, nb, N, K, G)
    TILES(CALL_I4)
}

/* Dequantise rows [n0, n1) of W into float32 out [n1 - n0, K] (for large M, where a float
   matmul on the dequantised weight beats the tiles). */
void dequant_int8(const int8_t *w, const _Float16 *scales, float *out, int64_t n0, int64_t n1, int64_t K,
                  int64_t G, int nthreads) {
    const int64_t groups = K / G;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t n = n0; n < n1; n++)
        for (int64_t g = 0; g < groups; g++) {
            const v8f s = splat((float)scales[n * groups + g]);
            for (int64_t k = g * G; k < (g + 1) * G; k += 8) {
                const v8f v = i8f(w + n * K + k) * s;
                memcpy(out + (n - n0) * K + k, &v, sizeof v);
            }
        }
}

void dequant_int4(const uint8_t *w, const _Float16 *scales, const _Float16 *mins, float *out, int64_t n0,
                  int64_t n1, int64_t K, int64_t G, int nthreads) {
    const int64_t groups = K / G;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t n = n0; n < n1; n++)
        for (int64_t k = 0; k < K; k += 32) {
            const v8f s = splat((float)scales[n * groups + k / G]), z = splat((float)mins[n * groups + k / G]);
            float *o = out + (n - n0) * K + k;
            for (int half = 0; half < 2; half++) {
                const uint8_t *p = w + (n * K + k) / 2 + half * 8;
                const v8f lo = nib_lo(p) * s + z, hi = nib_hi(p) * s + z;
                memcpy(o + half * 8, &lo, sizeof lo);
                memcpy(o + 16 + half * 8, &hi, sizeof hi);
            }
        }
}
