/* AVX-512 helpers the kernels share: bf16 loads and a vector exp. */
#ifndef MINISGL_VEC512_H
#define MINISGL_VEC512_H

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define MINISGL_VEC512 1
#include <immintrin.h>

/* 16 bf16 values at p (lanes outside `m` read as 0) widened to float32: exact. */
static inline __m512 load16(const void *p, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* e^x to about 1 ulp: 2^(x log2 e) split into 2^n (scalef) and 2^f, |f| <= 1/2, by its
 * Taylor series to degree 6 (error under 2e-7). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    static const float c[] = {1.5403530393381609e-4f, 1.3333558146428443e-3f, 9.6181291076284772e-3f,
                              5.5504108664821580e-2f, 2.4022650695910071e-1f, 6.9314718055994531e-1f, 1.0f};
    __m512 p = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(p, n);
}
#endif

#endif
