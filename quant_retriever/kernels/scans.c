#include <stdint.h>
#include <limits.h>
#include <stdlib.h>
#include <math.h>
#include <float.h>
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#ifdef __F16C__
static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
#else
#include <string.h>
static inline float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) {
        if (m == 0) { bits = s; }
        else { e = 113; while (!(m & 0x400)) { m <<= 1; e--; } bits = s | (e << 23) | ((m & 0x3ff) << 13); }
    } else if (e == 31) { bits = s | 0x7f800000 | (m << 13); }
    else { bits = s | ((e + 112) << 23) | (m << 13); }
    float f; memcpy(&f, &bits, 4); return f;
}
#endif

/* Float32 factors stored in a row's tail (norms, scales); rows are 4-byte aligned. */
static inline float row_factor(const uint8_t* row, int64_t offset, int64_t count) {
    float f = 1.f;
    for (int64_t i = 0; i < count; i++) f *= ((const float*)(row + offset))[i];
    return f;
}

/* ---------------------------------------------------------------- dots of one decoded row
   buf [p] floats (p a multiple of 16, zero-padded), queries q [nq, p] (zero-padded the same
   way); out[qi * n + r] = f * <q[qi], buf> for qi < nq. Batches go through tiles instead
   (tile_dots). */
static inline void row_dots(const float* buf, const float* q, int64_t p, int64_t nq, float f,
                            float* out, int64_t n, int64_t r) {
#ifdef __AVX512F__
    for (int64_t qi = 0; qi < nq; qi++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const float* qq = q + qi * p;
        int64_t j = 0;
        for (; j + 32 <= p; j += 32) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j), _mm512_loadu_ps(buf + j), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j + 16), _mm512_loadu_ps(buf + j + 16), a1);
        }
        if (j < p) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qq + j), _mm512_loadu_ps(buf + j), a0);
        out[qi * n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * f;
    }
#else
    for (int64_t qi = 0; qi < nq; qi++) {
        const float* qq = q + qi * p;
        float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int64_t j = 0; j < p; j += 8)
            for (int k = 0; k < 8; k++) a[k] += qq[j + k] * buf[j + k];
        out[qi * n + r] = (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) * f;
    }
#endif
}

static inline void skip_row(float* out, int64_t n, int64_t r, int64_t nq) {
    for (int64_t qi = 0; qi < nq; qi++) out[qi * n + r] = -INFINITY;
}

/* ---------------------------------------------------------------- all scores, or the best kept
   Scans score BLK rows at a time into s [nq, BLK] and hand the block to a sink: every score
   into out [nq, n], or (out NULL) each query's best `keep` rows, kept in a heap per thread
   and merged at the end into top_s / top_r [nq, keep], best first. The order is total:
   higher score first, ties to the lower row, NaN as -inf; rows a scan skips score -inf, so
   they come last (and only when fewer than `keep` rows are valid). */
#define BLK 64
typedef struct {
    float* out;
    int64_t n, nq, keep;
    float* top_s;
    int64_t* top_r;
    float* hs;      /* [threads, nq, keep] heaps: the worst kept entry at the root */
    int64_t* hr;
    int64_t* cnt;   /* [threads, nq] */
    int threads;
} sink;

static int sink_open(sink* k, float* out, int64_t n, int64_t nq, int64_t keep, float* top_s, int64_t* top_r,
                     int threads) {
    *k = (sink){out, n, nq, keep, top_s, top_r, NULL, NULL, NULL, threads};
    if (out) return 0;
    const size_t slots = (size_t)threads * (size_t)nq * (size_t)keep;
    k->hs = (float*)malloc(slots * sizeof(float));
    k->hr = (int64_t*)malloc(slots * sizeof(int64_t));
    k->cnt = (int64_t*)calloc((size_t)threads * (size_t)nq, sizeof(int64_t));
    if (k->hs && k->hr && k->cnt) return 0;
    free(k->hs); free(k->hr); free(k->cnt);
    return -1;
}

static inline int worse(const float* hs, const int64_t* hr, int64_t a, int64_t b) {
    return hs[a] < hs[b] || (hs[a] == hs[b] && hr[a] > hr[b]);
}

static inline void heap_swap(float* hs, int64_t* hr, int64_t a, int64_t b) {
    const float s = hs[a]; hs[a] = hs[b]; hs[b] = s;
    const int64_t r = hr[a]; hr[a] = hr[b]; hr[b] = r;
}

/* Replace the root (the worst kept entry) and restore the heap. */
static inline void heap_replace(float* hs, int64_t* hr, int64_t cnt, float s, int64_t r) {
    hs[0] = s; hr[0] = r;
    for (int64_t i = 0;;) {
        const int64_t a = 2 * i + 1, b = a + 1;
        int64_t w = i;
        if (a < cnt && worse(hs, hr, a, w)) w = a;
        if (b < cnt && worse(hs, hr, b, w)) w = b;
        if (w == i) return;
        heap_swap(hs, hr, i, w);
        i = w;
    }
}

static inline void heap_add(float* hs, int64_t* hr, int64_t* cnt, float s, int64_t r) {
    int64_t i = (*cnt)++;
    hs[i] = s; hr[i] = r;
    for (; i > 0 && worse(hs, hr, i, (i - 1) / 2); i = (i - 1) / 2) heap_swap(hs, hr, i, (i - 1) / 2);
}

/* Rows r0..r0+m of one thread (each thread sees its rows in increasing order, so a later row
   scoring equal to the root is the worse one and stays out). */
static inline void sink_block(const sink* k, int t, const float* s, int64_t r0, int64_t m) {
    if (k->out) {
        for (int64_t qi = 0; qi < k->nq; qi++)
            for (int64_t i = 0; i < m; i++) k->out[qi * k->n + r0 + i] = s[qi * BLK + i];
        return;
    }
    for (int64_t qi = 0; qi < k->nq; qi++) {
        const int64_t h = ((int64_t)t * k->nq + qi);
        float* hs = k->hs + h * k->keep;
        int64_t* hr = k->hr + h * k->keep;
        int64_t* cnt = k->cnt + h;
        const float* sq = s + qi * BLK;
        int64_t i = 0;
        for (; i < m && *cnt < k->keep; i++) heap_add(hs, hr, cnt, sq[i] == sq[i] ? sq[i] : -INFINITY, r0 + i);
#ifdef __AVX512F__
        for (; i + 16 <= m; i += 16) {  /* most blocks hold nothing better than the root */
            __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(sq + i), _mm512_set1_ps(hs[0]), _CMP_GT_OQ);
            for (; hit; hit &= hit - 1) {
                const int b = __builtin_ctz(hit);
                if (sq[i + b] > hs[0]) heap_replace(hs, hr, *cnt, sq[i + b], r0 + i + b);
            }
        }
#endif
        for (; i < m; i++)
            if (sq[i] > hs[0]) heap_replace(hs, hr, *cnt, sq[i], r0 + i);
    }
}

typedef struct { float s; int64_t r; } scored;

static int better_first(const void* a, const void* b) {
    const scored* x = (const scored*)a;
    const scored* y = (const scored*)b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

/* Merge the threads' heaps into top_s / top_r and free them. Returns -1 without memory. */
static int sink_close(sink* k) {
    int status = 0;
    if (!k->out) {
        scored* all = (scored*)malloc((size_t)k->threads * (size_t)k->keep * sizeof(scored));
        for (int64_t qi = 0; all && qi < k->nq; qi++) {
            int64_t c = 0;
            for (int t = 0; t < k->threads; t++) {
                const int64_t h = (int64_t)t * k->nq + qi;
                for (int64_t j = 0; j < k->cnt[h]; j++)
                    all[c++] = (scored){k->hs[h * k->keep + j], k->hr[h * k->keep + j]};
            }
            qsort(all, (size_t)c, sizeof(scored), better_first);
            for (int64_t j = 0; j < k->keep; j++) {
                k->top_s[qi * k->keep + j] = all[j].s;
                k->top_r[qi * k->keep + j] = all[j].r;
            }
        }
        status = all ? 0 : -1;
        free(all);
    }
    free(k->hs); free(k->hr); free(k->cnt);
    return status;
}

/* ---------------------------------------------------------------- batch scans
   A row format plugs in a decoder: fill buf [p16] with row r as floats (zeros past its
   elements) and return the factor its dots are multiplied by. */
typedef float (*decode_fn)(const void* ctx, int64_t r, float* buf);

#define TILE 8  /* rows a tile: 8 rows x 2 vectors of 16 queries = 16 accumulators */
#ifdef __AVX512F__
/* Dots of a tile of m <= TILE decoded rows buf [TILE, p] with the queries qt [p, nqt]
   (transposed, zero-padded to nqt, a multiple of 32): each step broadcasts one element of
   each row against 32 queries, so every query value loaded serves 8 rows.
   out[qi * n + i] = f[i] * <buf[i], q[qi]> for i < m, qi < nq. W: vectors of 16 queries. */
static inline __attribute__((always_inline)) void tile_dots(const float* buf, const float* qt, int64_t p,
                                                            int64_t nqt, int64_t g, int64_t nq, const float* f,
                                                            int64_t m, float* out, int64_t n, const int W) {
    __m512 acc[TILE][2];
    for (int i = 0; i < TILE; i++)
        for (int w = 0; w < W; w++) acc[i][w] = _mm512_setzero_ps();
    for (int64_t j = 0; j < p; j++) {
        __m512 qv[2];
        for (int w = 0; w < W; w++) qv[w] = _mm512_loadu_ps(qt + j * nqt + g + 16 * w);
        for (int i = 0; i < TILE; i++) {
            const __m512 x = _mm512_set1_ps(buf[i * p + j]);
            for (int w = 0; w < W; w++) acc[i][w] = _mm512_fmadd_ps(x, qv[w], acc[i][w]);
        }
    }
    for (int64_t i = 0; i < m; i++) {
        float s[32];
        for (int w = 0; w < W; w++) _mm512_storeu_ps(s + 16 * w, _mm512_mul_ps(acc[i][w], _mm512_set1_ps(f[i])));
        const int64_t lanes = nq - g < 16 * W ? nq - g : 16 * W;
        for (int64_t l = 0; l < lanes; l++) out[(g + l) * n + i] = s[l];
    }
}
#endif

/* The queries q [nq, p16] (see row_dots) against rows 0..n of a format (decode, ctx), into
   a sink; rows with valid[r] == 0 (valid may be NULL) score -inf. Few queries: each row
   decoded then dotted with every query (row_dots). From 8 queries, with AVX-512: tiles of
   TILE rows against the transposed queries (tile_dots), a GEMM-like register blocking.
   Returns -1 without memory. */
static inline __attribute__((always_inline)) int scan_rows(const void* ctx, decode_fn decode, int64_t n,
                                                           const float* q, int64_t nq, int64_t p16,
                                                           const uint8_t* valid, sink* k) {
    float* qt = NULL;
    int64_t nqt = 0;
#ifdef __AVX512F__
    if (nq >= 8) {
        nqt = (nq + 31) / 32 * 32;
        qt = (float*)calloc((size_t)(p16 * nqt), sizeof(float));
        if (!qt) return -1;
        for (int64_t qi = 0; qi < nq; qi++)
            for (int64_t j = 0; j < p16; j++) qt[j * nqt + qi] = q[qi * p16 + j];
    }
#endif
    int failed = 0;
    #pragma omp parallel num_threads(k->threads)
    {
        float* buf = (float*)calloc((size_t)((qt ? TILE : 1) * p16), sizeof(float));
        float* s = (float*)malloc((size_t)(nq * BLK) * sizeof(float));
        float f[TILE];
        if (!buf || !s) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < n; r0 += BLK) {
            if (!buf || !s) continue;
            const int64_t m = n - r0 < BLK ? n - r0 : BLK;
#ifdef __AVX512F__
            if (qt) {
                for (int64_t i0 = 0; i0 < m; i0 += TILE) {
                    const int64_t mt = m - i0 < TILE ? m - i0 : TILE;
                    for (int64_t i = 0; i < mt; i++) f[i] = decode(ctx, r0 + i0 + i, buf + i * p16);
                    for (int64_t g = 0; g < nq; g += 32) {
                        if (nq - g > 16) tile_dots(buf, qt, p16, nqt, g, nq, f, mt, s + i0, BLK, 2);
                        else tile_dots(buf, qt, p16, nqt, g, nq, f, mt, s + i0, BLK, 1);
                    }
                }
                for (int64_t i = 0; i < m; i++)
                    if (valid && !valid[r0 + i]) skip_row(s, BLK, i, nq);
            } else
#endif
            for (int64_t i = 0; i < m; i++) {
                if (valid && !valid[r0 + i]) { skip_row(s, BLK, i, nq); continue; }
                row_dots(buf, q, p16, nq, decode(ctx, r0 + i, buf), s, BLK, i);
            }
            sink_block(k, omp_get_thread_num(), s, r0, m);
        }
        free(buf);
        free(s);
    }
    free(qt);
    return failed ? -1 : 0;
}

#ifdef __AVX512F__
/* 16 bytes of INT4 nibbles as floats: lo = the low nibbles (even elements), hi = the high ones. */
static inline void nibbles16(const uint8_t* p, __m512* lo, __m512* hi) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    *lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
    *hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
}

/* One INT4 row against nq <= 4 queries (int4_fused's layout), 16 bytes a step: the nibbles
   decoded to floats once, multiplied by every query; each block's sum scaled once. */
static inline __attribute__((always_inline)) void int4_row_avx512(
    const uint8_t* row, int64_t half_p, int64_t nb, const float* qe, const float* qo, const float* qsum,
    const int nq, float* out, int64_t n) {
    const int64_t bb = half_p / nb;
    const uint16_t* meta = (const uint16_t*)(row + half_p);
    __m512 acc[4];
    float offs[4] = {0.f, 0.f, 0.f, 0.f};
    for (int qi = 0; qi < nq; qi++) acc[qi] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 t[4];
        for (int qi = 0; qi < nq; qi++) t[qi] = _mm512_setzero_ps();
        for (int64_t j = b * bb; j < (b + 1) * bb; j += 16) {
            __m512 lo, hi;
            nibbles16(row + j, &lo, &hi);
            for (int qi = 0; qi < nq; qi++) {
                t[qi] = _mm512_fmadd_ps(_mm512_loadu_ps(qe + qi * half_p + j), lo, t[qi]);
                t[qi] = _mm512_fmadd_ps(_mm512_loadu_ps(qo + qi * half_p + j), hi, t[qi]);
            }
        }
        const __m512 sc = _mm512_set1_ps(h2f(meta[b]));
        const float off = h2f(meta[nb + b]);
        for (int qi = 0; qi < nq; qi++) {
            acc[qi] = _mm512_fmadd_ps(sc, t[qi], acc[qi]);
            offs[qi] += off * qsum[qi * nb + b];
        }
    }
    const float norm = row_factor(row, half_p + 4 * nb, 1);
    for (int qi = 0; qi < nq; qi++) out[qi * n] = (_mm512_reduce_add_ps(acc[qi]) + offs[qi]) * norm;
}
#endif

/* One INT4 row (see int4_scan) against every query, scalar: out[qi * n]. */
static inline void int4_row(const uint8_t* row, int64_t half_p, int64_t nb, const float* qe, const float* qo,
                            const float* qsum, int64_t nq, float* out, int64_t n) {
    const int64_t bb = half_p / nb;
    const uint16_t* meta = (const uint16_t*)(row + half_p);
    const float norm = row_factor(row, half_p + 4 * nb, 1);
    for (int64_t qi = 0; qi < nq; qi++) {
        const float* e = qe + qi * half_p;
        const float* o = qo + qi * half_p;
        float acc = 0.f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t* pb = row + b * bb;
            const float* eb = e + b * bb;
            const float* ob = o + b * bb;
            float s = 0.f;
            for (int64_t j = 0; j < bb; j++) s += eb[j] * (float)(pb[j] & 15) + ob[j] * (float)(pb[j] >> 4);
            acc += h2f(meta[b]) * s + h2f(meta[nb + b]) * qsum[qi * nb + b];
        }
        out[qi * n] = acc * norm;
    }
}

/* A few queries (nq <= FUSED_MAX_QUERIES): one fused pass over the nibbles per row. qe/qo:
   even/odd elements of each query [nq, half_p]; qsum [nq, nb] (each block's sum of the query). */
#define FUSED_MAX_QUERIES 4
static int int4_fused(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t half_p, int64_t nb,
                      const float* qe, const float* qo, const float* qsum, int64_t nq, const uint8_t* valid,
                      sink* k) {
#ifdef __AVX512F__
    const int vector = (half_p / nb) % 16 == 0;  /* 16 bytes (32 elements) a step */
#endif
    int failed = 0;
    #pragma omp parallel num_threads(k->threads)
    {
        float* s = (float*)malloc((size_t)(nq * BLK) * sizeof(float));
        if (!s) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < n; r0 += BLK) {
            if (!s) continue;
            const int64_t m = n - r0 < BLK ? n - r0 : BLK;
            for (int64_t i = 0; i < m; i++) {
                const uint8_t* row = codes + (r0 + i) * row_bytes;
                if (valid && !valid[r0 + i]) { skip_row(s, BLK, i, nq); continue; }
#ifdef __AVX512F__
                if (vector) {
                    switch (nq) {  /* constant query counts: the accumulators stay in registers */
                        case 1: int4_row_avx512(row, half_p, nb, qe, qo, qsum, 1, s + i, BLK); break;
                        case 2: int4_row_avx512(row, half_p, nb, qe, qo, qsum, 2, s + i, BLK); break;
                        case 3: int4_row_avx512(row, half_p, nb, qe, qo, qsum, 3, s + i, BLK); break;
                        default: int4_row_avx512(row, half_p, nb, qe, qo, qsum, 4, s + i, BLK);
                    }
                    continue;
                }
#endif
                int4_row(row, half_p, nb, qe, qo, qsum, nq, s + i, BLK);
            }
            sink_block(k, omp_get_thread_num(), s, r0, m);
        }
        free(s);
    }
    return failed ? -1 : 0;
}

/* Batches: each row decoded once into floats (even elements, then odd ones), then dotted
   with the queries (scan_rows), whose elements are laid out the same way. */
typedef struct { const uint8_t* codes; int64_t row_bytes, half_p, nb; } int4_rows;

static float decode_int4(const void* ctx, int64_t r, float* buf) {
    const int4_rows* c = (const int4_rows*)ctx;
    const int64_t half_p = c->half_p, nb = c->nb, bb = half_p / nb;
    const uint8_t* row = c->codes + r * c->row_bytes;
    const uint16_t* meta = (const uint16_t*)(row + half_p);
    for (int64_t b = 0; b < nb; b++) {
        const float sc = h2f(meta[b]), off = h2f(meta[nb + b]);
        const uint8_t* pb = row + b * bb;
        float* de = buf + b * bb;
        float* dod = buf + half_p + b * bb;
        int64_t j = 0;
#ifdef __AVX512F__
        const __m512 vs = _mm512_set1_ps(sc), vo = _mm512_set1_ps(off);
        for (; j + 16 <= bb; j += 16) {
            __m512 lo, hi;
            nibbles16(pb + j, &lo, &hi);
            _mm512_storeu_ps(de + j, _mm512_fmadd_ps(vs, lo, vo));
            _mm512_storeu_ps(dod + j, _mm512_fmadd_ps(vs, hi, vo));
        }
#endif
        for (; j < bb; j++) {
            de[j] = off + sc * (float)(pb[j] & 15);
            dod[j] = off + sc * (float)(pb[j] >> 4);
        }
    }
    return row_factor(row, half_p + 4 * nb, 1);
}

/* INT4 rows (see codecs/int4.py): nibbles in bytes [0, half_p), then float16 scales[nb],
   offsets[nb], then the float32 norm; queries q [nq, 2 * half_p] (zero-padded past dim).
   Scores into out [nq, n], or with out NULL the best `keep` per query into top_s / top_r
   (see sink); rows with valid[r] == 0 (valid may be NULL) score -inf. Up to
   FUSED_MAX_QUERIES queries one fused pass over the nibbles, above that decoded rows.
   Returns -1 without memory (nothing meaningful written), else 0. */
int int4_scan(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t half_p, int64_t nb, const float* q,
              int64_t nq, const uint8_t* valid, float* out, int64_t keep, float* top_s, int64_t* top_r,
              int nthreads) {
    const int64_t bb = half_p / nb, p16 = (2 * half_p + 15) / 16 * 16;
    const int fused = nq <= FUSED_MAX_QUERIES;
    float* qs = (float*)calloc((size_t)(nq * (fused ? 2 * half_p + nb : p16)), sizeof(float));
    sink k;
    if (!qs || sink_open(&k, out, n, nq, keep, top_s, top_r, nthreads)) {
        free(qs);
        return -1;
    }
    /* The queries split like the nibbles: fused, [nq, half_p] even elements, [nq, half_p] odd
       ones, then [nq, nb] block sums; decoded, each query's even elements then its odd ones,
       zero-padded to p16. */
    float* qe = qs;
    float* qo = fused ? qs + nq * half_p : qs + half_p;
    const int64_t stride = fused ? half_p : p16;
    for (int64_t qi = 0; qi < nq; qi++)
        for (int64_t j = 0; j < half_p; j++) {
            qe[qi * stride + j] = q[qi * 2 * half_p + 2 * j];
            qo[qi * stride + j] = q[qi * 2 * half_p + 2 * j + 1];
        }
    int status;
    if (fused) {
        float* qsum = qs + 2 * nq * half_p;
        for (int64_t qi = 0; qi < nq; qi++)
            for (int64_t b = 0; b < nb; b++) {
                float t = 0.f;
                for (int64_t j = 0; j < 2 * bb; j++) t += q[qi * 2 * half_p + b * 2 * bb + j];
                qsum[qi * nb + b] = t;
            }
        status = int4_fused(codes, n, row_bytes, half_p, nb, qe, qo, qsum, nq, valid, &k);
    } else {
        const int4_rows ctx = {codes, row_bytes, half_p, nb};
        status = scan_rows(&ctx, decode_int4, n, qs, nq, p16, valid, &k);
    }
    free(qs);
    return sink_close(&k) || status ? -1 : 0;
}

/* Rotated rows (see codecs/rotated.py): `code_bytes` bytes of `bits`-bit codes (element j in
   bits (j * bits) % 8 .. of byte j * bits / 8, low first), then float32 norm and dot. A row is
   decoded in planes: plane t (0 <= t < 8 / bits) holds the elements i * (8 / bits) + t of
   bytes i, at buf[t * code_bytes + i], each the level its code names (levels: 16 floats, the
   grid padded); the queries come laid out the same way. Factor: norm / dot. */
typedef struct { const uint8_t* codes; int64_t row_bytes, code_bytes; int bits; const float* levels; } rq_rows;

static float decode_rq(const void* ctx, int64_t r, float* buf) {
    const rq_rows* c = (const rq_rows*)ctx;
    const uint8_t* row = c->codes + r * c->row_bytes;
    const int b = c->bits, planes = 8 / c->bits, mask = (1 << c->bits) - 1;
    const int64_t cb = c->code_bytes;
    int64_t i = 0;
#ifdef __AVX512F__
    const __m512 lev = _mm512_loadu_ps(c->levels);
    for (; i + 16 <= cb; i += 16) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + i)));
        for (int t = 0; t < planes; t++) {
            const __m512i at = _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(t * b)), _mm512_set1_epi32(mask));
            _mm512_storeu_ps(buf + t * cb + i, _mm512_permutexvar_ps(at, lev));
        }
    }
#endif
    for (; i < cb; i++)
        for (int t = 0; t < planes; t++) buf[t * cb + i] = c->levels[(row[i] >> (t * b)) & mask];
    const float* f = (const float*)(row + cb);
    return f[0] / f[1];
}

#ifdef __AVX512F__
/* One rotated row against nq <= 4 queries (in decode_rq's layout, rows of p16), 16 bytes a
   step: each plane's levels looked up in a register and multiplied by every query, no buffer. */
static inline __attribute__((always_inline)) void rq_row_avx512(const uint8_t* row, int64_t cb, const int b,
                                                                __m512 lev, const float* q, int64_t p16,
                                                                const int nq, float* out, int64_t n) {
    const int planes = 8 / b;
    __m512 acc[4];
    float tail[4] = {0.f, 0.f, 0.f, 0.f};
    for (int qi = 0; qi < nq; qi++) acc[qi] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= cb; i += 16) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + i)));
        for (int t = 0; t < planes; t++) {
            const __m512i at = _mm512_and_si512(_mm512_srli_epi32(v, t * b), _mm512_set1_epi32((1 << b) - 1));
            const __m512 x = _mm512_permutexvar_ps(at, lev);
            for (int qi = 0; qi < nq; qi++)
                acc[qi] = _mm512_fmadd_ps(x, _mm512_loadu_ps(q + qi * p16 + t * cb + i), acc[qi]);
        }
    }
    float levels[16];
    _mm512_storeu_ps(levels, lev);
    for (; i < cb; i++)
        for (int t = 0; t < planes; t++) {
            const float x = levels[(row[i] >> (t * b)) & ((1 << b) - 1)];
            for (int qi = 0; qi < nq; qi++) tail[qi] += x * q[qi * p16 + t * cb + i];
        }
    const float* f = (const float*)(row + cb);
    const float factor = f[0] / f[1];
    for (int qi = 0; qi < nq; qi++) out[qi * n] = (_mm512_reduce_add_ps(acc[qi]) + tail[qi]) * factor;
}

/* A few queries (nq <= FUSED_MAX_QUERIES), one fused pass per row (rq_row_avx512). */
static int rq_fused(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t cb, int b, const float* levels,
                    const float* q, int64_t nq, int64_t p16, const uint8_t* valid, sink* k) {
    const __m512 lev = _mm512_loadu_ps(levels);
    int failed = 0;
    #pragma omp parallel num_threads(k->threads)
    {
        float* s = (float*)malloc((size_t)(nq * BLK) * sizeof(float));
        if (!s) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < n; r0 += BLK) {
            if (!s) continue;
            const int64_t m = n - r0 < BLK ? n - r0 : BLK;
            for (int64_t i = 0; i < m; i++) {
                const uint8_t* row = codes + (r0 + i) * row_bytes;
                if (valid && !valid[r0 + i]) { skip_row(s, BLK, i, nq); continue; }
#define RQ_ROW(B, NQ) rq_row_avx512(row, cb, B, lev, q, p16, NQ, s + i, BLK)
#define RQ_BITS(B)                                                                                  \
                switch (nq) {                                                                        \
                    case 1: RQ_ROW(B, 1); break;                                                     \
                    case 2: RQ_ROW(B, 2); break;                                                     \
                    case 3: RQ_ROW(B, 3); break;                                                     \
                    default: RQ_ROW(B, 4);                                                           \
                }
                if (b == 1) { RQ_BITS(1) } else if (b == 2) { RQ_BITS(2) } else { RQ_BITS(4) }
#undef RQ_BITS
#undef RQ_ROW
            }
            sink_block(k, omp_get_thread_num(), s, r0, m);
        }
        free(s);
    }
    return failed ? -1 : 0;
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512VBMI__) && defined(__AVX512BW__)
#define RQ8 1
/* ---------------------------------------------------------------- rotated rows in INT8
   An approximate scan for choosing candidates (the codec re-scores its choice exactly): each
   query rounded to int8 (one scale a query), each level to uint8 (level * 127 / max|level| +
   128), so that a row's dot is integer multiply-adds, 64 a vpdpbusd. Rows go 16 at a time:
   their codes are turned into levels by vpermb (a 64-byte table, the index's low bits) into
   a buffer, as decode_rq's planes (plane t at t * cb; rows w bytes apart, planes * cb rounded up
   to 64, the queries zero past the planes); each query then meets all 16 rows, and the 16 sums
   are reduced at once. */
#define RQ8_ROWS 16
#define RQ8_INTERLEAVE 8  /* from this many queries, rq8_tile4 */

/* Lane i of the result: the sum of the 16 lanes of v[i]. */
static inline __m512i sum16(const __m512i* v) {
    __m512i a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                                _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(b[2 * i], b[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(b[2 * i], b[2 * i + 1], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88), _mm512_shuffle_i32x4(c[0], c[1], 0xDD));
}

/* The codes of one row as uint8 levels, in the buffer layout above. */
static inline __attribute__((always_inline)) void rq8_decode(const uint8_t* row, int64_t cb, const int b,
                                                             __m512i table, uint8_t* dst) {
    for (int64_t c = 0; c < cb; c += 64) {
        const __mmask64 mk = cb - c >= 64 ? ~0ULL : (1ULL << (cb - c)) - 1;
        const __m512i x = _mm512_maskz_loadu_epi8(mk, row + c);
        for (int t = 0; t < 8 / b; t++)
            _mm512_mask_storeu_epi8(dst + t * cb + c, mk, _mm512_permutexvar_epi8(_mm512_srli_epi16(x, t * b), table));
    }
}

/* QT queries from q0 against the 16 decoded rows in buf (rows of w bytes), RT = 16 / QT rows
   at a time: 16 accumulators, each query vector loaded serving RT rows and each row vector QT
   queries; lane a * RT + r of the reduced sums is query q0 + a, row r0 + r. Scores to
   out[qi * BLK + i] (qi from q0, i < 16); lf: the rows' factors f repeated QT times. */
static inline __attribute__((always_inline)) void rq8_tile(const uint8_t* buf, int64_t w, const int8_t* q8,
                                                           const float* scale, const int32_t* sum128,
                                                           const float* lf, int64_t q0, const int QT, float* out) {
    const int RT = RQ8_ROWS / QT;
    float ls[RQ8_ROWS], lo[RQ8_ROWS];
    for (int l = 0; l < RQ8_ROWS; l++) {
        ls[l] = scale[q0 + l / RT];
        lo[l] = (float)sum128[q0 + l / RT];
    }
    const __m512 vs = _mm512_loadu_ps(ls), voff = _mm512_loadu_ps(lo);
    for (int r0 = 0; r0 < RQ8_ROWS; r0 += RT) {
        __m512i acc[RQ8_ROWS];
        for (int i = 0; i < RQ8_ROWS; i++) acc[i] = _mm512_setzero_si512();
        for (int64_t j = 0; j < w; j += 64) {
            __m512i qv[4];
            for (int a = 0; a < QT; a++) qv[a] = _mm512_load_si512(q8 + (q0 + a) * w + j);
            for (int r = 0; r < RT; r++) {
                const __m512i x = _mm512_load_si512(buf + (r0 + r) * w + j);
                for (int a = 0; a < QT; a++) acc[a * RT + r] = _mm512_dpbusd_epi32(acc[a * RT + r], x, qv[a]);
            }
        }
        const __m512 dots = _mm512_sub_ps(_mm512_cvtepi32_ps(sum16(acc)), voff);
        float sc[RQ8_ROWS];
        _mm512_storeu_ps(sc, _mm512_mul_ps(_mm512_mul_ps(dots, vs), _mm512_loadu_ps(lf + r0 * QT)));
        for (int a = 0; a < QT; a++)
            for (int r = 0; r < RT; r++) out[(q0 + a) * BLK + r0 + r] = sc[a * RT + r];
    }
}

/* One query against rows r .. r + mg (mg <= 16): each row's codes turned into levels in
   registers and multiplied at once (no buffer; the query's tail chunks masked as the codes'). */
static inline __attribute__((always_inline)) void rq8_one(const uint8_t* codes, int64_t row_bytes, int64_t r,
                                                          int64_t mg, int64_t cb, const int b, __m512i lut,
                                                          const int8_t* q8, const float* f, float scale,
                                                          int32_t sum128, float* out) {
    __m512i acc[RQ8_ROWS];
    for (int i = 0; i < RQ8_ROWS; i++) {
        acc[i] = _mm512_setzero_si512();
        if (i >= mg) continue;
        const uint8_t* row = codes + (r + i) * row_bytes;
        for (int64_t c = 0; c < cb; c += 64) {
            const __mmask64 mk = cb - c >= 64 ? ~0ULL : (1ULL << (cb - c)) - 1;
            const __m512i x = _mm512_maskz_loadu_epi8(mk, row + c);
            for (int t = 0; t < 8 / b; t++) {
                const __m512i u = _mm512_permutexvar_epi8(_mm512_srli_epi16(x, t * b), lut);
                acc[i] = _mm512_dpbusd_epi32(acc[i], u, _mm512_maskz_loadu_epi8(mk, q8 + t * cb + c));
            }
        }
    }
    const __m512 dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum16(acc), _mm512_set1_epi32(sum128)));
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_mul_ps(dots, _mm512_set1_ps(scale)), _mm512_loadu_ps(f)));
}

/* Rows r[i] -> r[g] holding dword g of rows 0..15 (a 16 x 16 transpose of 32-bit lanes). */
static inline void transpose16(__m512i* r) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {  /* r[4i + e], 128-bit lane L: dword 4L + e of rows 4i..4i+3 */
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int e = 0; e < 4; e++) {
        const __m512i x0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x88), x1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xDD);
        const __m512i y0 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x88);
        const __m512i y1 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xDD);
        t[e] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        t[8 + e] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
        t[4 + e] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        t[12 + e] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* Many queries: the 16 decoded rows interleaved, ib[d] = dword d of each row (lane = row), so
   a query's dword, broadcast, meets 16 rows in one vpdpbusd and the lanes are the rows' sums
   (no reduction). Four queries from q0 (two accumulators each: eight independent chains, named
   so that the compiler keeps each in its register); scores to out[qi * BLK + 0..15]. */
static inline void rq8_scores(__m512i sum, const float* scale, const int32_t* sum128, __m512 fv, int64_t qi,
                              float* out) {
    sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(sum128[qi]));
    _mm512_storeu_ps(out + qi * BLK, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(scale[qi])), fv));
}

static inline void rq8_tile4(const __m512i* ib, int64_t w, const int8_t* q8, const float* scale,
                             const int32_t* sum128, __m512 fv, int64_t q0, float* out) {
    const int32_t* p0 = (const int32_t*)(q8 + q0 * w);
    const int32_t *p1 = p0 + w / 4, *p2 = p1 + w / 4, *p3 = p2 + w / 4;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t d = 0; d < w / 4; d += 2) {
        const __m512i x = _mm512_load_si512(ib + d), y = _mm512_load_si512(ib + d + 1);
        a0 = _mm512_dpbusd_epi32(a0, x, _mm512_set1_epi32(p0[d]));
        a1 = _mm512_dpbusd_epi32(a1, x, _mm512_set1_epi32(p1[d]));
        a2 = _mm512_dpbusd_epi32(a2, x, _mm512_set1_epi32(p2[d]));
        a3 = _mm512_dpbusd_epi32(a3, x, _mm512_set1_epi32(p3[d]));
        b0 = _mm512_dpbusd_epi32(b0, y, _mm512_set1_epi32(p0[d + 1]));
        b1 = _mm512_dpbusd_epi32(b1, y, _mm512_set1_epi32(p1[d + 1]));
        b2 = _mm512_dpbusd_epi32(b2, y, _mm512_set1_epi32(p2[d + 1]));
        b3 = _mm512_dpbusd_epi32(b3, y, _mm512_set1_epi32(p3[d + 1]));
    }
    rq8_scores(_mm512_add_epi32(a0, b0), scale, sum128, fv, q0, out);
    rq8_scores(_mm512_add_epi32(a1, b1), scale, sum128, fv, q0 + 1, out);
    rq8_scores(_mm512_add_epi32(a2, b2), scale, sum128, fv, q0 + 2, out);
    rq8_scores(_mm512_add_epi32(a3, b3), scale, sum128, fv, q0 + 3, out);
}

static inline void rq8_tile1(const __m512i* ib, int64_t w, const int8_t* q8, const float* scale,
                             const int32_t* sum128, __m512 fv, int64_t qi, float* out) {
    const int32_t* p = (const int32_t*)(q8 + qi * w);
    __m512i a = _mm512_setzero_si512(), b = a;
    for (int64_t d = 0; d < w / 4; d += 2) {
        a = _mm512_dpbusd_epi32(a, _mm512_load_si512(ib + d), _mm512_set1_epi32(p[d]));
        b = _mm512_dpbusd_epi32(b, _mm512_load_si512(ib + d + 1), _mm512_set1_epi32(p[d + 1]));
    }
    rq8_scores(_mm512_add_epi32(a, b), scale, sum128, fv, qi, out);
}

/* Queries q [nq, p16] (decode_rq's layout) -> q8 [nq, w] (the buffer layout), their scales
   (times the levels' scale) and 128 * their sums. */
static void rq8_queries(const float* q, int64_t nq, int64_t p16, int64_t cb, int64_t w, int planes,
                        float level_scale, int8_t* q8, float* scale, int32_t* sum128) {
    for (int64_t qi = 0; qi < nq; qi++) {
        const float* x = q + qi * p16;
        float top = 0.f;
        for (int64_t j = 0; j < planes * cb; j++) top = fabsf(x[j]) > top ? fabsf(x[j]) : top;
        const float sq = top > 0.f && isfinite(top) ? top / 127.f : 1.f;
        int32_t sum = 0;
        for (int64_t i = 0; i < w; i++) {
            const int8_t v = i < planes * cb ? (int8_t)lrintf(x[i] / sq) : 0;
            q8[qi * w + i] = v;
            sum += v;
        }
        scale[qi] = sq * level_scale;
        sum128[qi] = 128 * sum;
    }
}

static int rq8_scan(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t cb, int b, const float* levels,
                    const float* q, int64_t nq, int64_t p16, const uint8_t* valid, sink* k) {
    const int planes = 8 / b, mask = (1 << b) - 1;
    const int64_t w = (planes * cb + 63) / 64 * 64;
    float top = 0.f;
    for (int i = 0; i <= mask; i++) top = fabsf(levels[i]) > top ? fabsf(levels[i]) : top;
    uint8_t table[64];
    for (int i = 0; i < 64; i++) table[i] = (uint8_t)(lrintf(levels[i & mask] * 127.f / top) + 128);
    const __m512i lut = _mm512_loadu_si512(table);
    int8_t* q8 = (int8_t*)aligned_alloc(64, (size_t)(nq * w));
    float* scale = (float*)malloc((size_t)nq * sizeof(float));
    int32_t* sum128 = (int32_t*)malloc((size_t)nq * sizeof(int32_t));
    int failed = 0;
    if (!q8 || !scale || !sum128) {
        free(q8); free(scale); free(sum128);
        return -1;
    }
    rq8_queries(q, nq, p16, cb, w, planes, top / 127.f, q8, scale, sum128);
    #pragma omp parallel num_threads(k->threads)
    {
        uint8_t* buf = (uint8_t*)aligned_alloc(64, (size_t)(2 * RQ8_ROWS * w));
        __m512i* ib = (__m512i*)(buf + RQ8_ROWS * w);  /* the rows interleaved (rq8_tile4) */
        float* s = (float*)malloc((size_t)(nq * BLK) * sizeof(float));
        if (!buf || !s) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < n; r0 += BLK) {
            if (!buf || !s) continue;
            const int64_t m = n - r0 < BLK ? n - r0 : BLK;
            for (int64_t g = 0; g < m; g += RQ8_ROWS) {
                const int64_t mg = m - g < RQ8_ROWS ? m - g : RQ8_ROWS;
                float f[RQ8_ROWS];
                for (int64_t i = 0; i < RQ8_ROWS; i++) {
                    const float* nd = (const float*)(codes + (r0 + g + (i < mg ? i : 0)) * row_bytes + cb);
                    f[i] = nd[0] / nd[1];
                }
                if (nq == 1) {
                    if (b == 4) rq8_one(codes, row_bytes, r0 + g, mg, cb, 4, lut, q8, f, scale[0], sum128[0], s + g);
                    else if (b == 2) rq8_one(codes, row_bytes, r0 + g, mg, cb, 2, lut, q8, f, scale[0], sum128[0], s + g);
                    else rq8_one(codes, row_bytes, r0 + g, mg, cb, 1, lut, q8, f, scale[0], sum128[0], s + g);
                    continue;
                }
                for (int64_t i = 0; i < mg; i++) {
                    const uint8_t* row = codes + (r0 + g + i) * row_bytes;
                    if (b == 4) rq8_decode(row, cb, 4, lut, buf + i * w);
                    else if (b == 2) rq8_decode(row, cb, 2, lut, buf + i * w);
                    else rq8_decode(row, cb, 1, lut, buf + i * w);
                }
                if (nq >= RQ8_INTERLEAVE) {
                    const __m512 fv = _mm512_loadu_ps(f);
                    for (int64_t j = 0; j < w; j += 64) {
                        __m512i r[RQ8_ROWS];
                        for (int i = 0; i < RQ8_ROWS; i++) r[i] = _mm512_load_si512(buf + i * w + j);
                        transpose16(r);
                        for (int i = 0; i < RQ8_ROWS; i++) _mm512_store_si512(ib + j / 4 + i, r[i]);
                    }
                    int64_t qi = 0;
                    for (; qi + 4 <= nq; qi += 4) rq8_tile4(ib, w, q8, scale, sum128, fv, qi, s + g);
                    for (; qi < nq; qi++) rq8_tile1(ib, w, q8, scale, sum128, fv, qi, s + g);
                    continue;
                }
                float lf2[2 * RQ8_ROWS], lf4[4 * RQ8_ROWS];  /* f laid out for rq8_tile's lanes */
                for (int l = 0; l < 2 * RQ8_ROWS; l++) lf2[l] = f[l / 16 * 8 + l % 8];
                for (int l = 0; l < 4 * RQ8_ROWS; l++) lf4[l] = f[l / 16 * 4 + l % 4];
                int64_t qi = 0;
                for (; qi + 4 <= nq; qi += 4) rq8_tile(buf, w, q8, scale, sum128, lf4, qi, 4, s + g);
                for (; qi + 2 <= nq; qi += 2) rq8_tile(buf, w, q8, scale, sum128, lf2, qi, 2, s + g);
                for (; qi < nq; qi++) rq8_tile(buf, w, q8, scale, sum128, f, qi, 1, s + g);
            }
            for (int64_t i = 0; i < m; i++)
                if (valid && !valid[r0 + i]) skip_row(s, BLK, i, nq);
            sink_block(k, omp_get_thread_num(), s, r0, m);
        }
        free(buf);
        free(s);
    }
    free(q8); free(scale); free(sum128);
    return failed ? -1 : 0;
}
#endif

#ifdef RQ8
/* The approximate scan's list wr [nq, wide] scored again exactly (decode_rq), each query's
   best `keep` into top_s / top_r; entries at -inf (invalid rows) stay there. */
static int rq_refine(const rq_rows* ctx, const float* q, int64_t nq, int64_t p16, const float* ws,
                     const int64_t* wr, int64_t wide, int64_t keep, float* top_s, int64_t* top_r) {
    float* buf = (float*)calloc((size_t)p16, sizeof(float));
    scored* all = (scored*)malloc((size_t)wide * sizeof(scored));
    for (int64_t qi = 0; buf && all && qi < nq; qi++) {
        const float* x = q + qi * p16;
        for (int64_t j = 0; j < wide; j++) {
            const int64_t r = wr[qi * wide + j];
            float d = -INFINITY;
            if (ws[qi * wide + j] != -INFINITY) {
                const float f = decode_rq(ctx, r, buf);
                d = 0.f;
                for (int64_t i = 0; i < p16; i++) d += buf[i] * x[i];
                d *= f;
            }
            all[j] = (scored){d == d ? d : -INFINITY, r};
        }
        qsort(all, (size_t)wide, sizeof(scored), better_first);
        for (int64_t j = 0; j < keep; j++) {
            top_s[qi * keep + j] = all[j].s;
            top_r[qi * keep + j] = all[j].r;
        }
    }
    const int status = buf && all ? 0 : -1;
    free(buf); free(all);
    return status;
}
#endif

/* Whether rq_scan's approximate INT8 path is built (AVX-512 VNNI and VBMI). */
int rq8_built(void) {
#ifdef RQ8
    return 1;
#else
    return 0;
#endif
}

/* Rotated rows against queries q [nq, p16] (rotated, in decode_rq's plane layout, zero-padded
   to p16 = 8 * code_bytes / bits rounded up to 16): scores into out [nq, n], or the best `keep`
   into top_s / top_r, as int4_scan. With `approx` (and rq8_built()): scores are rq8_scan's, and
   the best `keep` are chosen by it from a list `keep + max(keep / 4, 8)` long scored again
   exactly (rq_refine). Returns -1 without memory, else 0. */
int rq_scan(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t code_bytes, int64_t bits,
            const float* levels, const float* q, int64_t nq, int approx, const uint8_t* valid, float* out,
            int64_t keep, float* top_s, int64_t* top_r, int nthreads) {
    const int64_t p16 = (code_bytes * 8 / bits + 15) / 16 * 16;
    const rq_rows ctx = {codes, row_bytes, code_bytes, (int)bits, levels};
    sink k;
#ifdef RQ8
    if (approx) {
        if (out) {
            if (sink_open(&k, out, n, nq, 0, NULL, NULL, nthreads)) return -1;
            const int status = rq8_scan(codes, n, row_bytes, code_bytes, (int)bits, levels, q, nq, p16, valid, &k);
            return sink_close(&k) || status ? -1 : 0;
        }
        int64_t wide = keep + (keep / 4 > 8 ? keep / 4 : 8);
        wide = wide < n ? wide : n;
        float* ws = (float*)malloc((size_t)(nq * wide) * sizeof(float));
        int64_t* wr = (int64_t*)malloc((size_t)(nq * wide) * sizeof(int64_t));
        int status = !ws || !wr || sink_open(&k, NULL, n, nq, wide, ws, wr, nthreads) ? -1 : 0;
        if (!status) {
            status = rq8_scan(codes, n, row_bytes, code_bytes, (int)bits, levels, q, nq, p16, valid, &k);
            status = sink_close(&k) || status ? -1 : 0;
        }
        if (!status) status = rq_refine(&ctx, q, nq, p16, ws, wr, wide, keep, top_s, top_r);
        free(ws); free(wr);
        return status;
    }
#endif
    if (sink_open(&k, out, n, nq, keep, top_s, top_r, nthreads)) return -1;
    int status;
#ifdef __AVX512F__
    if (nq <= FUSED_MAX_QUERIES)
        status = rq_fused(codes, n, row_bytes, code_bytes, (int)bits, levels, q, nq, p16, valid, &k);
    else
#endif
        status = scan_rows(&ctx, decode_rq, n, q, nq, p16, valid, &k);
    return sink_close(&k) || status ? -1 : 0;
}

/* Dense rows (see codecs/int8.py, codecs/floats.py): `dim` values of type T, then `nf` float32
   factors at byte `fo`; score = <q, values> * product(factors). q [nq, p16] zero-padded (see
   row_dots); scores into a sink as int4_scan's; rows with valid[r] == 0 (valid may be NULL)
   score -inf. */
static inline void load_i8(const int8_t* x, int64_t dim, float* buf) {
    int64_t d = 0;
#ifdef __AVX512F__
    for (; d + 16 <= dim; d += 16)
        _mm512_storeu_ps(buf + d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(x + d)))));
#endif
    for (; d < dim; d++) buf[d] = (float)x[d];
}

static inline void load_f16(const uint16_t* x, int64_t dim, float* buf) {
    int64_t d = 0;
#if defined(__AVX512F__) && defined(__F16C__)
    for (; d + 16 <= dim; d += 16) _mm512_storeu_ps(buf + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(x + d))));
#endif
    for (; d < dim; d++) buf[d] = h2f(x[d]);
}

typedef struct { const uint8_t* codes; int64_t row_bytes, dim, fo, nf; } dense_rows;

/* One query's rescoring: rows pick[0..m) of a format (decode, ctx; n rows) scored against
   q [p16], the best k (ties: the earlier pick) into pos_out (positions in pick) and
   score_out, best first; each score times qnorm in double precision, clipped to the float
   range (the index's final scores). Returns -1, writing nothing, if a pick is outside
   [0, n); else 0. A row holding a stored NaN or infinity scores -inf. */
static inline __attribute__((always_inline)) int top_picked(const void* ctx, decode_fn decode, int64_t n,
                                                            const int64_t* pick, int64_t m, const float* q,
                                                            int64_t p16, int64_t k, double qnorm, float* score_out,
                                                            int64_t* pos_out) {
    for (int64_t c = 0; c < m; c++)
        if (pick[c] < 0 || pick[c] >= n) return -1;
    float* buf = (float*)calloc((size_t)(p16 + m), sizeof(float));
    float* s = buf + p16;
    for (int64_t c = 0; c < m; c++) {
        const float f = decode(ctx, pick[c], buf);
        row_dots(buf, q, p16, 1, 1.f, s, 1, c);
        /* a NaN or an infinity stored in the row (a damaged file: no encoder writes one) makes
           its dot or its factor non-finite: it ranks last */
        s[c] = isfinite(f) && isfinite(s[c]) ? s[c] * f : -INFINITY;
    }
    int64_t kept = 0;  /* the best k, kept sorted by insertion */
    for (int64_t c = 0; c < m; c++) {
        if (kept == k && !(s[c] > s[pos_out[k - 1]])) continue;
        int64_t j = kept < k ? kept++ : k - 1;
        for (; j > 0 && s[c] > s[pos_out[j - 1]]; j--) pos_out[j] = pos_out[j - 1];
        pos_out[j] = c;
    }
    for (int64_t j = 0; j < kept; j++)
        score_out[j] = (float)fmin(fmax((double)s[pos_out[j]] * qnorm, -FLT_MAX), FLT_MAX);
    free(buf);
    return 0;
}

/* Dense rows, for each value type: the row decoder, the scan (scan_rows) and one query's
   rescoring (top_picked). */
#define DENSE(SUFFIX, T, LOAD)                                                                       \
static float dense_row_##SUFFIX(const void* ctx, int64_t r, float* buf) {                           \
    const dense_rows* c = (const dense_rows*)ctx;                                                    \
    const uint8_t* raw = c->codes + r * c->row_bytes;                                                \
    LOAD((const T*)raw, c->dim, buf);                                                                \
    return row_factor(raw, c->fo, c->nf);                                                            \
}                                                                                                    \
int dense_scan_##SUFFIX(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t dim, int64_t fo,  \
                        int64_t nf, const float* q, int64_t nq, int64_t p16, const uint8_t* valid,   \
                        float* out, int64_t keep, float* top_s, int64_t* top_r, int nthreads) {      \
    const dense_rows ctx = {codes, row_bytes, dim, fo, nf};                                          \
    sink k;                                                                                          \
    if (sink_open(&k, out, n, nq, keep, top_s, top_r, nthreads)) return -1;                          \
    const int status = scan_rows(&ctx, dense_row_##SUFFIX, n, q, nq, p16, valid, &k);                \
    return sink_close(&k) || status ? -1 : 0;                                                        \
}                                                                                                    \
int dense_top_##SUFFIX(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t dim, int64_t fo,  \
                       int64_t nf, const int64_t* pick, int64_t m, const float* q, int64_t p16,      \
                       int64_t k, double qnorm, float* score_out, int64_t* pos_out) {                \
    const dense_rows ctx = {codes, row_bytes, dim, fo, nf};                                          \
    return top_picked(&ctx, dense_row_##SUFFIX, n, pick, m, q, p16, k, qnorm, score_out, pos_out);   \
}
DENSE(i8, int8_t, load_i8)
DENSE(f16, uint16_t, load_f16)

/* Keep the `keep` smallest distances of a candidate list (cnt >= keep entries, in row order;
   ties at the cut-off keep the earlier rows), in place. Returns the cut-off distance c: a row
   seen later belongs in the list only if its distance is < c. */
#define QB 8  /* queries per vector group: 8 x 64-bit lanes */
static int32_t hamming_compact(int32_t* bd, int32_t* br, int64_t cnt, int64_t keep, int32_t maxd, int64_t* hist) {
    for (int32_t i = 0; i <= maxd; i++) hist[i] = 0;
    for (int64_t j = 0; j < cnt; j++) hist[bd[j]]++;
    int32_t cut = 0;
    int64_t below = 0;  /* entries with distance < cut */
    while (below + hist[cut] < keep) { below += hist[cut]; cut++; }
    int64_t at_cut = keep - below, m = 0;
    for (int64_t j = 0; j < cnt; j++) {
        const int32_t d = bd[j];
        if (d < cut || (d == cut && at_cut-- > 0)) { bd[m] = d; br[m] = br[j]; m++; }
    }
    return cut;
}

static inline __attribute__((always_inline)) int64_t hamming_words(const uint64_t* a, const uint64_t* b, int64_t words) {
    int64_t d = 0;
    for (int64_t w = 0; w < words; w++) d += __builtin_popcountll(a[w] ^ b[w]);
    return d;
}

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
/* Hamming distances of 8 consecutive rows of w <= 8 words to the query qv (its words in the
   lanes below w, zeros above): lane i = distance of row i. Each row is one masked load and
   popcount; the 8 vectors of per-word counts are summed by a transpose-and-add tree. */
static inline __m512i hamming8(const uint64_t* rows, int64_t w, __mmask8 words, __m512i qv) {
    __m512i v[8], a[4], b[2];
    for (int i = 0; i < 8; i++) v[i] = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(words, rows + i * w), qv));
    for (int i = 0; i < 4; i++)
        a[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi64(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        b[i] = _mm512_add_epi64(_mm512_shuffle_i64x2(a[2 * i], a[2 * i + 1], 0x88), _mm512_shuffle_i64x2(a[2 * i], a[2 * i + 1], 0xDD));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(b[0], b[1], 0x88), _mm512_shuffle_i64x2(b[0], b[1], 0xDD));
}
#endif

/* Hamming top-k in one streaming pass, without a distance matrix. Each thread scans a block
   of rows and keeps, per query, a list of up to `cap` candidates and a threshold: a row
   enters only if its distance is below the threshold, and a full list is cut back to the
   best `keep` (which lowers the threshold). The threads' lists are then merged per query.
   Result: the `keep` rows with the smallest (distance, row) per query into dist_out/rows_out
   [nq, keep], unsorted; rows with valid[r] == 0 only pad a short result (in row order,
   distance INT32_MAX). Requires keep <= n. Rows: the first row_words words of every
   `stride` words of codes (rows with more than bits in them: the rotated 1-bit codes). */
void hamming_select(const uint64_t* codes, int64_t n, int64_t row_words, int64_t stride, const uint64_t* q,
                    int64_t nq, const uint8_t* valid, int64_t keep, int32_t* dist_out, int64_t* rows_out, int nthreads) {
    const int32_t maxd = (int32_t)(row_words * 64);
    /* queries transposed to [row_words, nqp] (zero-padded to whole groups of QB), so the
       distances of one row to QB queries accumulate in one AVX-512 register (or, without
       AVX-512 VPOPCNTDQ, in a loop the compiler vectorises as it can) */
    const int64_t nqp = (nq + QB - 1) / QB * QB;
    uint64_t* qt = (uint64_t*)calloc((size_t)(nqp * row_words), sizeof(uint64_t));
    for (int64_t qi = 0; qi < nq; qi++)
        for (int64_t w = 0; w < row_words; w++) qt[w * nqp + qi] = q[qi * row_words + w];
    if (nthreads < 1) nthreads = 1;
    /* each thread's final lists: [thread][query][keep] and their lengths */
    int32_t* td = (int32_t*)malloc((size_t)(nthreads * nq * keep) * sizeof(int32_t));
    int32_t* tr = (int32_t*)malloc((size_t)(nthreads * nq * keep) * sizeof(int32_t));
    int64_t* tcnt = (int64_t*)calloc((size_t)(nthreads * nq), sizeof(int64_t));
    #pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
        int64_t cap = 2 * keep < hi - lo ? 2 * keep : hi - lo;  /* a list this long never overflows */
        if (cap < 1) cap = 1;
        int32_t* bd = (int32_t*)malloc((size_t)(nq * cap) * sizeof(int32_t));
        int32_t* br = (int32_t*)malloc((size_t)(nq * cap) * sizeof(int32_t));
        int64_t* cnt = (int64_t*)calloc((size_t)nq, sizeof(int64_t));
        int64_t* thr = (int64_t*)malloc((size_t)nqp * sizeof(int64_t));
        int64_t* acc = (int64_t*)malloc((size_t)nqp * sizeof(int64_t));
        int64_t* hist = (int64_t*)malloc((size_t)(maxd + 1) * sizeof(int64_t));
        for (int64_t qi = 0; qi < nqp; qi++) thr[qi] = qi < nq ? maxd + 1 : 0;  /* padding never enters */
        /* one query: a loop of its own, unrolled for the usual widths (128 to 1024 bits) */
#define TAKE_ONE(d, r)                                                                              \
        if ((d) < thr[0] && !(valid && !valid[r])) {                                                 \
            bd[cnt[0]] = (int32_t)(d);                                                               \
            br[cnt[0]] = (int32_t)(r);                                                               \
            if (++cnt[0] == cap && cap > keep) {                                                     \
                thr[0] = hamming_compact(bd, br, cap, keep, maxd, hist);                             \
                cnt[0] = keep;                                                                       \
            }                                                                                        \
        }
#define SCAN_ONE(W)                                                                                 \
        for (int64_t r = lo8; r < hi; r++) {                                                         \
            const int64_t d = hamming_words(codes + r * stride, q, (W));                             \
            TAKE_ONE(d, r)                                                                           \
        }
        int64_t lo8 = lo;  /* rows before lo8 are done */
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
        if (nq == 1 && row_words <= 8) {  /* 8 rows a step, a compare to the threshold for all 8 */
            const __mmask8 words = (__mmask8)((1u << row_words) - 1);
            const __m512i qv = _mm512_maskz_loadu_epi64(words, q);
            for (; lo8 + 8 <= hi; lo8 += 8) {
                const __m512i d8 = hamming8(codes + lo8 * stride, stride, words, qv);
                __mmask8 hit = _mm512_cmplt_epi64_mask(d8, _mm512_set1_epi64(thr[0]));
                if (!hit) continue;
                int64_t dd[8];
                _mm512_storeu_si512(dd, d8);
                for (; hit; hit &= hit - 1) {  /* in row order; the threshold may drop on the way */
                    const int i = __builtin_ctz(hit);
                    TAKE_ONE(dd[i], lo8 + i)
                }
            }
        }
#endif
        if (nq == 1) {  /* the rows left (all of them without the 8-row loop) */
            switch (row_words) {
                case 2: SCAN_ONE(2) break;
                case 4: SCAN_ONE(4) break;
                case 6: SCAN_ONE(6) break;
                case 8: SCAN_ONE(8) break;
                case 12: SCAN_ONE(12) break;
                case 16: SCAN_ONE(16) break;
                default: SCAN_ONE(row_words)
            }
        } else {
            for (int64_t r = lo; r < hi; r++) {
                if (valid && !valid[r]) continue;
                const uint64_t* row = codes + r * stride;
                int64_t hit = 0;
                if (nq < 4) {  /* a few queries: a plain loop beats the vector one */
                    for (int64_t qi = 0; qi < nq; qi++) {
                        const int64_t d = hamming_words(row, q + qi * row_words, row_words);
                        acc[qi] = d;
                        hit |= d < thr[qi];
                    }
                } else {
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
                    for (int64_t g = 0; g < nqp; g += QB) {
                        __m512i a = _mm512_setzero_si512();
                        for (int64_t w = 0; w < row_words; w++) {
                            const __m512i x = _mm512_xor_si512(_mm512_set1_epi64((long long)row[w]), _mm512_loadu_si512(qt + w * nqp + g));
                            a = _mm512_add_epi64(a, _mm512_popcnt_epi64(x));
                        }
                        _mm512_storeu_si512(acc + g, a);
                        hit |= _mm512_cmplt_epi64_mask(a, _mm512_loadu_si512(thr + g));
                    }
#else
                    for (int64_t qi = 0; qi < nqp; qi++) acc[qi] = 0;
                    for (int64_t w = 0; w < row_words; w++) {
                        const uint64_t rw = row[w];
                        const uint64_t* qw = qt + w * nqp;
                        for (int64_t qi = 0; qi < nqp; qi++) acc[qi] += __builtin_popcountll(rw ^ qw[qi]);
                    }
                    for (int64_t qi = 0; qi < nqp; qi++) hit |= acc[qi] < thr[qi];
#endif
                }
                if (!hit) continue;  /* the common case once the lists have filled */
                for (int64_t qi = 0; qi < nq; qi++) {
                    if (acc[qi] >= thr[qi]) continue;
                    int32_t* d = bd + qi * cap;
                    int32_t* rr = br + qi * cap;
                    d[cnt[qi]] = (int32_t)acc[qi];
                    rr[cnt[qi]] = (int32_t)r;
                    if (++cnt[qi] == cap && cap > keep) {
                        thr[qi] = hamming_compact(d, rr, cap, keep, maxd, hist);
                        cnt[qi] = keep;
                    }
                }
            }
        }
#undef SCAN_ONE
#undef TAKE_ONE
        for (int64_t qi = 0; qi < nq; qi++) {
            int32_t* d = bd + qi * cap;
            int32_t* rr = br + qi * cap;
            if (cnt[qi] > keep) { hamming_compact(d, rr, cnt[qi], keep, maxd, hist); cnt[qi] = keep; }
            const int64_t slot = (int64_t)t * nq + qi;
            for (int64_t j = 0; j < cnt[qi]; j++) { td[slot * keep + j] = d[j]; tr[slot * keep + j] = rr[j]; }
            tcnt[slot] = cnt[qi];
        }
        free(bd); free(br); free(cnt); free(thr); free(acc); free(hist);
    }
    free(qt);
    /* merge: the threads' lists, concatenated in thread order, are in row order */
    #pragma omp parallel num_threads(nthreads)
    {
        int32_t* md = (int32_t*)malloc((size_t)(nthreads * keep) * sizeof(int32_t));
        int32_t* mr = (int32_t*)malloc((size_t)(nthreads * keep) * sizeof(int32_t));
        int64_t* hist = (int64_t*)malloc((size_t)(maxd + 1) * sizeof(int64_t));
        #pragma omp for schedule(dynamic, 1)
        for (int64_t qi = 0; qi < nq; qi++) {
            int64_t m = 0;
            for (int t = 0; t < nthreads; t++) {
                const int64_t slot = (int64_t)t * nq + qi;
                for (int64_t j = 0; j < tcnt[slot]; j++) { md[m] = td[slot * keep + j]; mr[m] = tr[slot * keep + j]; m++; }
            }
            if (m > keep) { hamming_compact(md, mr, m, keep, maxd, hist); m = keep; }
            int32_t* od = dist_out + qi * keep;
            int64_t* orow = rows_out + qi * keep;
            for (int64_t j = 0; j < m; j++) { od[j] = md[j]; orow[j] = mr[j]; }
            for (int64_t r = 0; m < keep && r < n; r++)  /* too few valid rows: pad with the others */
                if (valid && !valid[r]) { od[m] = INT32_MAX; orow[m] = r; m++; }
        }
        free(md); free(mr); free(hist);
    }
    free(td); free(tr); free(tcnt);
}

/* Hamming distances: rows and queries of `words` 64-bit words; out [nq, n] int32. */
void hamming_scan(const uint64_t* codes, int64_t n, int64_t row_words, const uint64_t* q, int64_t nq,
                  int32_t* out, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const uint64_t* row = codes + r * row_words;
        for (int64_t qi = 0; qi < nq; qi++) {
            const uint64_t* qq = q + qi * row_words;
            int32_t d = 0;
            for (int64_t w = 0; w < row_words; w++) d += __builtin_popcountll(row[w] ^ qq[w]);
            out[qi * n + r] = d;
        }
    }
}

/* One query's second stage (see binary_candidates): the +-1 scores of its `width` rows
   (d, r: their distances and rows), from a table of the query's sums over each byte value
   (or masked adds of the query, for fewer rows); the best `n_cand` into score_out/rows_out.
   Scratch: lut, score [width], best [n_cand]. */
static void binary_rerank(const uint64_t* codes, int64_t row_words, const float* q, const int32_t* d,
                          const int64_t* r, int64_t width, int64_t n_cand, float* lut, float* score,
                          int64_t* best, float* score_out, int64_t* rows_out) {
    const int64_t nbytes = row_words * 8;
    float qsum = 0.f;
    for (int64_t i = 0; i < nbytes * 8; i++) qsum += q[i];
#ifdef __AVX512F__
    if (width < 512) {  /* few rows: width x nbytes/2 masked vector adds cost less than the 256 x nbytes table */
        /* lut[16m + i] = q at bit i of the little-endian 16-bit word m of a row: within each
           byte, bit i (least significant first) is dimension 8j + 7 - i */
        for (int64_t j = 0; j < nbytes; j++)
            for (int i = 0; i < 8; i++) lut[j * 8 + i] = q[j * 8 + 7 - i];
        for (int64_t c = 0; c < width; c++) {
            if (d[c] == INT32_MAX) { score[c] = -INFINITY; continue; }
            const uint16_t* row = (const uint16_t*)(codes + r[c] * row_words);
            __m512 acc = _mm512_setzero_ps();
            for (int64_t m = 0; m < nbytes / 2; m++)
                acc = _mm512_mask_add_ps(acc, (__mmask16)row[m], acc, _mm512_loadu_ps(lut + 16 * m));
            score[c] = 2.f * _mm512_reduce_add_ps(acc) - qsum;
        }
    } else
#endif
    {
        for (int64_t j = 0; j < nbytes; j++) {
            float* t = lut + j * 256;
            t[0] = 0.f;
            for (int v = 1; v < 256; v++) t[v] = t[v & (v - 1)] + q[j * 8 + 7 - __builtin_ctz(v)];  /* lowest set bit */
        }
        for (int64_t c = 0; c < width; c++) {
            if (d[c] == INT32_MAX) { score[c] = -INFINITY; continue; }
            const uint8_t* row = (const uint8_t*)(codes + r[c] * row_words);
            float s = 0.f;
            for (int64_t j = 0; j < nbytes; j++) s += lut[j * 256 + row[j]];
            score[c] = 2.f * s - qsum;
        }
    }
    /* the best n_cand by (score desc, distance asc, row asc), kept sorted by insertion */
#define BETTER(a, b) (score[a] > score[b] || (score[a] == score[b] && (d[a] < d[b] || (d[a] == d[b] && r[a] < r[b]))))
    int64_t m = 0;
    for (int64_t c = 0; c < width; c++) {
        if (m == n_cand && !BETTER(c, best[m - 1])) continue;
        int64_t j = m < n_cand ? m++ : n_cand - 1;
        for (; j > 0 && BETTER(c, best[j - 1]); j--) best[j] = best[j - 1];
        best[j] = c;
    }
#undef BETTER
    for (int64_t j = 0; j < n_cand; j++) { score_out[j] = score[best[j]]; rows_out[j] = r[best[j]]; }
}

/* Binary candidates (see codecs/binary.py): the `width` rows of smallest Hamming distance per
   query (hamming_select), re-ranked by the float query against their +-1 codes, best
   `n_cand` of them into score_out/rows_out [nq, n_cand], best first (equal scores keep the
   Hamming order: distance, then row). qf [nq, row_words * 64]: the float queries,
   zero-padded; their sign bits (bit 7 - i of byte j: qf[8j + i] > 0) are packed here. The
   +-1 score of a row is 2 * sum(q over its set bits) - sum(q), so no row is decoded. Rows
   hamming_select padded with (distance INT32_MAX) score -inf. */
void binary_candidates(const uint64_t* codes, int64_t n, int64_t row_words, const float* qf,
                       int64_t nq, const uint8_t* valid, int64_t width, int64_t n_cand,
                       float* score_out, int64_t* rows_out, int nthreads) {
    const int64_t nbytes = row_words * 8;
    uint8_t* qbits = (uint8_t*)malloc((size_t)(nq * nbytes));
    for (int64_t i = 0; i < nq * nbytes; i++) {
        uint8_t b = 0;
        for (int j = 0; j < 8; j++) b = (uint8_t)(b << 1 | (qf[i * 8 + j] > 0.f));
        qbits[i] = b;
    }
    int32_t* dist = (int32_t*)malloc((size_t)(nq * width) * sizeof(int32_t));
    int64_t* rows = (int64_t*)malloc((size_t)(nq * width) * sizeof(int64_t));
    hamming_select(codes, n, row_words, row_words, (const uint64_t*)qbits, nq, valid, width, dist, rows, nthreads);
    free(qbits);
    /* per thread: the table (256 floats a byte), the scores and the kept order */
    const int64_t floats = (nbytes * 256 + width + 1) / 2 * 2;  /* the kept order after them, 8-byte aligned */
    const size_t scratch = (size_t)floats * sizeof(float) + (size_t)n_cand * sizeof(int64_t);
    if (nq == 1) {  /* no thread team for one query */
        float* lut = (float*)malloc(scratch);
        binary_rerank(codes, row_words, qf, dist, rows, width, n_cand, lut, lut + nbytes * 256,
                      (int64_t*)(lut + floats), score_out, rows_out);
        free(lut);
    } else {
        #pragma omp parallel num_threads(nthreads)
        {
            float* lut = (float*)malloc(scratch);
            #pragma omp for schedule(dynamic, 1)
            for (int64_t qi = 0; qi < nq; qi++)
                binary_rerank(codes, row_words, qf + qi * nbytes * 8, dist + qi * width, rows + qi * width, width,
                              n_cand, lut, lut + nbytes * 256, (int64_t*)(lut + floats),
                              score_out + qi * n_cand, rows_out + qi * n_cand);
            free(lut);
        }
    }
    free(dist); free(rows);
}
