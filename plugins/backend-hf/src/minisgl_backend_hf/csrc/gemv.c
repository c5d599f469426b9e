/* Linear layers for the few rows of a decode step, for CPUs: y = epilogue(x W^T + b).
 *
 * At one to four rows a projection reads each weight once and does two flops per weight
 * element per row, so its speed is the speed of streaming W from memory. Each thread walks
 * a contiguous run of output rows, four at a time, and every weight vector it loads is used
 * for all rows of x while in a register. bf16 weights use AVX512-BF16's dot product (exact
 * products, float32 sums); float32 weights use whatever vector FMA the compiler targets.
 * The epilogues are those the decoder fuses into its projections: SiLU, a multiply by
 * another tensor, a residual add.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#define MAX_ROWS 4
#define BLOCK 4

enum { EPI_NONE = 0, EPI_SILU = 1, EPI_MUL = 2, EPI_ADD = 3 };

typedef struct {
    const void *x;      /* [rows, x_stride] */
    const void *w;      /* [out, in], rows contiguous */
    const void *bias;   /* [out] or NULL */
    const void *other;  /* [rows, other_stride] for EPI_MUL / EPI_ADD */
    void *y;            /* [rows, y_stride] */
    int64_t rows, in, out, x_stride, other_stride, y_stride;
    int epilogue;
} GemvArgs;

static inline float bf16_load(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_store(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

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

int gemv_bf16(const GemvArgs *a, int threads) {
#if defined(__AVX512BF16__)
    if (a->rows < 1 || a->rows > MAX_ROWS) return 1;
    const int64_t blocks = (a->out + BLOCK - 1) / BLOCK, in = a->in, rows = a->rows;
    const __mmask32 tail = (__mmask32)((1ull << (in % 32)) - 1);
    const int64_t whole = in - in % 32;
    _Pragma("omp parallel for schedule(static) num_threads(threads)")
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t o0 = b * BLOCK;
        const uint16_t *w[BLOCK];
        for (int j = 0; j < BLOCK; j++)
            w[j] = (const uint16_t *)a->w + (o0 + j < a->out ? o0 + j : o0) * in;
        __m512 acc[MAX_ROWS][BLOCK];
        for (int r = 0; r < MAX_ROWS; r++)
            for (int j = 0; j < BLOCK; j++) acc[r][j] = _mm512_setzero_ps();
        for (int64_t i = 0; i < in; i += 32) {
            const int full = i < whole;
            __m512i wv[BLOCK];
            for (int j = 0; j < BLOCK; j++)
                wv[j] = full ? _mm512_loadu_si512(w[j] + i) : _mm512_maskz_loadu_epi16(tail, w[j] + i);
            for (int r = 0; r < rows; r++) {
                const uint16_t *xr = (const uint16_t *)a->x + r * a->x_stride + i;
                const __m512i xv = full ? _mm512_loadu_si512(xr) : _mm512_maskz_loadu_epi16(tail, xr);
                for (int j = 0; j < BLOCK; j++)
                    acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)xv, (__m512bh)wv[j]);
            }
        }
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < BLOCK && o0 + j < a->out; j++) {
                const float v = epilogue(a, _mm512_reduce_add_ps(acc[r][j]), r, o0 + j, 1);
                ((uint16_t *)a->y)[r * a->y_stride + o0 + j] = bf16_store(v);
            }
    }
    return 0;
#else
    (void)a;
    (void)threads;
    return 1;
#endif
}

int gemv_f32(const GemvArgs *a, int threads) {
    if (a->rows < 1 || a->rows > MAX_ROWS) return 1;
    const int64_t blocks = (a->out + BLOCK - 1) / BLOCK, in = a->in, rows = a->rows;
    _Pragma("omp parallel for schedule(static) num_threads(threads)")
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t o0 = b * BLOCK;
        const int n = a->out - o0 < BLOCK ? (int)(a->out - o0) : BLOCK;
        for (int r = 0; r < rows; r++) {
            const float *xr = (const float *)a->x + r * a->x_stride;
            for (int j = 0; j < n; j++) {
                const float *wj = (const float *)a->w + (o0 + j) * in;
                float s = 0.0f;
                for (int64_t i = 0; i < in; i++) s += xr[i] * wj[i];
                ((float *)a->y)[r * a->y_stride + o0 + j] = epilogue(a, s, r, o0 + j, 0);
            }
        }
    }
    return 0;
}
