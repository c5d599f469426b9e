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
 *
 * With AVX-512 or AVX2 (simd.h) and a head size of a multiple of the vector width a second
 * path serves: keys go in blocks of one vector's lanes, each key's G dot products stay as
 * vectors of partial sums until one transposing reduction turns the block's into one vector
 * of scores, and the softmax and the accumulators (G x D floats, in registers for the shapes
 * the dispatch names) run on vectors; the portable path spent most of its time in per-key
 * horizontal sums.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "simd.h"

#define KEY_BLOCK 64
#define MAX_GROUP_DIM 8192 /* G * D floats of accumulator per work item, on the stack */

typedef struct {
    const float *q;        /* [B, H, D] */
    const void *k;         /* this layer's K: [KVH, S, D] */
    const void *v;         /* this layer's V: [KVH, S, D] */
    const int64_t *table;  /* [R, table_stride]: slots of positions 0..len-1 */
    const int64_t *table_rows; /* [B]: the table row of each row (a prompt's tokens share one);
                                * NULL: row b reads table row b */
    const int64_t *lens;   /* [B]: context length including the new token */
    float *out;            /* [B, H, D] */
    int64_t table_stride, slots;
    int rows, heads, kv_heads, dim;
    float scale, softcap;  /* softcap 0: none */
    int window;            /* 0: none; else keys with position > len - 1 - window */
} DecodeArgs;

static inline const int64_t *row_slots(const DecodeArgs *a, int row) {
    return a->table + (a->table_rows ? a->table_rows[row] : row) * a->table_stride;
}

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
        const int64_t *slots = row_slots(a, row);                                           \
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
        void (*item)(const DecodeArgs *, int, int) = NAME##_item;                           \
        if (fast_fits(a)) item = NAME##_fast;                                                \
        const int items = a->rows * a->kv_heads;                                            \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")               \
        for (int i = 0; i < items; i++) item(a, i / a->kv_heads, i % a->kv_heads);          \
        return 0;                                                                           \
    }

#if defined(MINISGL_LANES)
#define LANES MINISGL_LANES /* keys a block: one vector of scores */
#define MAX_CHUNKS (256 / LANES) /* head size up to 256 */
#define MAX_GROUP 8

static int fast_fits(const DecodeArgs *a) {
    const int G = a->heads / a->kv_heads;
    return a->dim % LANES == 0 && a->dim / LANES <= MAX_CHUNKS && G <= MAX_GROUP;
}

static inline vfloat load_chunk(const void *row, int c, int bf16) {
    return bf16 ? v_load_bf16((const uint16_t *)row + LANES * c) : v_load((const float *)row + LANES * c);
}

/* One (row, kv head) item; C (head size / LANES) and G (query heads per kv head) are
 * constants where the dispatch below names them, so the loops unroll and the accumulators
 * stay in registers. */
static inline __attribute__((always_inline)) void attend_vec(const DecodeArgs *a, int row, int kvh, const int C,
                                                             const int G, const int bf16) {
    const int D = LANES * C, bytes = D * (bf16 ? 2 : 4);
    const int64_t len = a->lens[row];
    const int64_t lo = (a->window > 0 && len > a->window) ? len - a->window : 0;
    const float *q = a->q + ((int64_t)row * a->heads + (int64_t)kvh * G) * D;
    float *out = a->out + ((int64_t)row * a->heads + (int64_t)kvh * G) * D;
    const char *kbase = (const char *)a->k + (int64_t)kvh * a->slots * bytes;
    const char *vbase = (const char *)a->v + (int64_t)kvh * a->slots * bytes;
    const int64_t *slots = row_slots(a, row);
    vfloat qv[MAX_GROUP * MAX_CHUNKS], acc[MAX_GROUP * MAX_CHUNKS], part[MAX_GROUP][LANES];
    float m[MAX_GROUP], l[MAX_GROUP], p[MAX_GROUP][LANES];
    const vfloat scale = v_set1(a->scale);
    for (int g = 0; g < G; g++) {
        m[g] = -FLT_MAX;
        l[g] = 0.0f;
        for (int c = 0; c < C; c++) {
            qv[g * C + c] = v_mul(v_load(q + g * D + LANES * c), scale);
            acc[g * C + c] = v_zero();
        }
    }
    for (int64_t start = lo; start < len; start += LANES) {
        const int n = (int)((len - start) < LANES ? (len - start) : LANES);
        for (int j = 0; j < LANES; j++) {
            if (j >= n) {
                for (int g = 0; g < G; g++) part[g][j] = v_zero();
                continue;
            }
            if (start + j + PREFETCH < len) prefetch_row(kbase + slots[start + j + PREFETCH] * bytes, bytes);
            prefetch_row(vbase + slots[start + j] * bytes, bytes); /* read after this block's scores */
            const char *kp = kbase + slots[start + j] * bytes;
            vfloat kc[MAX_CHUNKS];
            for (int c = 0; c < C; c++) kc[c] = load_chunk(kp, c, bf16);
            for (int g = 0; g < G; g++) {
                vfloat s = v_mul(qv[g * C], kc[0]);
                for (int c = 1; c < C; c++) s = v_fma(qv[g * C + c], kc[c], s);
                part[g][j] = s;
            }
        }
        for (int g = 0; g < G; g++) {
            vfloat s = v_sum_each(part[g]);
            if (a->softcap > 0.0f) {
                float t[LANES];
                v_store(t, s);
                for (int j = 0; j < n; j++) t[j] = tanhf(t[j] / a->softcap) * a->softcap;
                s = v_load(t);
            }
            s = v_first(s, n, -FLT_MAX);
            const float mx = fmaxf(m[g], v_max_of(s));
            const float corr = expf(m[g] - mx);
            const vfloat e = v_first(v_exp(v_sub(s, v_set1(mx))), n, 0.0f);
            l[g] = l[g] * corr + v_sum_of(e);
            m[g] = mx;
            v_store(p[g], e);
            const vfloat cv = v_set1(corr);
            for (int c = 0; c < C; c++) acc[g * C + c] = v_mul(acc[g * C + c], cv);
        }
        for (int j = 0; j < n; j++) {
            const char *vp = vbase + slots[start + j] * bytes;
            for (int c = 0; c < C; c++) {
                const vfloat vc = load_chunk(vp, c, bf16);
                for (int g = 0; g < G; g++) acc[g * C + c] = v_fma(v_set1(p[g][j]), vc, acc[g * C + c]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        const vfloat inv = v_set1(l[g] > 0.0f ? 1.0f / l[g] : 0.0f);
        for (int c = 0; c < C; c++) v_store(out + g * D + LANES * c, v_mul(acc[g * C + c], inv));
    }
}

/* Head sizes 64 and 128 with 1-8 query heads per kv head get constant shapes; others run the
 * same code with shapes read at run time. */
#define ATTEND_G(C, BF16)                                                     \
    switch (G) {                                                              \
    case 1: attend_vec(a, row, kvh, C, 1, BF16); return;                      \
    case 2: attend_vec(a, row, kvh, C, 2, BF16); return;                      \
    case 3: attend_vec(a, row, kvh, C, 3, BF16); return;                      \
    case 4: attend_vec(a, row, kvh, C, 4, BF16); return;                      \
    case 5: attend_vec(a, row, kvh, C, 5, BF16); return;                      \
    case 6: attend_vec(a, row, kvh, C, 6, BF16); return;                      \
    case 7: attend_vec(a, row, kvh, C, 7, BF16); return;                      \
    case 8: attend_vec(a, row, kvh, C, 8, BF16); return;                      \
    }
#define DEFINE_FAST(NAME, BF16)                                               \
    static void NAME(const DecodeArgs *a, int row, int kvh) {                 \
        const int C = a->dim / LANES, G = a->heads / a->kv_heads;             \
        if (C == 64 / LANES) ATTEND_G(64 / LANES, BF16)                       \
        if (C == 128 / LANES) ATTEND_G(128 / LANES, BF16)                     \
        attend_vec(a, row, kvh, C, G, BF16);                                  \
    }
DEFINE_FAST(paged_decode_f32_fast, 0)
DEFINE_FAST(paged_decode_bf16_fast, 1)
#else
static int fast_fits(const DecodeArgs *a) { (void)a; return 0; }
#define paged_decode_f32_fast paged_decode_f32_item
#define paged_decode_bf16_fast paged_decode_bf16_item
#endif

#define LOAD_F32(x) (x)
#define LOAD_BF16(x) bf16_load(x)

DEFINE_DECODE(paged_decode_f32, float, LOAD_F32)
DEFINE_DECODE(paged_decode_bf16, uint16_t, LOAD_BF16)

/* 1 where the vector path serves this shape: AVX-512 or AVX2, a head size of a multiple of
 * the vector width, at most MAX_GROUP query heads per kv head. */
int paged_decode_vector_fits(int heads, int kv_heads, int dim) {
    DecodeArgs a;
    memset(&a, 0, sizeof a);
    a.heads = heads;
    a.kv_heads = kv_heads;
    a.dim = dim;
    return kv_heads > 0 && heads % kv_heads == 0 && fast_fits(&a);
}
