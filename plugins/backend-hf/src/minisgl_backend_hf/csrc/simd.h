/* The vector operations the kernels share, on the widest vectors the build's -march has.
 *
 * AVX-512 (with BW): load16 and exp16 for the bf16 linear kernel, and the width-generic set
 * below on 16 lanes. AVX2 with FMA: the width-generic set on 8 lanes. MINISGL_LANES names
 * the width; without either it is undefined and callers keep their portable C. */
#ifndef MINISGL_SIMD_H
#define MINISGL_SIMD_H

#include <stdint.h>

/* 2^f for |f| <= 1/2 by its Taylor series to degree 6, highest power first (Horner): both
 * widths' exp. */
static const float EXP2_TAYLOR[7] = {1.5403530393381609e-4f, 1.3333558146428443e-3f, 9.6181291076284772e-3f,
                                     5.5504108664821580e-2f, 2.4022650695910071e-1f, 6.9314718055994531e-1f,
                                     1.0f};

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MINISGL_LANES 16

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
    __m512 p = _mm512_set1_ps(EXP2_TAYLOR[0]);
    for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_TAYLOR[i]));
    return _mm512_scalef_ps(p, n);
}

typedef __m512 vfloat;
static inline vfloat v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vfloat v) { _mm512_storeu_ps(p, v); }
static inline vfloat v_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vfloat v_set1(float x) { return _mm512_set1_ps(x); }
static inline vfloat v_zero(void) { return _mm512_setzero_ps(); }
static inline vfloat v_mul(vfloat a, vfloat b) { return _mm512_mul_ps(a, b); }
static inline vfloat v_sub(vfloat a, vfloat b) { return _mm512_sub_ps(a, b); }
static inline vfloat v_fma(vfloat a, vfloat b, vfloat c) { return _mm512_fmadd_ps(a, b, c); } /* a b + c */
static inline vfloat v_exp(vfloat x) { return exp16(x); }
static inline float v_max_of(vfloat v) { return _mm512_reduce_max_ps(v); }
static inline float v_sum_of(vfloat v) { return _mm512_reduce_add_ps(v); }
/* lanes from n on set to `fill` */
static inline vfloat v_first(vfloat v, int n, float fill) {
    return _mm512_mask_blend_ps((__mmask16)((1u << n) - 1), _mm512_set1_ps(fill), v);
}
/* Lane j of the result: the sum of r[j]'s lanes (a transpose folded into the adds). */
static inline vfloat v_sum_each(const vfloat *r) {
    __m512 a[8], b[4];
    for (int i = 0; i < 8; i++) /* a[i]: 8 partials of r[2i], then 8 of r[2i+1] */
        a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++) /* b[i]: 4 partials of r[4i], r[4i+1], r[4i+2], r[4i+3] */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
    const __m512 c0 = _mm512_add_ps(_mm512_unpacklo_ps(b[0], b[1]), _mm512_unpackhi_ps(b[0], b[1]));
    const __m512 c1 = _mm512_add_ps(_mm512_unpacklo_ps(b[2], b[3]), _mm512_unpackhi_ps(b[2], b[3]));
    const __m512 d = _mm512_add_ps(_mm512_shuffle_ps(c0, c1, 0x44), _mm512_shuffle_ps(c0, c1, 0xEE));
    /* lane 4q + t of d holds r[4t + q] */
    return _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), d);
}

#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MINISGL_LANES 8

typedef __m256 vfloat;
static inline vfloat v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vfloat v) { _mm256_storeu_ps(p, v); }
static inline vfloat v_load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline vfloat v_set1(float x) { return _mm256_set1_ps(x); }
static inline vfloat v_zero(void) { return _mm256_setzero_ps(); }
static inline vfloat v_mul(vfloat a, vfloat b) { return _mm256_mul_ps(a, b); }
static inline vfloat v_sub(vfloat a, vfloat b) { return _mm256_sub_ps(a, b); }
static inline vfloat v_fma(vfloat a, vfloat b, vfloat c) { return _mm256_fmadd_ps(a, b, c); }
/* exp16's method, with 2^n built in the exponent bits (|x| <= 88 keeps n + 127 in 0..254;
 * at 0 the result is 0, where e^x is below float32's normal range) */
static inline vfloat v_exp(vfloat x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-88.0f));
    const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(EXP2_TAYLOR[0]);
    for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_TAYLOR[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline float v_max_of(vfloat v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
static inline float v_sum_of(vfloat v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
static inline vfloat v_first(vfloat v, int n, float fill) {
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(keep));
}
/* Lane j of the result: the sum of r[j]'s lanes. */
static inline vfloat v_sum_each(const vfloat *r) {
    /* hadd pairs within 128-bit halves: u0 holds r[0..3]'s low-half sums, then their high-half ones */
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(r[0], r[1]), _mm256_hadd_ps(r[2], r[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(r[4], r[5]), _mm256_hadd_ps(r[6], r[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

#endif
