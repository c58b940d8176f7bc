#include <stdint.h>
#include <math.h>
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

/* Dynamic INT8 for linear layers (see quant_retriever/models/int8.py). quantize_rows_u8: per-row
   symmetric INT8 of float rows x [m, k], scale[i] = max|x_i| / 127 (1 for a zero row), stored
   as uint8 q = round(x / scale) + 128 (oneDNN's u8 with zero point 128). A row whose largest
   |x| exceeds ratio times the next largest (a "massive activation", as BERT's [CLS] and [SEP]
   tokens carry) is quantized without it: its scale comes from the next largest, q = 128 at its
   column, and col[i]/val[i] return the column and value (-1 and 0 for the other rows; ratio 0
   turns this off). Returns the number of such rows. rescale_rows: y[i, j] = y[i, j] * s[i] +
   b[j] in place (b may be NULL), then GELU if asked. */
static inline int quantize_row_u8(const float* xi, int64_t k, uint8_t* qi, float* scale, float ratio,
                                  int32_t* col, float* val) {
    float amax = 0.f;
    int64_t j = 0;
#ifdef __AVX512F__
    __m512 vmax = _mm512_setzero_ps();
    for (; j + 16 <= k; j += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xi + j)));
    amax = _mm512_reduce_max_ps(vmax);
#endif
    for (; j < k; j++) { const float a = fabsf(xi[j]); amax = a > amax ? a : amax; }
    /* the next largest |x|: the largest below amax, or amax itself when it occurs twice */
    float next = 0.f;
    int64_t ties = 0;
    if (ratio > 0.f && amax > 0.f) {
        j = 0;
#ifdef __AVX512F__
        const __m512 va = _mm512_set1_ps(amax);
        __m512 vnext = _mm512_setzero_ps();
        for (; j + 16 <= k; j += 16) {
            const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(xi + j));
            const __mmask16 top = _mm512_cmp_ps_mask(a, va, _CMP_EQ_OQ);
            ties += __builtin_popcount((unsigned)top);
            vnext = _mm512_mask_max_ps(vnext, (__mmask16)~top, vnext, a);
        }
        next = _mm512_reduce_max_ps(vnext);
#endif
        for (; j < k; j++) {
            const float a = fabsf(xi[j]);
            if (a == amax) ties++;
            else if (a > next) next = a;
        }
        if (ties > 1) next = amax;
    }
    int64_t spike = -1;
    if (ratio > 0.f && amax > ratio * next) {
        for (spike = 0; fabsf(xi[spike]) != amax; spike++) {}
        amax = next;
    }
    const float s = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / s;
    j = 0;
#ifdef __AVX512F__
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i zp = _mm512_set1_epi32(128);
    for (; j + 16 <= k; j += 16) {  /* cvtps rounds to nearest even, like lrintf */
        const __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xi + j), vinv)), zp);
        _mm_storeu_si128((__m128i*)(qi + j), _mm512_cvtepi32_epi8(r));
    }
#endif
    for (; j < k; j++) qi[j] = (uint8_t)((int32_t)lrintf(xi[j] * inv) + 128);
    *scale = s;
    if (col) {
        *col = (int32_t)spike;
        *val = spike >= 0 ? xi[spike] : 0.f;
    }
    if (spike < 0) return 0;
    qi[spike] = 128;
    return 1;
}

int quantize_rows_u8(const float* x, int64_t m, int64_t k, uint8_t* q, float* scale, float ratio, int32_t* col,
                     float* val, int nthreads) {
    int spikes = 0;
    #pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+:spikes)
    for (int64_t i = 0; i < m; i++)
        spikes += quantize_row_u8(x + i * k, k, q + i * k, scale + i, ratio, col ? col + i : 0, val ? val + i : 0);
    return spikes;
}

/* erf(x) to about 1e-7: the rational approximation of Eigen and XLA (odd polynomial of degree
   13 over even of degree 8, inputs clamped to [-4, 4]); plain arithmetic, so it vectorises. */
static inline float erf_approx(float x) {
    x = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);
    const float x2 = x * x;
    float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
    p = x2 * p + -2.10102402082508e-06f;
    p = x2 * p + -5.69250639462346e-05f;
    p = x2 * p + -7.34990630326855e-04f;
    p = x2 * p + -2.95459980854025e-03f;
    p = x2 * p + -1.60960333262415e-02f;
    float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
    q = x2 * q + -1.68282697438203e-03f;
    q = x2 * q + -7.37332916720468e-03f;
    q = x2 * q + -1.42647390514189e-02f;
    return x * p / q;
}

/* q/qscale/col/val (may be NULL): also the rows' quantize_rows_u8, while they are in cache;
   returns its count of rows with a massive activation */
int rescale_rows(float* y, int64_t m, int64_t n, const float* s, const float* b, int gelu,
                 uint8_t* q, float* qscale, float ratio, int32_t* col, float* val, int nthreads) {
    int spikes = 0;
    #pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+:spikes)
    for (int64_t i = 0; i < m; i++) {
        float* yi = y + i * n;
        const float si = s[i];
        if (b) for (int64_t j = 0; j < n; j++) yi[j] = yi[j] * si + b[j];
        else for (int64_t j = 0; j < n; j++) yi[j] *= si;
        if (gelu) for (int64_t j = 0; j < n; j++) yi[j] = 0.5f * yi[j] * (1.f + erf_approx(yi[j] * 0.70710678118654752f));
        if (q) spikes += quantize_row_u8(yi, n, q + i * n, qscale + i, ratio, col ? col + i : 0, val ? val + i : 0);
    }
    return spikes;
}

/* y = LayerNorm(y * s[i] + b + res) per row, in place: a BERT block's output layer, its
   residual connection and its normalisation in one pass (b may be NULL). */
void rescale_add_layernorm(float* y, int64_t m, int64_t n, const float* s, const float* b, const float* res,
                           const float* gamma, const float* beta, float eps, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < m; i++) {
        float* yi = y + i * n;
        const float* ri = res + i * n;
        const float si = s[i];
        float sum = 0.f;
        for (int64_t j = 0; j < n; j++) {
            const float v = yi[j] * si + (b ? b[j] : 0.f) + ri[j];
            yi[j] = v;
            sum += v;
        }
        const float mean = sum / (float)n;
        float var = 0.f;
        for (int64_t j = 0; j < n; j++) { const float d = yi[j] - mean; var += d * d; }
        const float inv = 1.f / sqrtf(var / (float)n + eps);
        for (int64_t j = 0; j < n; j++) yi[j] = (yi[j] - mean) * inv * gamma[j] + beta[j];
    }
}

