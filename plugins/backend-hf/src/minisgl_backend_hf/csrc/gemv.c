/* float32 linear layers for the few rows of a decode step, for CPUs: y = epilogue(x W^T + b)
 * (bf16 weights: rows_bf16.c).
 *
 * At one to four rows a projection reads each weight once and does two flops per weight
 * element per row, so its speed is the speed of streaming W from memory. W is packed once
 * (cpu_kernels.pack_gemv_weight) into blocks of BLOCK output rows whose CHUNK-long pieces
 * interleave, [out / BLOCK][in / CHUNK][BLOCK][CHUNK], so a block is one sequential read.
 * Each thread takes a contiguous run of blocks; every piece of W it loads serves all rows of
 * x while it is in registers, with whatever vector FMA the compiler targets. The epilogues
 * (gemv.h) are those the decoder fuses into its projections: SiLU, a multiply by another
 * tensor, a residual add.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gemv.h"

static inline float epilogue(const GemvArgs *a, float v, int64_t r, int64_t o) {
    if (a->bias) v += ((const float *)a->bias)[o];
    if (a->epilogue == EPI_SILU) return v / (1.0f + expf(-v));
    if (a->epilogue == EPI_NONE) return v;
    const float other = ((const float *)a->other)[r * a->other_stride + o];
    return a->epilogue == EPI_MUL ? v * other : v + other;
}

#define BLOCK 4
#define CHUNK_F32 16

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
                    ((float *)a->y)[r * a->y_stride + b * BLOCK + j] = epilogue(a, s, r, b * BLOCK + j); \
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
