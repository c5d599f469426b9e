/* bf16 linear layers for decode batches of up to a few dozen rows: y = epilogue(x W^T + b).
 *
 * W is packed once (cpu_kernels.pack_gemv_weight) into blocks of TILE output features,
 * [out / TILE][in / 2][TILE][2], zero-padded: for each pair of input features, the TILE
 * outputs' two weights side by side, the operand layout of AVX512-BF16's dot product. A
 * thread takes a contiguous run of blocks; for each group of up to GROUP rows of x it runs over the
 * block once, each step broadcasting one pair of x per row against two vectors of W, so
 * the accumulators (GROUP rows x TILE outputs) stay in registers and every weight loaded
 * serves every row of the group. The block (TILE x in bf16) stays in cache from one group
 * to the next, so W streams from memory once per call whatever the row count.
 * Products are exact and sums float32, as in gemv.c; the epilogues (gemv.h) run on 16
 * outputs at a time.
 */
#include <stdint.h>
#include <string.h>

#include "gemv.h"
#include "simd.h"

#define TILE 32
#define GROUP 8

#if defined(__AVX512BF16__)
/* The epilogue on 16 outputs o.. of row r, rounded to bf16 as torch rounds (nearest even). */
static inline void store16(const GemvArgs *a, __m512 v, int64_t r, int64_t o) {
    const int64_t left = a->out - o;
    const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    if (a->bias) v = _mm512_add_ps(v, load16((const uint16_t *)a->bias + o, m));
    if (a->epilogue == EPI_SILU) {
        v = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
    } else if (a->epilogue != EPI_NONE) {
        const __m512 other = load16((const uint16_t *)a->other + r * a->other_stride + o, m);
        v = a->epilogue == EPI_MUL ? _mm512_mul_ps(v, other) : _mm512_add_ps(v, other);
    }
    _mm256_mask_storeu_epi16((uint16_t *)a->y + r * a->y_stride + o, m, (__m256i)_mm512_cvtneps_pbh(v));
}

/* One step: the pair of x at column 2p of every row (`pair_of`) against two vectors of W. */
#define ROWS_STEP(ROWS, pair_of)                                                                  \
    do {                                                                                          \
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wb);                                     \
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wb + TILE);                              \
        for (int r = 0; r < ROWS; r++) {                                                          \
            const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)pair_of(x + r * a->x_stride + 2 * p)); \
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, w0);                                      \
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, w1);                                      \
        }                                                                                         \
    } while (0)

static inline uint32_t both(const uint16_t *x) {
    uint32_t pair;
    memcpy(&pair, x, sizeof pair);
    return pair;
}

static inline uint32_t first(const uint16_t *x) { return x[0]; } /* an odd last column pairs with 0 */

#define DEFINE_ROWS_GROUP(ROWS)                                                                   \
    static void rows_group_##ROWS(const GemvArgs *a, const uint16_t *wb, const uint16_t *x,       \
                                  int64_t r0, int64_t o0) {                                       \
        __m512 acc[ROWS][2];                                                                      \
        for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();               \
        int64_t p = 0;                                                                            \
        for (; p < a->in / 2; p++, wb += 2 * TILE) ROWS_STEP(ROWS, both);                         \
        if (a->in % 2) ROWS_STEP(ROWS, first);                                                    \
        for (int r = 0; r < ROWS; r++)                                                            \
            for (int h = 0; h < 2 && o0 + 16 * h < a->out; h++)                                   \
                store16(a, acc[r][h], r0 + r, o0 + 16 * h);                                       \
    }

DEFINE_ROWS_GROUP(1)
DEFINE_ROWS_GROUP(2)
DEFINE_ROWS_GROUP(3)
DEFINE_ROWS_GROUP(4)
DEFINE_ROWS_GROUP(5)
DEFINE_ROWS_GROUP(6)
DEFINE_ROWS_GROUP(7)
DEFINE_ROWS_GROUP(8)

typedef void (*RowsGroup)(const GemvArgs *, const uint16_t *, const uint16_t *, int64_t, int64_t);
static const RowsGroup GROUPS[GROUP + 1] = {NULL, rows_group_1, rows_group_2, rows_group_3, rows_group_4,
                                            rows_group_5, rows_group_6, rows_group_7, rows_group_8};
#endif

int rows_bf16_available(void) {
#if defined(__AVX512BF16__)
    return 1;
#else
    return 0;
#endif
}

/* 0 on success; 1 without AVX512-BF16. */
int rows_bf16(const GemvArgs *a, int threads) {
#if defined(__AVX512BF16__)
    const int64_t blocks = (a->out + TILE - 1) / TILE, pairs = (a->in + 1) / 2;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const uint16_t *wb = (const uint16_t *)a->w + b * pairs * 2 * TILE;
        for (int64_t r0 = 0; r0 < a->rows; r0 += GROUP) {
            const int64_t n = a->rows - r0 < GROUP ? a->rows - r0 : GROUP;
            GROUPS[n](a, wb, (const uint16_t *)a->x + r0 * a->x_stride, r0, b * TILE);
        }
    }
    return 0;
#else
    (void)a;
    (void)threads;
    return 1;
#endif
}
