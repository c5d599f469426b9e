/* What the few-row linear kernels (gemv.c, rows_bf16.c) take: y = epilogue(x W^T + b) with W
 * in the kernel's packed layout, and the epilogues the decoder fuses into its projections. */
#ifndef MINISGL_GEMV_H
#define MINISGL_GEMV_H

#include <math.h>
#include <stdint.h>

#include "bf16.h"

enum { EPI_NONE = 0, EPI_SILU = 1, EPI_MUL = 2, EPI_ADD = 3 };

typedef struct {
    const void *x;      /* [rows, x_stride] */
    const void *w;      /* in the kernel's packed layout, zero-padded */
    const void *bias;   /* [out] or NULL */
    const void *other;  /* [rows, other_stride] for EPI_MUL / EPI_ADD */
    void *y;            /* [rows, y_stride] */
    int64_t rows, in, out, x_stride, other_stride, y_stride;
    int epilogue;
} GemvArgs;

static inline float gemv_epilogue(const GemvArgs *a, float v, int64_t r, int64_t o, int bf16) {
    if (a->bias) v += bf16 ? bf16_load(((const uint16_t *)a->bias)[o]) : ((const float *)a->bias)[o];
    if (a->epilogue == EPI_SILU) return v / (1.0f + expf(-v));
    if (a->epilogue == EPI_NONE) return v;
    const int64_t at = r * a->other_stride + o;
    const float other = bf16 ? bf16_load(((const uint16_t *)a->other)[at]) : ((const float *)a->other)[at];
    return a->epilogue == EPI_MUL ? v * other : v + other;
}

#endif
