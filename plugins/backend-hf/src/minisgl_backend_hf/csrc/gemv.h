/* What the few-row linear kernels (gemv.c, rows_bf16.c) take: y = epilogue(x W^T + b) with W
 * in the kernel's packed layout, and the epilogues the decoder fuses into its projections
 * (each kernel applies them to its own dtype). */
#ifndef MINISGL_GEMV_H
#define MINISGL_GEMV_H

#include <stdint.h>

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

#endif
