"""Native CPU scan kernels: a few lines of C, compiled once per process with the system C
compiler (``$CC``, else ``cc``; about 0.2 s) and called through ctypes on raw tensor memory.

Eager torch is 10-100x slower than faiss for these scans on a CPU, because every nibble
shift, popcount step or cast is a separate pass over memory. The kernels below fuse each scan
into one pass, parallelised with OpenMP. They are an accelerator for CPU tensors only: the
same functions in the codec modules run plain torch on CUDA, and on a CPU where compiling
fails (no compiler) they warn once and stay in eager torch. ``QUANT_RETRIEVER_NATIVE=0``
turns the kernels off.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = [
    "kernels", "int4_scan", "hamming_scan", "hamming_select", "dense_scan", "quantize_rows_u8", "rescale_rows_",
    "available",
]

_SOURCE = r"""
#include <stdint.h>
#include <limits.h>
#include <stdlib.h>
#include <math.h>
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

/* INT4 rows (see codecs/int4.py): nibbles in bytes [0, half_p), then float16 scales[nb],
   offsets[nb], norm. qe/qo: even/odd elements of each query [nq, half_p]; qsum [nq, nb].
   out [nq, n]. Best for a few queries: one fused pass per query. */
void int4_scan_fused(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t half_p, int64_t nb,
                     const float* qe, const float* qo, const float* qsum, int64_t nq, float* out, int nthreads) {
    const int64_t bb = half_p / nb;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t* row = codes + r * row_bytes;
        const uint16_t* meta = (const uint16_t*)(row + half_p);
        const float norm = h2f(meta[2 * nb]);
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
            out[qi * n + r] = acc * norm;
        }
    }
}

/* Same scores, for batches: decode each row once into floats, then one dot per query.
   q [nq, 2 * half_p] (zero-padded queries). */
void int4_scan_decoded(const uint8_t* codes, int64_t n, int64_t row_bytes, int64_t half_p, int64_t nb,
                       const float* q, int64_t nq, float* out, int nthreads) {
    const int64_t p = 2 * half_p, bb = half_p / nb;
    #pragma omp parallel num_threads(nthreads)
    {
        float buf[p];
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            const uint8_t* row = codes + r * row_bytes;
            const uint16_t* meta = (const uint16_t*)(row + half_p);
            const float norm = h2f(meta[2 * nb]);
            for (int64_t b = 0; b < nb; b++) {
                const float sc = h2f(meta[b]) * norm, off = h2f(meta[nb + b]) * norm;
                const uint8_t* pb = row + b * bb;
                float* d = buf + 2 * b * bb;
                for (int64_t j = 0; j < bb; j++) {
                    d[2 * j] = off + sc * (float)(pb[j] & 15);
                    d[2 * j + 1] = off + sc * (float)(pb[j] >> 4);
                }
            }
            for (int64_t qi = 0; qi < nq; qi++) {
                const float* qq = q + qi * p;
                float s = 0.f;
                for (int64_t i = 0; i < p; i++) s += qq[i] * buf[i];
                out[qi * n + r] = s;
            }
        }
    }
}

/* Dense rows: int8 [n, dim] or float16 [n, dim] against float queries q [nq, dim]; out [nq, n]. */
#define DENSE_SCAN(NAME, T)                                                                          \
void NAME(const T* codes, int64_t n, int64_t dim, const float* q, int64_t nq, float* out, int nthreads) { \
    _Pragma("omp parallel num_threads(nthreads)")                                                    \
    {                                                                                                \
        float buf[dim];                                                                              \
        _Pragma("omp for schedule(static)")                                                          \
        for (int64_t r = 0; r < n; r++) {                                                            \
            const T* row = codes + r * dim;                                                          \
            for (int64_t d = 0; d < dim; d++) buf[d] = (float)row[d];                                \
            for (int64_t qi = 0; qi < nq; qi++) {                                                    \
                const float* qq = q + qi * dim;                                                      \
                float s = 0.f;                                                                       \
                for (int64_t d = 0; d < dim; d++) s += qq[d] * buf[d];                               \
                out[qi * n + r] = s;                                                                 \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
}
DENSE_SCAN(dense_scan_i8, int8_t)
DENSE_SCAN(dense_scan_f16, _Float16)

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

/* Hamming top-k in one streaming pass, without a distance matrix. Each thread scans a block
   of rows and keeps, per query, a list of up to `cap` candidates and a threshold: a row
   enters only if its distance is below the threshold, and a full list is cut back to the
   best `keep` (which lowers the threshold). The threads' lists are then merged per query.
   Result: the `keep` rows with the smallest (distance, row) per query into dist_out/rows_out
   [nq, keep], unsorted; rows with valid[r] == 0 only pad a short result (in row order,
   distance INT32_MAX). Requires keep <= n. */
void hamming_select(const uint64_t* codes, int64_t n, int64_t row_words, const uint64_t* q, int64_t nq,
                    const uint8_t* valid, int64_t keep, int32_t* dist_out, int64_t* rows_out, int nthreads) {
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
        for (int64_t r = lo; r < hi; r++) {
            if (valid && !valid[r]) continue;
            const uint64_t* row = codes + r * row_words;
            int64_t hit = 0;
            if (nq < 4) {  /* a few queries: a plain loop beats the vector one */
                for (int64_t qi = 0; qi < nq; qi++) {
                    int64_t d = 0;
                    for (int64_t w = 0; w < row_words; w++) d += __builtin_popcountll(row[w] ^ q[qi * row_words + w]);
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

/* Dynamic INT8 for linear layers (see quant_retriever/_int8.py). quantize_rows_u8: per-row
   symmetric INT8 of float rows x [m, k], scale[i] = max|x_i| / 127 (1 for a zero row), stored
   as uint8 q = round(x / scale) + 128 (oneDNN's u8 with zero point 128). rescale_rows:
   y[i, j] = y[i, j] * s[i] + b[j] in place (b may be NULL), then GELU if asked. */
static inline void quantize_row_u8(const float* xi, int64_t k, uint8_t* qi, float* scale) {
    float amax = 0.f;
    int64_t j = 0;
#ifdef __AVX512F__
    __m512 vmax = _mm512_setzero_ps();
    for (; j + 16 <= k; j += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xi + j)));
    amax = _mm512_reduce_max_ps(vmax);
#endif
    for (; j < k; j++) { const float a = fabsf(xi[j]); amax = a > amax ? a : amax; }
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
}

void quantize_rows_u8(const float* x, int64_t m, int64_t k, uint8_t* q, float* scale, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < m; i++) quantize_row_u8(x + i * k, k, q + i * k, scale + i);
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

/* q/qscale (may be NULL): also the rows' quantize_rows_u8, while they are in cache */
void rescale_rows(float* y, int64_t m, int64_t n, const float* s, const float* b, int gelu,
                  uint8_t* q, float* qscale, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < m; i++) {
        float* yi = y + i * n;
        const float si = s[i];
        if (b) for (int64_t j = 0; j < n; j++) yi[j] = yi[j] * si + b[j];
        else for (int64_t j = 0; j < n; j++) yi[j] *= si;
        if (gelu) for (int64_t j = 0; j < n; j++) yi[j] = 0.5f * yi[j] * (1.f + erf_approx(yi[j] * 0.70710678118654752f));
        if (q) quantize_row_u8(yi, n, q + i * n, qscale + i);
    }
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
"""

#: Reassociation lets the compiler vectorise the float reductions. Deliberately not
#: -ffast-math: linking a shared library with it sets flush-to-zero for the whole process.
_MATH_FLAGS = ("-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-fno-math-errno")

#: Up to this many queries, ``int4_scan`` runs the fused kernel; above, the decoded one.
FUSED_MAX_QUERIES = 4

_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False}


def _compile(march: str = "native") -> ctypes.CDLL:
    """Build the kernels for ``-march=<march>`` (tests build a portable copy as well)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set $CC)")
    workdir = Path(tempfile.mkdtemp(prefix="quant_retriever_native_"))
    try:
        src, lib = workdir / "kernels.c", workdir / "kernels.so"
        src.write_text(_SOURCE)
        cmd = [cc, "-O3", *_MATH_FLAGS, f"-march={march}", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(lib), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:500]}")
        dll = ctypes.CDLL(str(lib))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the loaded library stays mapped
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    dll.int4_scan_fused.argtypes = [p, i64, i64, i64, i64, p, p, p, i64, p, i32]
    dll.int4_scan_decoded.argtypes = [p, i64, i64, i64, i64, p, i64, p, i32]
    dll.hamming_scan.argtypes = [p, i64, i64, p, i64, p, i32]
    dll.hamming_select.argtypes = [p, i64, i64, p, i64, p, i64, p, p, i32]
    dll.dense_scan_i8.argtypes = [p, i64, i64, p, i64, p, i32]
    dll.dense_scan_f16.argtypes = [p, i64, i64, p, i64, p, i32]
    dll.quantize_rows_u8.argtypes = [p, i64, i64, p, p, i32]
    dll.rescale_add_layernorm.argtypes = [p, i64, i64, p, p, p, p, p, ctypes.c_float, i32]
    dll.rescale_rows.argtypes = [p, i64, i64, p, p, i32, p, p, i32]
    return dll


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or ``None`` when disabled or when compiling failed (warned once)."""
    if os.environ.get("QUANT_RETRIEVER_NATIVE", "1").lower() in {"0", "false", "no", "off"}:
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["lib"] = _compile()
            except Exception as exc:  # no compiler, unsupported flags, ...
                warnings.warn(
                    f"quant_retriever: native CPU kernels unavailable ({exc}); using eager torch, "
                    "which is much slower for large CPU indexes.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["lib"]


def _usable(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return kernels()


def int4_scan(q: torch.Tensor, codes: torch.Tensor, half_p: int, nb: int) -> torch.Tensor | None:
    """Scores ``[nq, n]`` of zero-padded float queries ``q: [nq, 2 * half_p]`` against INT4 rows
    ``codes: [n, row_bytes]`` (rows contiguous); ``None`` when the kernels are unavailable."""
    lib = _usable(q, codes)
    if lib is None:
        return None
    codes = codes.contiguous()
    q = q.float().contiguous()
    nq, n = q.shape[0], codes.shape[0]
    out = torch.empty(nq, n, dtype=torch.float32)
    threads = torch.get_num_threads()
    if nq <= FUSED_MAX_QUERIES:
        qe, qo = q[:, 0::2].contiguous(), q[:, 1::2].contiguous()
        qsum = q.view(nq, nb, -1).sum(dim=2).contiguous()
        lib.int4_scan_fused(
            codes.data_ptr(), n, codes.shape[1], half_p, nb, qe.data_ptr(), qo.data_ptr(), qsum.data_ptr(),
            nq, out.data_ptr(), threads,
        )
    else:
        lib.int4_scan_decoded(codes.data_ptr(), n, codes.shape[1], half_p, nb, q.data_ptr(), nq, out.data_ptr(), threads)
    return out


def hamming_scan(qcodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor | None:
    """Hamming distances ``[nq, n]`` int32 between packed rows (whole 64-bit words each);
    ``None`` when the kernels are unavailable."""
    lib = _usable(qcodes, codes)
    if lib is None:
        return None
    codes, qcodes = codes.contiguous(), qcodes.contiguous()
    out = torch.empty(qcodes.shape[0], codes.shape[0], dtype=torch.int32)
    lib.hamming_scan(
        codes.data_ptr(), codes.shape[0], codes.shape[1] // 8, qcodes.data_ptr(), qcodes.shape[0], out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def hamming_select(
    qcodes: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None, keep: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``keep`` rows of smallest Hamming distance per query: ``(distances [nq, keep] int32,
    rows [nq, keep] int64)``, unsorted; rows where ``valid`` is False come last with distance
    ``INT32_MAX``. ``None`` when the kernels are unavailable."""
    lib = _usable(qcodes, codes)
    if lib is None:
        return None
    codes, qcodes = codes.contiguous(), qcodes.contiguous()
    nq, n = qcodes.shape[0], codes.shape[0]
    if not 0 < keep <= n < 2**31:
        raise ValueError(f"hamming_select needs 0 < keep <= rows < 2**31; got keep={keep}, rows={n}.")
    mask = None if valid is None else valid.contiguous().view(torch.uint8)
    dist = torch.empty(nq, keep, dtype=torch.int32)
    rows = torch.empty(nq, keep, dtype=torch.int64)
    lib.hamming_select(
        codes.data_ptr(), n, codes.shape[1] // 8, qcodes.data_ptr(), nq, None if mask is None else mask.data_ptr(),
        keep, dist.data_ptr(), rows.data_ptr(), torch.get_num_threads(),
    )
    return dist, rows


def dense_scan(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor | None:
    """Inner products ``[nq, n]`` of float queries ``[nq, dim]`` with int8 or float16 rows
    ``[n, dim]`` (values as stored, no scaling); ``None`` when the kernels are unavailable."""
    lib = _usable(q, codes)
    if lib is None:
        return None
    fn = {torch.int8: lib.dense_scan_i8, torch.float16: lib.dense_scan_f16}[codes.dtype]
    codes, q = codes.contiguous(), q.float().contiguous()
    out = torch.empty(q.shape[0], codes.shape[0], dtype=torch.float32)
    fn(codes.data_ptr(), codes.shape[0], codes.shape[1], q.data_ptr(), q.shape[0], out.data_ptr(), torch.get_num_threads())
    return out


def quantize_rows_u8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row symmetric INT8 of contiguous float32 rows ``x [m, k]``: ``(q [m, k] uint8 =
    round(x / scale) + 128, scale [m] float32)``; ``None`` when the kernels are unavailable."""
    lib = _usable(x)
    if lib is None:
        return None
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.uint8)
    scale = torch.empty(m, dtype=torch.float32)
    lib.quantize_rows_u8(x.data_ptr(), m, k, q.data_ptr(), scale.data_ptr(), torch.get_num_threads())
    return q, scale


def rescale_rows_(
    y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False, quantize: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | bool:
    """``y [m, n] = y * scale[:, None] + bias`` in place (contiguous float32), then the erf
    GELU when ``gelu``. With ``quantize``, returns ``quantize_rows_u8`` of the result (one
    pass), else True. False, doing nothing, when the kernels are unavailable."""
    lib = _usable(y)
    if lib is None:
        return False
    m, n = y.shape
    q = torch.empty(m, n, dtype=torch.uint8) if quantize else None
    qscale = torch.empty(m, dtype=torch.float32) if quantize else None
    lib.rescale_rows(
        y.data_ptr(), m, n, scale.data_ptr(), None if bias is None else bias.data_ptr(), int(gelu),
        None if q is None else q.data_ptr(), None if qscale is None else qscale.data_ptr(), torch.get_num_threads(),
    )
    return (q, qscale) if quantize else True


def rescale_add_layernorm_(
    y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, norm: torch.nn.LayerNorm
) -> bool:
    """``y [m, n] = norm(y * scale[:, None] + bias + residual)`` in place (contiguous float32,
    ``norm`` over the last dimension with float32 weight and bias); False, doing nothing, when
    the kernels are unavailable."""
    lib = _usable(y)
    if lib is None:
        return False
    m, n = y.shape
    lib.rescale_add_layernorm(
        y.data_ptr(), m, n, scale.data_ptr(), None if bias is None else bias.data_ptr(), residual.data_ptr(),
        norm.weight.data_ptr(), norm.bias.data_ptr(), norm.eps, torch.get_num_threads(),
    )
    return True


def available(device: torch.device) -> bool:
    """Whether scans on ``device`` run in the native kernels (no decoded copies of rows)."""
    return device.type == "cpu" and kernels() is not None
