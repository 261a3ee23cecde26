/* A whole decode step of a Llama-family decoder on CPU, in one call.

   At batch 1 each decoder layer is eleven small ops (two norms, four projections, rotary, the
   KV write, attention, the activation, slicing); through Python each costs more in dispatch
   than in arithmetic (about 200 us a layer for SmolLM2, against 6 ms of weight reads for all 30
   layers). This file runs the layers' loop in C, calling the existing kernels (passed in as
   function pointers: cpu_kernels.c and quant_kernels.c are libraries of their own) on scratch
   buffers it allocates once per call. Activations are float32, or bf16 for a bf16 model (then
   every projection is bf16 and the kernels run in their bf16 mode, rounding where the module
   path rounds); decode_step.py decides when it applies and builds the per-layer table.

   Layer table, int64 per layer (LAYER_FIELDS): input norm weight, post-attention norm weight,
   KV cache, then for qkv, o, gate_up, down: bits (8, 4, 16 for bf16 or 32 for float32), weight,
   scales, mins, bias, N, K, G, and the row count below which x is quantised to int8 (0: never;
   QuantLinear's own rule, read when the table is built). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*norm_fn)(const void *, void *, const void *, void *, int64_t, int64_t, float, int, int);
typedef void (*silu_fn)(const void *, void *, int64_t, int64_t, int, int);
typedef void (*rope_fn)(void *, int64_t, int64_t, int64_t, int64_t, const float *, const float *, int, int);
typedef void (*attn_fn)(const void *, int64_t, const void *, const int64_t *, const int64_t *, void *, int64_t,
                        int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, int, int);
typedef void (*lin8_fn)(const float *, const void *, const void *, const float *, float *, int64_t, int64_t,
                        int64_t, int64_t, int);
typedef int (*lin8q_fn)(const float *, const void *, const void *, const float *, float *, int64_t, int64_t,
                        int64_t, int64_t, int);
typedef void (*lin4_fn)(const float *, const void *, const void *, const void *, const float *, float *,
                        int64_t, int64_t, int64_t, int64_t, int);
typedef int (*lin4q_fn)(const float *, const void *, const void *, const void *, const float *, float *,
                        int64_t, int64_t, int64_t, int64_t, int);
typedef void (*linf_fn)(const float *, const void *, const float *, float *, int64_t, int64_t, int64_t, int);
typedef void (*linb_fn)(const void *, const void *, const void *, void *, int64_t, int64_t, int64_t, int, float *,
                        int);

/* Kernel table order (decode_step.py: KERNELS). */
enum { F_NORM, F_SILU, F_ROPE, F_ATTN, F_LIN8, F_LIN8Q, F_LIN4, F_LIN4Q, F_LINF, F_LINB, F_COUNT };

#define LIN_FIELDS 9
#define LAYER_FIELDS (3 + 4 * LIN_FIELDS)

/* xs: float32 scratch of M * K for the bf16 GEMV's widened x. */
static void linear(void *const *fns, const int64_t *p, const void *x, void *out, int64_t M, float *xs,
                   int nthreads) {
    const int bits = (int)p[0];
    const void *w = (const void *)p[1], *scales = (const void *)p[2], *mins = (const void *)p[3];
    const void *bias = (const void *)p[4]; /* float32, or bf16 for bf16 weights */
    const int64_t N = p[5], K = p[6], G = p[7];
    const int int8 = M < p[8];
    if (bits == 16) { /* bf16 x, weights and out */
        ((linb_fn)fns[F_LINB])(x, w, bias, out, M, N, K, 0, xs, nthreads);
    } else if (bits == 32) { /* float32 weights (decode_step.py keeps M below 4 rows for them) */
        ((linf_fn)fns[F_LINF])(x, w, bias, out, M, N, K, nthreads);
    } else if (bits == 8) {
        if (!(int8 && ((lin8q_fn)fns[F_LIN8Q])(x, w, scales, bias, out, M, N, K, G, nthreads)))
            ((lin8_fn)fns[F_LIN8])(x, w, scales, bias, out, M, N, K, G, nthreads);
    } else {
        if (!(int8 && ((lin4q_fn)fns[F_LIN4Q])(x, w, scales, mins, bias, out, M, N, K, G, nthreads)))
            ((lin4_fn)fns[F_LIN4])(x, w, scales, mins, bias, out, M, N, K, G, nthreads);
    }
}

static inline float bf(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t to_bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); /* nearest even */
}

/* x [M, H]: the embedded tokens in, the last layer's hidden state (before the final norm) out;
   float32, or bf16 (as uint16) with bf16 set, like the KV cache.
   cos / sin: float32 [M, D / 2]; slots [M]; block_ids [M, max_blocks]; ctx_lens [M].
   Returns 0 when scratch memory cannot be allocated (x is then unchanged). */
int decode_layers(void *const *fns, const int64_t *layers, int64_t L, void *x, int64_t M, int64_t H,
                  int64_t heads, int64_t kv_heads, int64_t D, int64_t I, float eps, const float *cos,
                  const float *sin, const int64_t *slots, const int64_t *block_ids, const int64_t *ctx_lens,
                  int64_t max_blocks, int64_t block_size, float scale, int64_t window, int bf16,
                  int nthreads) {
    const int64_t qkv_n = (heads + 2 * kv_heads) * D, kv_row = 2 * kv_heads * D, es = bf16 ? 2 : 4;
    char *residual = malloc(es * M * H), *h = malloc(es * M * H);
    char *qkv = malloc(es * M * qkv_n), *att = malloc(es * M * heads * D);
    char *gu = malloc(es * M * 2 * I), *act = malloc(es * M * I);
    const int64_t widest = H > I ? (H > heads * D ? H : heads * D) : (I > heads * D ? I : heads * D);
    float *xs = bf16 ? malloc(sizeof(float) * M * widest) : NULL;
    int ok = residual && h && qkv && att && gu && act && (xs || !bf16);
    if (ok) {
        norm_fn norm = (norm_fn)fns[F_NORM];
        memcpy(residual, x, es * M * H);
        for (int64_t l = 0; l < L; l++) {
            const int64_t *p = layers + l * LAYER_FIELDS;
            const void *in_norm = (const void *)p[0], *post_norm = (const void *)p[1];
            char *cache = (char *)p[2];
            const int64_t *lin = p + 3;
            /* layer 0: h = norm(x); later: residual += x (the last layer's output), h = norm */
            norm(l ? x : NULL, residual, in_norm, h, M, H, eps, bf16, nthreads);
            linear(fns, lin, h, qkv, M, xs, nthreads);
            ((rope_fn)fns[F_ROPE])(qkv, M, qkv_n, heads + kv_heads, D, cos, sin, bf16, nthreads);
            for (int64_t t = 0; t < M; t++) /* K then V of the token: the cache slot's layout */
                memcpy(cache + slots[t] * kv_row * es, qkv + (t * qkv_n + heads * D) * es, es * kv_row);
            ((attn_fn)fns[F_ATTN])(qkv, qkv_n, cache, block_ids, ctx_lens, att, M, heads, kv_heads, D,
                                   block_size, max_blocks, scale, window, bf16, nthreads);
            linear(fns, lin + LIN_FIELDS, att, x, M, xs, nthreads);
            norm(x, residual, post_norm, h, M, H, eps, bf16, nthreads);
            linear(fns, lin + 2 * LIN_FIELDS, h, gu, M, xs, nthreads);
            ((silu_fn)fns[F_SILU])(gu, act, M, I, bf16, nthreads);
            linear(fns, lin + 3 * LIN_FIELDS, act, x, M, xs, nthreads);
        }
        if (bf16) {
            uint16_t *xb = x;
            const uint16_t *rb = (const uint16_t *)residual;
            for (int64_t i = 0; i < M * H; i++) xb[i] = to_bf(bf(xb[i]) + bf(rb[i]));
        } else {
            float *xf = x;
            const float *rf = (const float *)residual;
            for (int64_t i = 0; i < M * H; i++) xf[i] += rf[i];
        }
    }
    free(residual);
    free(h);
    free(qkv);
    free(att);
    free(gu);
    free(act);
    free(xs);
    return ok;
}
