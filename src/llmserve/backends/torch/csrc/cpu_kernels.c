/* Fused CPU kernels for the torch backend; cpu_kernels.py compiles this file once and loads it
   with ctypes (the exported signatures are declared there, in _declare). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Decode attention over a paged KV cache, one new token per sequence.
   q: [B, H, D] (row stride q_stride); cache: [slots, 2, KVH, D]; tables: [B, max_blocks];
   ctx_lens: [B]; out: [B, H, D] contiguous. Elements are bf16 (as uint16) or float32.
   A work item is a whole sequence when there are enough sequences to share out, else one
   (sequence, KV head); the G = H / KVH query heads of a KV head share each K/V row loaded.
   head_dim 64 / 128 with AVX-512 or AVX2: one pass with an online softmax. Otherwise a portable
   two-pass version (scores, then the p-weighted V sum). */

typedef struct {
    const void *q, *cache;
    const int64_t *tables, *ctx_lens;
    void *out;
    int64_t q_stride, H, KVH, D, block_size, max_blocks, window;
    float scale;
    int bf16;
} Args;

#define MAX_G 64
#define MAX_D 1024
#define MAX_FLOATS 8192 /* q / accumulator floats of one work item: all its query heads times D */
#define MAX_QUERIES 128 /* query heads of one work item */

static inline float get(const void *p, int64_t i, int bf16) {
    if (!bf16) return ((const float *)p)[i];
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)((const uint16_t *)p)[i] << 16;
    return v.f;
}

static inline void put(void *p, int64_t i, float f, int bf16) {
    if (!bf16) { ((float *)p)[i] = f; return; }
    union { uint32_t u; float f; } v;
    v.f = f;
    ((uint16_t *)p)[i] = (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16); /* nearest even */
}

/* Row of token t (position in the sequence) for head h; part 0 = K, 1 = V. */
static inline int64_t row_of(const Args *a, const int64_t *table, int64_t t, int part, int64_t h) {
    const int64_t slot = table[t / a->block_size] * a->block_size + t % a->block_size;
    return (slot * 2 + part) * a->KVH * a->D + h * a->D;
}

static void softmax_rows(float *scores, int64_t G, int64_t n, float *sums) {
    for (int64_t g = 0; g < G; g++) {
        float *s = scores + g * n, m = -3.0e38f, total = 0.0f;
        for (int64_t i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
        for (int64_t i = 0; i < n; i++) { s[i] = expf(s[i] - m); total += s[i]; }
        sums[g] = total;
    }
}

static void work_generic(const Args *a, int64_t b, int64_t h, int64_t first, int64_t ctx, float *scores) {
    const int64_t D = a->D, G = a->H / a->KVH, n = ctx - first;
    const int64_t *table = a->tables + b * a->max_blocks;
    float acc[MAX_D], row[MAX_D], sums[MAX_G];
    for (int64_t g = 0; g < G; g++) {
        const int64_t qbase = b * a->q_stride + (h * G + g) * D;
        float *sg = scores + g * n;
        for (int64_t t = first; t < ctx; t++) {
            const int64_t k = row_of(a, table, t, 0, h);
            float s = 0.0f;
            for (int64_t d = 0; d < D; d++) s += get(a->q, qbase + d, a->bf16) * get(a->cache, k + d, a->bf16);
            sg[t - first] = s * a->scale;
        }
    }
    softmax_rows(scores, G, n, sums);
    for (int64_t g = 0; g < G; g++) {
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
        for (int64_t t = first; t < ctx; t++) {
            const int64_t v = row_of(a, table, t, 1, h);
            const float p = scores[g * n + t - first];
            for (int64_t d = 0; d < D; d++) row[d] = get(a->cache, v + d, a->bf16);
            for (int64_t d = 0; d < D; d++) acc[d] += p * row[d];
        }
        for (int64_t d = 0; d < D; d++) put(a->out, (b * a->H + h * G + g) * D + d, acc[d] / sums[g], a->bf16);
    }
}

/* The one-pass kernel below in vectors of VW floats: AVX-512 (16) or AVX2 + FMA (8). */
#if defined(__AVX512F__)
#define SIMD 1
#define VW 16
typedef __m512 vec;
#define vzero() _mm512_setzero_ps()
#define vset1(x) _mm512_set1_ps(x)
#define vmul(a, b) _mm512_mul_ps(a, b)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vsum(a) _mm512_reduce_add_ps(a)
static inline vec vload(const void *p, int64_t i, int bf16) {
    if (!bf16) return _mm512_loadu_ps((const float *)p + i);
    __m256i raw = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define SIMD 1
#define VW 8
typedef __m256 vec;
#define vzero() _mm256_setzero_ps()
#define vset1(x) _mm256_set1_ps(x)
#define vmul(a, b) _mm256_mul_ps(a, b)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
static inline float vsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline vec vload(const void *p, int64_t i, int bf16) {
    if (!bf16) return _mm256_loadu_ps((const float *)p + i);
    __m128i raw = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
#endif

#ifdef SIMD
static inline void vstore(void *p, int64_t i, vec v, int bf16) {
    float f[VW];
    memcpy(f, &v, sizeof f);
    for (int k = 0; k < VW; k++) put(p, i + k, f[k], bf16);
}

/* Heads h0..h1-1 of sequence b, in one pass over the context with an online softmax: each chunk of
   up to 16 tokens is scored (q.k), folded into the running max / sum, and its V rows accumulated
   while the rows are still in cache. NV = D / VW vectors per row and BF16 are compile-time
   constants in each specialisation. A whole sequence per item streams whole cache rows. */
#define CHUNK 16
#define MAX_NV (128 / VW)
static inline __attribute__((always_inline)) void work_simd(const Args *a, int64_t b, int64_t h0, int64_t h1,
    int64_t first, int64_t ctx, const int NV, const int BF16) {
    const int64_t D = VW * NV, G = a->H / a->KVH, bs = a->block_size, queries = (h1 - h0) * G;
    const int64_t row = 2 * a->KVH * D, esize = BF16 ? 2 : 4, span = (h1 - h0) * D * esize;
    const int64_t *table = a->tables + b * a->max_blocks;
    const char *cache = a->cache;
    vec qv[MAX_FLOATS / VW], acc[MAX_FLOATS / VW];
    float maxs[MAX_QUERIES], sums[MAX_QUERIES], p[MAX_QUERIES][CHUNK];
    const vec scale = vset1(a->scale);
    for (int64_t j = 0; j < queries; j++) { /* query head h0 * G + j */
        maxs[j] = -3.0e38f;
        sums[j] = 0.0f;
        for (int c = 0; c < NV; c++) {
            qv[j * NV + c] = vmul(vload(a->q, b * a->q_stride + (h0 * G + j) * D + VW * c, BF16), scale);
            acc[j * NV + c] = vzero();
        }
    }
    for (int64_t t0 = first - first % bs; t0 < ctx; t0 += bs) {
        const char *block = cache + (table[t0 / bs] * bs * row + h0 * D) * esize;
        if (t0 + bs < ctx) { /* warm the cache with the next block while this one computes */
            const char *next = cache + (table[t0 / bs + 1] * bs * row + h0 * D) * esize;
            for (int64_t i = 0; i < bs; i++)
                for (int64_t c = 0; c < span; c += 64) {
                    _mm_prefetch(next + i * row * esize + c, _MM_HINT_T0);
                    _mm_prefetch(next + (i * row + a->KVH * D) * esize + c, _MM_HINT_T0);
                }
        }
        const int64_t end = t0 + bs < ctx ? t0 + bs : ctx;
        for (int64_t c0 = t0 < first ? first : t0; c0 < end; c0 += CHUNK) {
            const int64_t len = end - c0 < CHUNK ? end - c0 : CHUNK;
            /* scores, one query head at a time: its q stays in registers over the chunk's K rows */
            for (int64_t kh = 0; kh < h1 - h0; kh++)
                for (int64_t j = kh * G; j < (kh + 1) * G; j++) {
                    vec qr[MAX_NV];
                    for (int c = 0; c < NV; c++) qr[c] = qv[j * NV + c];
                    for (int64_t i = 0; i < len; i++) {
                        const char *k = block + ((c0 - t0 + i) * row + kh * D) * esize;
                        vec dot = vmul(qr[0], vload(k, 0, BF16));
                        for (int c = 1; c < NV; c++) dot = vfma(qr[c], vload(k, VW * c, BF16), dot);
                        p[j][i] = vsum(dot);
                    }
                }
            for (int64_t j = 0; j < queries; j++) { /* online softmax */
                float m = maxs[j], total = 0.0f;
                for (int64_t i = 0; i < len; i++) m = p[j][i] > m ? p[j][i] : m;
                for (int64_t i = 0; i < len; i++) { p[j][i] = expf(p[j][i] - m); total += p[j][i]; }
                if (m > maxs[j]) {
                    const float correction = expf(maxs[j] - m);
                    sums[j] *= correction;
                    for (int c = 0; c < NV; c++) acc[j * NV + c] = vmul(acc[j * NV + c], vset1(correction));
                    maxs[j] = m;
                }
                sums[j] += total;
            }
            /* weighted V, one query head at a time: its accumulator stays in registers */
            for (int64_t kh = 0; kh < h1 - h0; kh++)
                for (int64_t j = kh * G; j < (kh + 1) * G; j++) {
                    vec ar[MAX_NV];
                    for (int c = 0; c < NV; c++) ar[c] = acc[j * NV + c];
                    for (int64_t i = 0; i < len; i++) {
                        const char *v = block + ((c0 - t0 + i) * row + a->KVH * D + kh * D) * esize;
                        const vec w = vset1(p[j][i]);
                        for (int c = 0; c < NV; c++) ar[c] = vfma(w, vload(v, VW * c, BF16), ar[c]);
                    }
                    for (int c = 0; c < NV; c++) acc[j * NV + c] = ar[c];
                }
        }
    }
    for (int64_t j = 0; j < queries; j++) {
        const vec inv = vset1(1.0f / sums[j]);
        for (int c = 0; c < NV; c++)
            vstore(a->out, (b * a->H + h0 * G + j) * D + VW * c, vmul(acc[j * NV + c], inv), BF16);
    }
}
#endif


/* ---- fused elementwise kernels (rows are contiguous; parallel only when big enough) ---- */

#define PAR_MIN 65536 /* elements below which an OpenMP fork costs more than it saves */

/* residual += x (when x is given), then out = rms_norm(residual) * w. */
void add_rms_norm(const void *x, void *residual, const void *w, void *out, int64_t T, int64_t N,
                  float eps, int bf16, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) if (T * N >= PAR_MIN) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float ss = 0.0f;
        for (int64_t i = 0; i < N; i++) {
            float v = get(residual, t * N + i, bf16);
            if (x) {
                put(residual, t * N + i, v + get(x, t * N + i, bf16), bf16);
                v = get(residual, t * N + i, bf16); /* normalise the value as stored */
            }
            ss += v * v;
        }
        const float inv = 1.0f / sqrtf(ss / (float)N + eps);
        for (int64_t i = 0; i < N; i++)
            put(out, t * N + i, get(residual, t * N + i, bf16) * inv * get(w, i, bf16), bf16);
    }
}

/* out[t] = silu(gate_up[t, :I]) * gate_up[t, I:] */
void silu_mul(const void *gate_up, void *out, int64_t T, int64_t I, int bf16, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) if (T * I >= PAR_MIN) schedule(static)
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < I; i++) {
            const float g = get(gate_up, t * 2 * I + i, bf16), u = get(gate_up, t * 2 * I + I + i, bf16);
            put(out, t * I + i, g / (1.0f + expf(-g)) * u, bf16);
        }
}

/* Rotate-half rotary embedding, in place, on the first `heads` heads of each row of x
   (row stride `stride`); cos/sin: float32 [T, D / 2]. */
void rope(void *x, int64_t T, int64_t stride, int64_t heads, int64_t D, const float *cos,
          const float *sin, int bf16, int nthreads) {
    const int64_t half = D / 2;
    #pragma omp parallel for num_threads(nthreads) if (T * heads * D >= PAR_MIN) schedule(static)
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < heads; h++) {
            const int64_t base = t * stride + h * D;
            for (int64_t i = 0; i < half; i++) {
                const float a = get(x, base + i, bf16), b = get(x, base + half + i, bf16);
                const float c = cos[t * half + i], s = sin[t * half + i];
                put(x, base + i, a * c - b * s, bf16);
                put(x, base + half + i, b * c + a * s, bf16);
            }
        }
}

void paged_decode(const void *q, int64_t q_stride, const void *cache, const int64_t *tables,
                  const int64_t *ctx_lens, void *out, int64_t B, int64_t H, int64_t KVH, int64_t D,
                  int64_t block_size, int64_t max_blocks, float scale, int64_t window, int bf16,
                  int nthreads) {
    const Args a = {q, cache, tables, ctx_lens, out, q_stride, H, KVH, D, block_size, max_blocks, window,
                    scale, bf16};
    /* Whole sequences per work item when there are enough of them to keep the threads busy. */
    const int64_t per_item = (B >= 2 * nthreads && H * D <= MAX_FLOATS && H <= MAX_QUERIES) ? KVH : 1;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t work = 0; work < B * (KVH / per_item); work++) {
        const int64_t b = work / (KVH / per_item), h0 = work % (KVH / per_item) * per_item;
        const int64_t ctx = ctx_lens[b], first = (window > 0 && ctx > window) ? ctx - window : 0;
#ifdef SIMD
        if (D == 64 && bf16) { work_simd(&a, b, h0, h0 + per_item, first, ctx, 64 / VW, 1); continue; }
        if (D == 64) { work_simd(&a, b, h0, h0 + per_item, first, ctx, 64 / VW, 0); continue; }
        if (D == 128 && bf16) { work_simd(&a, b, h0, h0 + per_item, first, ctx, 128 / VW, 1); continue; }
        if (D == 128) { work_simd(&a, b, h0, h0 + per_item, first, ctx, 128 / VW, 0); continue; }
#endif
        float *scores = malloc(sizeof(float) * (H / KVH) * (ctx - first));
        for (int64_t h = h0; h < h0 + per_item; h++) work_generic(&a, b, h, first, ctx, scores);
        free(scores);
    }
}
