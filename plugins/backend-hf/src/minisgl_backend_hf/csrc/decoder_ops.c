/* The small per-layer operations of a llama-family decoder, for CPUs: RMSNorm, and rotary
 * embeddings fused with the store of the new tokens' K/V into the paged pool.
 *
 * In torch each of them is a chain of elementwise ops (an RMSNorm is eight), and at a
 * decode step of a few rows the cost is the dispatch, not the arithmetic. Here each is one
 * call. Values round to bfloat16 at the points where transformers' own modules round, so
 * a bf16 model gives the bits transformers gives; float32 rounds nowhere.
 *
 * Rows spread over OpenMP threads only when there are enough of them to pay for a team.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define PARALLEL_ROWS 16

/* a float32 value rounded as it would be stored in bf16 */
static inline float bf16_round(float f) { return bf16_load(bf16_store(f)); }

#define F32_LOAD(x) (x)
#define F32_STORE(x) (x)
#define F32_ROUND(x) (x)

/* out[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps)): the normalised row rounds to the model's
 * dtype before the weight multiplies it, as in transformers' RMSNorm. */
#define DEFINE_RMS_NORM(NAME, T, LOAD, STORE, ROUND)                                           \
    void NAME(const T *x, int64_t x_stride, const T *w, T *out, int64_t out_stride,          \
              int64_t rows, int dim, float eps, int threads) {                               \
        _Pragma("omp parallel for num_threads(threads) if(rows >= PARALLEL_ROWS)")             \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            const T *xr = x + r * x_stride;                                                  \
            T *orow = out + r * out_stride;                                                  \
            float sum = 0.0f;                                                                \
            for (int d = 0; d < dim; d++) { const float v = LOAD(xr[d]); sum += v * v; }    \
            const float inv = 1.0f / sqrtf(sum / (float)dim + eps);                          \
            for (int d = 0; d < dim; d++) orow[d] = STORE(LOAD(w[d]) * ROUND(LOAD(xr[d]) * inv)); \
        }                                                                                    \
    }

DEFINE_RMS_NORM(rms_norm_f32, float, F32_LOAD, F32_STORE, F32_ROUND)
DEFINE_RMS_NORM(rms_norm_bf16, uint16_t, bf16_load, bf16_store, bf16_round)

typedef struct {
    void *q;               /* [T, q_stride]: H heads of D, rotated in place */
    void *k;               /* [T, k_stride]: KVH heads of D, rotated in place */
    const void *v;         /* [T, v_stride] */
    const float *cos;      /* [T, D], both halves (as transformers builds them), dtype-rounded */
    const float *sin;
    const int64_t *slots;  /* [T]: where each token's K/V go in the pool */
    void *k_pool;          /* this layer's K: [KVH, S, D] */
    void *v_pool;
    int64_t tokens, q_stride, k_stride, v_stride, pool_slots;
    int heads, kv_heads, dim;
} RopeStoreArgs;

/* x * cos + rotate_half(x) * sin on one head, each product and the sum rounded to the dtype */
#define DEFINE_ROTATE(NAME, T, LOAD, STORE, ROUND)                                             \
    static inline void NAME(T *x, const float *c, const float *s, int half) {                \
        for (int i = 0; i < half; i++) {                                                     \
            const float x1 = LOAD(x[i]), x2 = LOAD(x[i + half]);                             \
            const float lo = ROUND(x1 * c[i]) + ROUND(-x2 * s[i]);                           \
            const float hi = ROUND(x2 * c[i + half]) + ROUND(x1 * s[i + half]);              \
            x[i] = STORE(lo);                                                                \
            x[i + half] = STORE(hi);                                                         \
        }                                                                                    \
    }

#define DEFINE_ROPE_STORE(NAME, T, ROTATE)                                                     \
    void NAME(const RopeStoreArgs *a, int threads) {                                         \
        const int D = a->dim, half = a->dim / 2;                                             \
        _Pragma("omp parallel for num_threads(threads) if(a->tokens >= PARALLEL_ROWS)")        \
        for (int64_t t = 0; t < a->tokens; t++) {                                            \
            const float *c = a->cos + t * D, *s = a->sin + t * D;                            \
            T *q = (T *)a->q + t * a->q_stride;                                              \
            T *k = (T *)a->k + t * a->k_stride;                                              \
            const T *v = (const T *)a->v + t * a->v_stride;                                  \
            const int64_t slot = a->slots[t];                                                \
            for (int h = 0; h < a->heads; h++) ROTATE(q + h * D, c, s, half);                \
            for (int h = 0; h < a->kv_heads; h++) {                                          \
                ROTATE(k + h * D, c, s, half);                                               \
                const int64_t at = ((int64_t)h * a->pool_slots + slot) * D;                  \
                memcpy((T *)a->k_pool + at, k + h * D, sizeof(T) * D);                       \
                memcpy((T *)a->v_pool + at, v + h * D, sizeof(T) * D);                       \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_ROTATE(rotate_f32, float, F32_LOAD, F32_STORE, F32_ROUND)
DEFINE_ROTATE(rotate_bf16, uint16_t, bf16_load, bf16_store, bf16_round)
DEFINE_ROPE_STORE(rope_store_f32, float, rotate_f32)
DEFINE_ROPE_STORE(rope_store_bf16, uint16_t, rotate_bf16)
