/* Decode attention that reads the paged KV pool in place, for CPUs.
 *
 * One call per layer attends every decode row's query heads over that row's page-table
 * slots: no gathered copy of K/V, no padding to the longest row. Work items are
 * (row, kv head) pairs, spread over OpenMP threads (the runtime torch itself loaded, found
 * by soname). Within a pair the G query heads sharing the kv head walk the keys together in
 * blocks, with an online softmax, so each K and V row is read from memory once.
 *
 * Pools hold float32 or bfloat16 (raw uint16) values; queries and outputs are float32.
 * Built by cpu_kernels.py with -O3 -march=native -ffast-math (vectorised dot products and
 * exponentials); masked keys are skipped by bounds, never by -inf, so finite math holds.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define KEY_BLOCK 64
#define MAX_GROUP_DIM 8192 /* G * D floats of accumulator per work item, on the stack */

typedef struct {
    const float *q;        /* [B, H, D] */
    const void *k;         /* this layer's K: [KVH, S, D] */
    const void *v;         /* this layer's V: [KVH, S, D] */
    const int64_t *table;  /* [B, table_stride]: slots of positions 0..len-1 */
    const int64_t *lens;   /* [B]: context length including the new token */
    float *out;            /* [B, H, D] */
    int64_t table_stride, slots;
    int rows, heads, kv_heads, dim;
    float scale, softcap;  /* softcap 0: none */
    int window;            /* 0: none; else keys with position > len - 1 - window */
} DecodeArgs;

/* Slots are scattered over the pool, so the hardware prefetcher cannot guess the next
 * row: ask for the row PREFETCH keys ahead, one cache line at a time. */
#define PREFETCH 8
static inline void prefetch_row(const void *row, int bytes) {
    for (int off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)row + off, 0, 3);
}

#define DEFINE_DECODE(NAME, T, LOAD)                                                          \
    static void NAME##_item(const DecodeArgs *a, int row, int kvh) {                        \
        const int D = a->dim, G = a->heads / a->kv_heads;                                   \
        const int64_t len = a->lens[row];                                                   \
        const int64_t lo = (a->window > 0 && len > a->window) ? len - a->window : 0;        \
        const float *q = a->q + ((int64_t)row * a->heads + (int64_t)kvh * G) * D;           \
        float *out = a->out + ((int64_t)row * a->heads + (int64_t)kvh * G) * D;             \
        const T *kbase = (const T *)a->k + (int64_t)kvh * a->slots * D;                     \
        const T *vbase = (const T *)a->v + (int64_t)kvh * a->slots * D;                     \
        const int64_t *slots = a->table + (int64_t)row * a->table_stride;                   \
        float acc[MAX_GROUP_DIM], m[G], l[G], p[G][KEY_BLOCK], kf[D];                       \
        memset(acc, 0, sizeof(float) * G * D);                                              \
        for (int g = 0; g < G; g++) { m[g] = -FLT_MAX; l[g] = 0.0f; }                        \
        for (int64_t start = lo; start < len; start += KEY_BLOCK) {                         \
            const int n = (int)((len - start) < KEY_BLOCK ? (len - start) : KEY_BLOCK);     \
            for (int j = 0; j < n; j++) {                                                   \
                if (start + j + PREFETCH < len)                                             \
                    prefetch_row(kbase + slots[start + j + PREFETCH] * D, D * (int)sizeof(T));  \
                const T *kp = kbase + slots[start + j] * D;                                 \
                for (int d = 0; d < D; d++) kf[d] = LOAD(kp[d]);                            \
                for (int g = 0; g < G; g++) {                                               \
                    const float *qg = q + g * D;                                            \
                    float s = 0.0f;                                                         \
                    for (int d = 0; d < D; d++) s += qg[d] * kf[d];                         \
                    s *= a->scale;                                                          \
                    if (a->softcap > 0.0f) s = tanhf(s / a->softcap) * a->softcap;          \
                    p[g][j] = s;                                                            \
                }                                                                           \
            }                                                                               \
            for (int g = 0; g < G; g++) {                                                   \
                float mx = m[g];                                                            \
                for (int j = 0; j < n; j++) mx = p[g][j] > mx ? p[g][j] : mx;               \
                const float corr = expf(m[g] - mx);                                         \
                float sum = 0.0f;                                                           \
                for (int j = 0; j < n; j++) { p[g][j] = expf(p[g][j] - mx); sum += p[g][j]; } \
                l[g] = l[g] * corr + sum;                                                   \
                m[g] = mx;                                                                  \
                float *ag = acc + g * D;                                                    \
                for (int d = 0; d < D; d++) ag[d] *= corr;                                  \
            }                                                                               \
            for (int j = 0; j < n; j++) {                                                   \
                if (start + j + PREFETCH < len)                                             \
                    prefetch_row(vbase + slots[start + j + PREFETCH] * D, D * (int)sizeof(T));  \
                const T *vp = vbase + slots[start + j] * D;                                 \
                for (int d = 0; d < D; d++) kf[d] = LOAD(vp[d]);                            \
                for (int g = 0; g < G; g++) {                                               \
                    float *ag = acc + g * D;                                                \
                    const float w = p[g][j];                                                \
                    for (int d = 0; d < D; d++) ag[d] += w * kf[d];                         \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int g = 0; g < G; g++) {                                                       \
            const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;                             \
            for (int d = 0; d < D; d++) out[g * D + d] = acc[g * D + d] * inv;              \
        }                                                                                   \
    }                                                                                       \
    int NAME(const DecodeArgs *a, int threads) {                                            \
        if (a->heads % a->kv_heads != 0 || (a->heads / a->kv_heads) * a->dim > MAX_GROUP_DIM) \
            return 1;                                                                       \
        const int items = a->rows * a->kv_heads;                                            \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")               \
        for (int i = 0; i < items; i++) NAME##_item(a, i / a->kv_heads, i % a->kv_heads);   \
        return 0;                                                                           \
    }

#define LOAD_F32(x) (x)
#define LOAD_BF16(x) bf16_load(x)

DEFINE_DECODE(paged_decode_f32, float, LOAD_F32)
DEFINE_DECODE(paged_decode_bf16, uint16_t, LOAD_BF16)
