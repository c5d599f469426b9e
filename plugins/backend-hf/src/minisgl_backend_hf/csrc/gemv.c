/* Linear layers for the few rows of a decode step, for CPUs: y = epilogue(x W^T + b).
 *
 * At one to four rows a projection reads each weight once and does two flops per weight
 * element per row, so its speed is the speed of streaming W from memory. W is packed once
 * (cpu_kernels.pack_gemv_weight) into blocks of BLOCK output rows whose CHUNK-long pieces
 * interleave, [out / BLOCK][in / CHUNK][BLOCK][CHUNK], so a block is one sequential read.
 * Each thread takes a contiguous run of blocks; every piece of W it loads serves all rows of
 * x while it is in registers. bf16 weights use AVX512-BF16's dot product (exact products,
 * float32 sums); float32 weights use whatever vector FMA the compiler targets. The
 * epilogues are those the decoder fuses into its projections: SiLU, a multiply by another
 * tensor, a residual add.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#define MAX_ROWS 4
#define BLOCK 4
#define CHUNK_BF16 32
#define CHUNK_F32 16

enum { EPI_NONE = 0, EPI_SILU = 1, EPI_MUL = 2, EPI_ADD = 3 };

typedef struct {
    const void *x;      /* [rows, x_stride] */
    const void *w;      /* packed, see above; out and in padded with zeros to BLOCK and CHUNK */
    const void *bias;   /* [out] or NULL */
    const void *other;  /* [rows, other_stride] for EPI_MUL / EPI_ADD */
    void *y;            /* [rows, y_stride] */
    int64_t rows, in, out, x_stride, other_stride, y_stride;
    int epilogue;
} GemvArgs;

static inline float epilogue(const GemvArgs *a, float v, int64_t r, int64_t o, int bf16) {
    if (a->bias) v += bf16 ? bf16_load(((const uint16_t *)a->bias)[o]) : ((const float *)a->bias)[o];
    if (a->epilogue == EPI_SILU) return v / (1.0f + expf(-v));
    if (a->epilogue == EPI_NONE) return v;
    const int64_t at = r * a->other_stride + o;
    const float other = bf16 ? bf16_load(((const uint16_t *)a->other)[at]) : ((const float *)a->other)[at];
    return a->epilogue == EPI_MUL ? v * other : v + other;
}

int gemv_bf16_available(void) {
#if defined(__AVX512BF16__)
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512BF16__)
/* One function per row count, so the accumulators of every row can live in registers. */
#define DEFINE_GEMV_BF16_ROWS(ROWS)                                                               \
    static void gemv_bf16_##ROWS(const GemvArgs *a, int threads) {                                \
        const int64_t blocks = (a->out + BLOCK - 1) / BLOCK;                                      \
        const int64_t chunks = (a->in + CHUNK_BF16 - 1) / CHUNK_BF16, whole = a->in / CHUNK_BF16; \
        const __mmask32 tail = (__mmask32)((1ull << (a->in % CHUNK_BF16)) - 1);                   \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                           \
        for (int64_t b = 0; b < blocks; b++) {                                                    \
            const uint16_t *w = (const uint16_t *)a->w + b * chunks * BLOCK * CHUNK_BF16;         \
            __m512 acc[ROWS][BLOCK];                                                              \
            for (int r = 0; r < ROWS; r++)                                                        \
                for (int j = 0; j < BLOCK; j++) acc[r][j] = _mm512_setzero_ps();                  \
            for (int64_t c = 0; c < chunks; c++, w += BLOCK * CHUNK_BF16) {                       \
                __m512i wv[BLOCK];                                                                \
                for (int j = 0; j < BLOCK; j++) wv[j] = _mm512_loadu_si512(w + j * CHUNK_BF16);   \
                for (int r = 0; r < ROWS; r++) {                                                  \
                    const uint16_t *xr = (const uint16_t *)a->x + r * a->x_stride + c * CHUNK_BF16; \
                    const __m512i xv = c < whole ? _mm512_loadu_si512(xr) : _mm512_maskz_loadu_epi16(tail, xr); \
                    for (int j = 0; j < BLOCK; j++)                                               \
                        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)xv, (__m512bh)wv[j]);   \
                }                                                                                 \
            }                                                                                     \
            for (int r = 0; r < ROWS; r++)                                                        \
                for (int j = 0; j < BLOCK && b * BLOCK + j < a->out; j++) {                       \
                    const int64_t o = b * BLOCK + j;                                              \
                    const float v = epilogue(a, _mm512_reduce_add_ps(acc[r][j]), r, o, 1);        \
                    ((uint16_t *)a->y)[r * a->y_stride + o] = bf16_store(v);                      \
                }                                                                                 \
        }                                                                                         \
    }

DEFINE_GEMV_BF16_ROWS(1)
DEFINE_GEMV_BF16_ROWS(2)
DEFINE_GEMV_BF16_ROWS(3)
DEFINE_GEMV_BF16_ROWS(4)
#endif

int gemv_bf16(const GemvArgs *a, int threads) {
#if defined(__AVX512BF16__)
    switch (a->rows) {
        case 1: gemv_bf16_1(a, threads); return 0;
        case 2: gemv_bf16_2(a, threads); return 0;
        case 3: gemv_bf16_3(a, threads); return 0;
        case 4: gemv_bf16_4(a, threads); return 0;
        default: return 1;
    }
#else
    (void)a;
    (void)threads;
    return 1;
#endif
}

/* One function per row count, so the accumulators of every row are registers. */
#define DEFINE_GEMV_F32_ROWS(ROWS)                                                              \
    static void gemv_f32_##ROWS(const GemvArgs *a, int threads) {                               \
        const int64_t blocks = (a->out + BLOCK - 1) / BLOCK;                                    \
        const int64_t chunks = (a->in + CHUNK_F32 - 1) / CHUNK_F32, whole = a->in / CHUNK_F32;  \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                         \
        for (int64_t b = 0; b < blocks; b++) {                                                  \
            const float *w = (const float *)a->w + b * chunks * BLOCK * CHUNK_F32;              \
            float acc[ROWS][BLOCK][CHUNK_F32] = {{{0}}};                                        \
            for (int64_t c = 0; c < chunks; c++, w += BLOCK * CHUNK_F32) {                      \
                float xv[ROWS][CHUNK_F32];                                                      \
                for (int r = 0; r < ROWS; r++) {                                                \
                    const float *xr = (const float *)a->x + r * a->x_stride + c * CHUNK_F32;    \
                    if (c < whole) memcpy(xv[r], xr, sizeof xv[r]);                             \
                    else for (int e = 0; e < CHUNK_F32; e++) xv[r][e] = c * CHUNK_F32 + e < a->in ? xr[e] : 0.0f; \
                }                                                                               \
                for (int j = 0; j < BLOCK; j++)                                                 \
                    for (int r = 0; r < ROWS; r++)                                              \
                        for (int e = 0; e < CHUNK_F32; e++) acc[r][j][e] += xv[r][e] * w[j * CHUNK_F32 + e]; \
            }                                                                                   \
            for (int r = 0; r < ROWS; r++)                                                      \
                for (int j = 0; j < BLOCK && b * BLOCK + j < a->out; j++) {                     \
                    float s = 0.0f;                                                             \
                    for (int e = 0; e < CHUNK_F32; e++) s += acc[r][j][e];                      \
                    ((float *)a->y)[r * a->y_stride + b * BLOCK + j] = epilogue(a, s, r, b * BLOCK + j, 0); \
                }                                                                               \
        }                                                                                       \
    }

DEFINE_GEMV_F32_ROWS(1)
DEFINE_GEMV_F32_ROWS(2)
DEFINE_GEMV_F32_ROWS(3)
DEFINE_GEMV_F32_ROWS(4)

int gemv_f32(const GemvArgs *a, int threads) {
    switch (a->rows) {
        case 1: gemv_f32_1(a, threads); return 0;
        case 2: gemv_f32_2(a, threads); return 0;
        case 3: gemv_f32_3(a, threads); return 0;
        case 4: gemv_f32_4(a, threads); return 0;
        default: return 1;
    }
}
