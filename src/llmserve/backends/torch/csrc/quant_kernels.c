/* Weight-only quantised linear layers for CPU: out[M, N] = x[M, K] @ dequant(W)[N, K]^T (+ bias).
   quant_linear.py compiles this file once and loads it with ctypes.

   Weights stay quantised in memory; each tile of weight rows is dequantised in registers and
   used for several rows of x at once, so decode (M small) reads 1 (int8) or 1/2 (int4) byte per
   weight instead of 2 or 4. x and out are float32 (the caller converts other dtypes). At the
   end, the GEMVs of decode_step.py for plain float32 and bf16 weights.

   int8: w [N, K] int8; w = q * scale[n, k / G].
   int4: w [N, K / 2] uint8 in blocks of 32 weights (GGUF Q4_0/Q4_1 nibble order: byte b of a
         block holds weight b in its low nibble and weight b + 16 in its high one);
         w = q * scale[n, k / G] + min[n, k / G], q in 0..15.
   Scales and mins are float16; G is the group size (K for one scale per output channel). */

#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));

#define NB 2 /* weight rows per tile */
#ifndef PREFETCH
/* Bytes ahead in the weights to prefetch: with the hardware prefetcher alone the decode-sized
   kernels read 15-35% slower (two threads, SmolLM2's shapes). */
#define PREFETCH 24576
#endif
#define MB 4 /* x rows per tile (TILES takes the last 1-3 in one); NB * MB accumulators in registers */

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
            /* the rest in one tile as well: each weight tile is widened once */       \
            if (M - m0 == 3) CALL(m0, 3, n0, NB);                                      \
            else if (M - m0 == 2) CALL(m0, 2, n0, NB);                                 \
            else if (M - m0 == 1) CALL(m0, 1, n0, NB);                                 \
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

/* ---- Integer dot products: x quantised to int8 per 32 inputs (llama.cpp's Q8_0 activations).

   For decode-sized M the float kernels above spend their time widening weights to floats. Here
   each 32-input block of a row of x becomes 32 int8 codes and a float scale dx (its max |x| over
   127), and a block's dot product with 32 weight codes is one multiply-add of bytes
   (AVX2 vpmaddubsw + vpmaddwd, integer sums of 16-bit pairs that cannot overflow here) and one
   FMA by scale[n] * dx. int4's minimum term uses the sum of the same quantised x, so the
   result is exactly the dot product of the weights with the quantised x (llama.cpp's Q8_1):
     out[m, n] = sum_blocks scale * dx * sum(qw * qx) + sum_groups min * sum(dx * qx).
   Needs K and G multiples of 32. */

#include <math.h>
#include <stdlib.h>

typedef struct {
    int8_t *q;    /* [M, K] */
    float *d;     /* [M, K / 32] scale of each block */
    float *gsum;  /* [M, K / G] sum of the quantised x over each weight group (int4 minimums) */
} XQ;

static int quantize_x(const float *x, int64_t M, int64_t K, int64_t G, XQ *xq) {
    const int64_t blocks = K / 32, groups = K / G;
    xq->q = malloc((size_t)(M * K));
    xq->d = malloc(sizeof(float) * (size_t)(M * blocks));
    xq->gsum = malloc(sizeof(float) * (size_t)(M * groups));
    if (!xq->q || !xq->d || !xq->gsum) return 0;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t g = 0; g < groups; g++) xq->gsum[m * groups + g] = 0.0f;
        for (int64_t b = 0; b < blocks; b++) {
            const float *xb = x + m * K + b * 32;
            float amax = 0.0f;
            for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(xb[k]));
            const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
            int8_t *qb = xq->q + m * K + b * 32;
            int sum = 0;
            for (int k = 0; k < 32; k++) sum += qb[k] = (int8_t)lrintf(xb[k] * id);
            xq->d[m * blocks + b] = d;
            xq->gsum[m * groups + b * 32 / G] += d * (float)sum;
        }
    }
    return 1;
}

static void free_x(XQ *xq) {
    free(xq->q);
    free(xq->d);
    free(xq->gsum);
}

#ifdef __AVX2__
typedef __m256 vacc;
static inline vacc acc_zero(void) { return _mm256_setzero_ps(); }
static inline float acc_sum(vacc v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
typedef __m256i vblk;
static inline vblk blk_i8(const int8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vblk blk_i4(const uint8_t *p) { /* weights 0-15 (low nibbles), 16-31 (high) */
    const __m128i b = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}
/* acc += (sum of u8 w * s8 x over the block) * s */
static inline vacc dot_u8(vacc acc, vblk w, vblk x, float s) {
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
    /* VNNI: the four u8 * s8 products of each lane summed into int32 in one instruction */
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
#else
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc);
}
static inline vacc dot_s8(vacc acc, vblk w, vblk x, float s) { /* signed w: |w| * (x * sign w) */
    return dot_u8(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w), s);
}
#else
typedef float vacc;
static inline vacc acc_zero(void) { return 0.0f; }
static inline float acc_sum(vacc v) { return v; }
typedef struct { int v[32]; } vblk;
static inline vblk blk_i8(const int8_t *p) {
    vblk b;
    for (int k = 0; k < 32; k++) b.v[k] = p[k];
    return b;
}
static inline vblk blk_i4(const uint8_t *p) {
    vblk b;
    for (int k = 0; k < 16; k++) {
        b.v[k] = p[k] & 15;
        b.v[k + 16] = p[k] >> 4;
    }
    return b;
}
static inline vacc dot_u8(vacc acc, vblk w, vblk x, float s) {
    int sum = 0;
    for (int k = 0; k < 32; k++) sum += w.v[k] * x.v[k];
    return acc + (float)sum * s;
}
static inline vacc dot_s8(vacc acc, vblk w, vblk x, float s) { return dot_u8(acc, w, x, s); }
#endif

/* int4's minimum term of one output: sum over groups of min * (sum of the quantised x), eight
   groups at a time (one scalar chain of adds was a fifth of the kernel's time at one row). */
static inline float min_term(const _Float16 *mins, const float *gsum, int64_t groups) {
    v8f acc = splat(0.0f);
    int64_t g = 0;
    for (; g + 8 <= groups; g += 8) {
        v8f m;
        for (int k = 0; k < 8; k++) m[k] = (float)mins[g + k];
        acc += m * ld(gsum + g);
    }
    float r = hsum(acc);
    for (; g < groups; g++) r += (float)mins[g] * gsum[g];
    return r;
}

/* One tile: weight rows n0 .. n0 + nb, x rows m0 .. m0 + mb. BITS 8: w int8 [N, K];
   BITS 4: w packed [N, K / 2], 16 bytes a block. */
#define QTILE(NAME, WTYPE, BLK, DOT, WSTRIDE, BSTRIDE)                                          \
    static inline __attribute__((always_inline)) void NAME(                                    \
        const XQ *xq, const WTYPE *w, const _Float16 *scales, const _Float16 *mins,            \
        const float *bias, float *out, int64_t m0, int mb, int64_t n0, int nb, int64_t N,      \
        int64_t K, int64_t G) {                                                                \
        vacc acc[MB][NB];                                                                      \
        for (int i = 0; i < mb; i++) for (int j = 0; j < nb; j++) acc[i][j] = acc_zero();      \
        const int64_t blocks = K / 32, groups = K / G;                                         \
        for (int64_t b = 0; b < blocks; b++) {                                                 \
            vblk wv[NB];                                                                       \
            float s[NB];                                                                       \
            for (int j = 0; j < nb; j++) {                                                     \
                wv[j] = BLK(w + (n0 + j) * (WSTRIDE) + b * (BSTRIDE));                         \
                __builtin_prefetch((const char *)(w + (n0 + j) * (WSTRIDE) + b * (BSTRIDE)) + PREFETCH); \
                s[j] = (float)scales[(n0 + j) * groups + b * 32 / G];                          \
            }                                                                                  \
            for (int i = 0; i < mb; i++) {                                                     \
                const vblk xv = blk_i8(xq->q + (m0 + i) * K + b * 32);                         \
                const float d = xq->d[(m0 + i) * blocks + b];                                  \
                for (int j = 0; j < nb; j++) acc[i][j] = DOT(acc[i][j], wv[j], xv, s[j] * d);  \
            }                                                                                  \
        }                                                                                      \
        for (int i = 0; i < mb; i++)                                                           \
            for (int j = 0; j < nb; j++) {                                                     \
                float r = acc_sum(acc[i][j]) + (bias ? bias[n0 + j] : 0.0f);                   \
                if (mins)                                                                      \
                    r += min_term(mins + (n0 + j) * groups, xq->gsum + (m0 + i) * groups, groups); \
                out[(m0 + i) * N + n0 + j] = r;                                                \
            }                                                                                  \
    }

QTILE(qtile_i8, int8_t, blk_i8, dot_s8, K, 32)
QTILE(qtile_i4, uint8_t, blk_i4, dot_u8, K / 2, 16)

/* Returns 0 when the scratch for the quantised x cannot be allocated (out is then untouched). */
int linear_int8_q8(const float *x, const int8_t *w, const _Float16 *scales, const float *bias, float *out,
                   int64_t M, int64_t N, int64_t K, int64_t G, int nthreads) {
    XQ xq;
    const int ok = quantize_x(x, M, K, G, &xq);
    if (ok) {
        const XQ *q = &xq;
#define CALL_Q8(m0, mb, n0, nb) qtile_i8(q, w, scales, NULL, bias, out, m0, mb, n0, nb, N, K, G)
        TILES(CALL_Q8)
    }
    free_x(&xq);
    return ok;
}

int linear_int4_q8(const float *x, const uint8_t *w, const _Float16 *scales, const _Float16 *mins,
                   const float *bias, float *out, int64_t M, int64_t N, int64_t K, int64_t G, int nthreads) {
    XQ xq;
    const int ok = quantize_x(x, M, K, G, &xq);
    if (ok) {
        const XQ *q = &xq;
#define CALL_Q4(m0, mb, n0, nb) qtile_i4(q, w, scales, mins, bias, out, m0, mb, n0, nb, N, K, G)
        TILES(CALL_Q4)
    }
    free_x(&xq);
    return ok;
}

/* ---- float32 weights, a few rows: out[M, N] = x[M, K] @ w[N, K]^T (+ bias).
   For decode steps of 1-3 rows, where the matmul is a read of the weights: four weight rows at
   a time against each row of x, streamed once (measured 17-26 GB/s here, torch's F.linear 10-14). */
void linear_f32(const float *x, const float *w, const float *bias, float *out, int64_t M, int64_t N,
                int64_t K, int nthreads) {
    const int64_t K8 = K - K % 8;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        const int nb = N - n0 >= 4 ? 4 : (int)(N - n0);
        for (int64_t m = 0; m < M; m++) {
            v8f acc[4] = {splat(0.0f), splat(0.0f), splat(0.0f), splat(0.0f)};
            for (int64_t k = 0; k < K8; k += 8) {
                const v8f xv = ld(x + m * K + k);
                for (int j = 0; j < nb; j++) {
                    __builtin_prefetch((const char *)(w + (n0 + j) * K + k) + PREFETCH);
                    acc[j] += xv * ld(w + (n0 + j) * K + k);
                }
            }
            for (int j = 0; j < nb; j++) {
                float r = hsum(acc[j]) + (bias ? bias[n0 + j] : 0.0f);
                for (int64_t k = K8; k < K; k++) r += x[m * K + k] * w[(n0 + j) * K + k];
                out[m * N + n0 + j] = r;
            }
        }
    }
}

static inline float bf1(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t to_bf1(float f) { /* nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* Sixteen bf16 weights as two float32 vectors without widening: even elements are the low
   halves of each 32-bit lane (shifted up), odd ones the high halves (masked). */
static inline void bf16x2(const uint16_t *p, v8f *even, v8f *odd) {
    typedef uint32_t v8u __attribute__((vector_size(32)));
    v8u raw;
    memcpy(&raw, p, sizeof raw);
    *even = (v8f)(raw << 16);
    *odd = (v8f)(raw & 0xFFFF0000u);
}

static inline void store_bf16_result(void *out, int64_t i, float r, int out_f32) {
    if (out_f32)
        ((float *)out)[i] = r;
    else
        ((uint16_t *)out)[i] = to_bf1(r);
}

/* The bf16 GEMV: x [M, K], w [N, K] and bias [N] bf16 (as uint16); float32 sums, written to out
   [M, N] as bf16 rounded to nearest even, or as float32 with out_f32 (the LM head's logits).
   Half the bytes of linear_f32 for the same weights. xs: float32 scratch of M * K, where x is
   widened once, its even and odd elements of every 16 apart to match bf16x2 (unused with
   AVX-512 bf16). */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
/* vdpbf16ps: each float32 lane adds the two products of a pair of bf16 (exact in float32), so
   one instruction does the widening, multiplies and adds of 32 weights. */
void linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, void *out, int64_t M, int64_t N,
                 int64_t K, int out_f32, float *xs, int nthreads) {
    (void)xs;
    const int64_t K32 = K - K % 32;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        const int nb = N - n0 >= 4 ? 4 : (int)(N - n0);
        for (int64_t m = 0; m < M; m++) {
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int64_t k = 0; k < K32; k += 32) {
                const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k);
                for (int j = 0; j < nb; j++) {
                    __builtin_prefetch((const char *)(w + (n0 + j) * K + k) + PREFETCH);
                    acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_loadu_si512(w + (n0 + j) * K + k), xv);
                }
            }
            for (int j = 0; j < nb; j++) {
                float r = _mm512_reduce_add_ps(acc[j]) + (bias ? bf1(bias[n0 + j]) : 0.0f);
                for (int64_t k = K32; k < K; k++) r += bf1(x[m * K + k]) * bf1(w[(n0 + j) * K + k]);
                store_bf16_result(out, m * N + n0 + j, r, out_f32);
            }
        }
    }
}
#else
void linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, void *out, int64_t M, int64_t N,
                 int64_t K, int out_f32, float *xs, int nthreads) {
    const int64_t K16 = K - K % 16;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K16; k++) /* chunk of 16: 8 even elements, then 8 odd ones */
            xs[m * K + k - k % 16 + (k % 2) * 8 + (k % 16) / 2] = bf1(x[m * K + k]);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        const int nb = N - n0 >= 4 ? 4 : (int)(N - n0);
        for (int64_t m = 0; m < M; m++) {
            v8f even[4] = {splat(0.0f), splat(0.0f), splat(0.0f), splat(0.0f)}, odd[4];
            for (int j = 0; j < 4; j++) odd[j] = splat(0.0f);
            for (int64_t k = 0; k < K16; k += 16) {
                const v8f xe = ld(xs + m * K + k), xo = ld(xs + m * K + k + 8);
                for (int j = 0; j < nb; j++) {
                    __builtin_prefetch((const char *)(w + (n0 + j) * K + k) + PREFETCH);
                    v8f we, wo;
                    bf16x2(w + (n0 + j) * K + k, &we, &wo);
                    even[j] += xe * we;
                    odd[j] += xo * wo;
                }
            }
            for (int j = 0; j < nb; j++) {
                float r = hsum(even[j] + odd[j]) + (bias ? bf1(bias[n0 + j]) : 0.0f);
                for (int64_t k = K16; k < K; k++) r += bf1(x[m * K + k]) * bf1(w[(n0 + j) * K + k]);
                store_bf16_result(out, m * N + n0 + j, r, out_f32);
            }
        }
    }
}
#endif
