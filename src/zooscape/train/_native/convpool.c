/*
 * Population convolution + 2x2 max-pool kernels (float32, AVX2/FMA), called through ctypes by
 * zooscape.train.native. Built on first use; see that module for the contract of each function.
 *
 * The layer: G models, each a stride-1, unpadded k x k convolution with C input and O output channels
 * (O a multiple of 8), followed by MaxPool2d(2, 2). Output channels are the SIMD lanes: one __m256 holds
 * 8 output channels of one model at one position, so every FMA is useful work whatever the image size.
 *
 * Forward: conv outputs of a 2x2 pool window are computed in registers (bias first, then the taps in
 * (c, ky, kx) order) and pooled at once; the full-resolution map is never written. The pool keeps the first
 * maximum in window order (0,0), (0,1), (1,0), (1,1) and lets NaN through, as torch's CPU max_pool2d does,
 * and stores the winning window position (0..3) per output for the backward pass.
 *
 * Backward (weights and bias only: the input is data, it needs no gradient): for every pooled output the
 * gradient is split into four masked copies, one per window position, and
 *     dW[g, c, ky, kx, o] += sum_j mask_j(dP)[o] * X[g, c, 2py + dy_j + ky, 2px + dx_j + kx]
 * which is the gradient of the convolution through max_pool2d's backward, without writing the
 * full-resolution gradient (mostly zeros) and without a second pass over it.
 *
 * Work is split over threads with OpenMP (PyTorch's own runtime, see run()) or pthreads; the caller passes
 * torch's thread count.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *x;
    int64_t sb, sg, sc, sh, sw;      /* strides of x in elements for (batch, model, channel, row, column) */
    int B, G, C, H, W, K, O, H2, W2;
    const float *w;                  /* [G, C, K, K, O] */
    const float *bias;               /* [G, O] or NULL */
    float *out;                      /* [B, H2, W2, G*O] */
    uint8_t *idx;                    /* [B, H2, W2, G*O] or NULL */
    const float *dout;               /* backward: [B, H2, W2, G*O] */
    float *dw;                       /* backward: [G, C, K, K, O] */
    float *db;                       /* backward: [G, O] or NULL */
    int64_t begin, end;              /* work items of one thread */
} job_t;

/* ------------------------------------------------------------------------------------------------ forward */

static inline void pool4(__m256 a0, __m256 a1, __m256 a2, __m256 a3, float *dst, uint8_t *idst) {
    /* first maximum wins; NaN wins (and stays), as in torch's max_pool2d: (v > m) || isnan(v) */
    __m256 m = a0, id = _mm256_setzero_ps();
    __m256 c = _mm256_or_ps(_mm256_cmp_ps(a1, m, _CMP_GT_OQ), _mm256_cmp_ps(a1, a1, _CMP_UNORD_Q));
    m = _mm256_blendv_ps(m, a1, c);
    id = _mm256_blendv_ps(id, _mm256_set1_ps(1.f), c);
    c = _mm256_or_ps(_mm256_cmp_ps(a2, m, _CMP_GT_OQ), _mm256_cmp_ps(a2, a2, _CMP_UNORD_Q));
    m = _mm256_blendv_ps(m, a2, c);
    id = _mm256_blendv_ps(id, _mm256_set1_ps(2.f), c);
    c = _mm256_or_ps(_mm256_cmp_ps(a3, m, _CMP_GT_OQ), _mm256_cmp_ps(a3, a3, _CMP_UNORD_Q));
    m = _mm256_blendv_ps(m, a3, c);
    id = _mm256_blendv_ps(id, _mm256_set1_ps(3.f), c);
    /* a NaN in an earlier position followed by a number: torch keeps the NaN (NaN > x is false, x is not NaN) */
    _mm256_storeu_ps(dst, m);
    if (idst) {
        __m256i v = _mm256_cvtps_epi32(id);
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)idst, _mm_packus_epi16(p16, p16));
    }
}

/* one model, one image: all pooled outputs (K and sw are passed separately so that the common cases can be
   compiled with them as constants: fully unrolled taps and immediate address offsets) */
static inline __attribute__((always_inline)) void fwd_image_k(const job_t *a, int g, int b, const int K,
                                                              const int64_t sw) {
    const int C = a->C, O = a->O, W2 = a->W2;
    const int64_t GO = (int64_t)a->G * O, sh = a->sh;
    const float *xg = a->x + b * a->sb + g * a->sg;
    for (int ob = 0; ob < O; ob += 8) {
        const float *wg = a->w + (int64_t)g * C * K * K * O + ob;
        const __m256 bias = a->bias ? _mm256_loadu_ps(a->bias + (int64_t)g * O + ob) : _mm256_setzero_ps();
        for (int py = 0; py < a->H2; py++) {
            const int64_t orow = (((int64_t)b * a->H2 + py) * W2) * GO + (int64_t)g * O + ob;
            int px = 0;
            for (; px + 1 < W2; px += 2) {  /* two pool windows side by side: 2 rows x 4 columns of outputs */
                __m256 a00 = bias, a01 = bias, a02 = bias, a03 = bias;
                __m256 a10 = bias, a11 = bias, a12 = bias, a13 = bias;
                const float *wt = wg;
                for (int c = 0; c < C; c++) {
                    for (int ky = 0; ky < K; ky++) {
                        const float *r0 = xg + c * a->sc + (2 * py + ky) * sh + (2 * px) * sw;
                        const float *r1 = r0 + sh;
                        for (int kx = 0; kx < K; kx++, wt += O) {
                            const __m256 wv = _mm256_loadu_ps(wt);
                            const float *p0 = r0 + kx * sw, *p1 = r1 + kx * sw;
                            a00 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0), wv, a00);
                            a01 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + sw), wv, a01);
                            a02 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + 2 * sw), wv, a02);
                            a03 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + 3 * sw), wv, a03);
                            a10 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1), wv, a10);
                            a11 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + sw), wv, a11);
                            a12 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + 2 * sw), wv, a12);
                            a13 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + 3 * sw), wv, a13);
                        }
                    }
                }
                const int64_t o0 = orow + (int64_t)px * GO;
                pool4(a00, a01, a10, a11, a->out + o0, a->idx ? a->idx + o0 : NULL);
                pool4(a02, a03, a12, a13, a->out + o0 + GO, a->idx ? a->idx + o0 + GO : NULL);
            }
            for (; px < W2; px++) {
                __m256 a00 = bias, a01 = bias, a10 = bias, a11 = bias;
                const float *wt = wg;
                for (int c = 0; c < C; c++) {
                    for (int ky = 0; ky < K; ky++) {
                        const float *r0 = xg + c * a->sc + (2 * py + ky) * sh + (2 * px) * sw;
                        const float *r1 = r0 + sh;
                        for (int kx = 0; kx < K; kx++, wt += O) {
                            const __m256 wv = _mm256_loadu_ps(wt);
                            a00 = _mm256_fmadd_ps(_mm256_broadcast_ss(r0 + kx * sw), wv, a00);
                            a01 = _mm256_fmadd_ps(_mm256_broadcast_ss(r0 + (kx + 1) * sw), wv, a01);
                            a10 = _mm256_fmadd_ps(_mm256_broadcast_ss(r1 + kx * sw), wv, a10);
                            a11 = _mm256_fmadd_ps(_mm256_broadcast_ss(r1 + (kx + 1) * sw), wv, a11);
                        }
                    }
                }
                const int64_t o0 = orow + (int64_t)px * GO;
                pool4(a00, a01, a10, a11, a->out + o0, a->idx ? a->idx + o0 : NULL);
            }
        }
    }
}

static void fwd_image(const job_t *a, int g, int b) {
    if (a->sw == 1 && a->K == 5) fwd_image_k(a, g, b, 5, 1);
    else if (a->sw == 1 && a->K == 3) fwd_image_k(a, g, b, 3, 1);
    else fwd_image_k(a, g, b, a->K, a->sw);
}

static void *fwd_worker(void *p) {
    const job_t *a = (const job_t *)p;
    for (int64_t i = a->begin; i < a->end; i++)   /* items are (model, image), model-major */
        fwd_image(a, (int)(i / a->B), (int)(i % a->B));
    return NULL;
}

/* ----------------------------------------------------------------------------------------------- backward */

/* Per pooled output the gradient d (8 lanes = 8 output channels) goes to one window position per lane, given by
   the pool index: dx = idx & 1, dy = idx >> 1. So for tap (c, ky, kx) the input each lane needs is selected from
   the four window candidates with two blends, and one FMA accumulates it: 1 FMA per tap and output instead of
   the 4 of a masked formulation. Along a kernel row the candidates slide: 2 new broadcasts per tap. The
   accumulators of one kernel row (K of them) live in registers while one image's outputs stream by. */
static inline __attribute__((always_inline)) void bwd_model_k(const job_t *a, int g, float *accbuf, const int K,
                                                              const int64_t sw) {
    const int C = a->C, O = a->O, W2 = a->W2, T = C * K * K;
    const int64_t GO = (int64_t)a->G * O, sh = a->sh;
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    for (int ob = 0; ob < O; ob += 8) {
        memset(accbuf, 0, sizeof(float) * 8 * (size_t)T);
        __m256 dbias = _mm256_setzero_ps();
        for (int b = 0; b < a->B; b++) {  /* image by image: its gradient, indices and pixels stay in L1 */
            const float *xg = a->x + b * a->sb + g * a->sg;
            const int64_t pos0 = ((int64_t)b * a->H2 * W2) * GO + (int64_t)g * O + ob;
            for (int row = 0; row < C * K; row++) {  /* kernel row (c, ky): taps row*K .. row*K + K-1 */
                const int c = row / K, ky = row % K;
                float *ab = accbuf + (int64_t)row * K * 8;
                __m256 acc[8];
#pragma GCC unroll 8
                for (int kx = 0; kx < K; kx++) acc[kx] = _mm256_loadu_ps(ab + kx * 8);
                for (int py = 0; py < a->H2; py++) {
                    int64_t pos = pos0 + (int64_t)py * W2 * GO;
                    const float *r0 = xg + c * a->sc + (2 * py + ky) * sh;
                    for (int px = 0; px < W2; px++, pos += GO) {
                        const __m256 d = _mm256_loadu_ps(a->dout + pos);
                        if (row == 0) dbias = _mm256_add_ps(dbias, d);
                        const __m256i iv =
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(a->idx + pos)));
                        const __m256 cx = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(iv, one), one));
                        const __m256 cy = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(iv, two), two));
                        const float *p0 = r0 + (2 * px) * sw, *p1 = p0 + sh;
                        __m256 u0 = _mm256_broadcast_ss(p0), u1 = _mm256_broadcast_ss(p1);
#pragma GCC unroll 8
                        for (int kx = 0; kx < K; kx++) {
                            const __m256 n0 = _mm256_broadcast_ss(p0 + (kx + 1) * sw);
                            const __m256 n1 = _mm256_broadcast_ss(p1 + (kx + 1) * sw);
                            const __m256 s = _mm256_blendv_ps(_mm256_blendv_ps(u0, n0, cx),
                                                              _mm256_blendv_ps(u1, n1, cx), cy);
                            acc[kx] = _mm256_fmadd_ps(d, s, acc[kx]);
                            u0 = n0;
                            u1 = n1;
                        }
                    }
                }
#pragma GCC unroll 8
                for (int kx = 0; kx < K; kx++) _mm256_storeu_ps(ab + kx * 8, acc[kx]);
            }
        }
        for (int t = 0; t < T; t++)
            memcpy(a->dw + ((int64_t)g * T + t) * O + ob, accbuf + (int64_t)t * 8, sizeof(float) * 8);
        if (a->db) _mm256_storeu_ps(a->db + (int64_t)g * O + ob, dbias);
    }
}

/* generic kernel sizes: the same computation with the row's accumulators in memory */
static void bwd_model_any(const job_t *a, int g, float *accbuf) {
    const int K = a->K, C = a->C, O = a->O, W2 = a->W2, T = C * K * K;
    const int64_t GO = (int64_t)a->G * O, sh = a->sh, sw = a->sw;
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    for (int ob = 0; ob < O; ob += 8) {
        memset(accbuf, 0, sizeof(float) * 8 * (size_t)T);
        __m256 dbias = _mm256_setzero_ps();
        for (int b = 0; b < a->B; b++) {
            const float *xg = a->x + b * a->sb + g * a->sg;
            for (int py = 0; py < a->H2; py++) {
                int64_t pos = (((int64_t)b * a->H2 + py) * W2) * GO + (int64_t)g * O + ob;
                for (int px = 0; px < W2; px++, pos += GO) {
                    const __m256 d = _mm256_loadu_ps(a->dout + pos);
                    dbias = _mm256_add_ps(dbias, d);
                    const __m256i iv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(a->idx + pos)));
                    const __m256 cx = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(iv, one), one));
                    const __m256 cy = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(iv, two), two));
                    for (int t = 0; t < T; t++) {
                        const int c = t / (K * K), ky = (t / K) % K, kx = t % K;
                        const float *p0 = xg + c * a->sc + (2 * py + ky) * sh + (2 * px + kx) * sw, *p1 = p0 + sh;
                        const __m256 s = _mm256_blendv_ps(
                            _mm256_blendv_ps(_mm256_broadcast_ss(p0), _mm256_broadcast_ss(p0 + sw), cx),
                            _mm256_blendv_ps(_mm256_broadcast_ss(p1), _mm256_broadcast_ss(p1 + sw), cx), cy);
                        _mm256_storeu_ps(accbuf + t * 8, _mm256_fmadd_ps(d, s, _mm256_loadu_ps(accbuf + t * 8)));
                    }
                }
            }
        }
        for (int t = 0; t < T; t++)
            memcpy(a->dw + ((int64_t)g * T + t) * O + ob, accbuf + (int64_t)t * 8, sizeof(float) * 8);
        if (a->db) _mm256_storeu_ps(a->db + (int64_t)g * O + ob, dbias);
    }
}

static void bwd_model(const job_t *a, int g, float *accbuf) {
    if (a->K == 5 && a->sw == 1) bwd_model_k(a, g, accbuf, 5, 1);
    else if (a->K == 5) bwd_model_k(a, g, accbuf, 5, a->sw);
    else if (a->K == 3 && a->sw == 1) bwd_model_k(a, g, accbuf, 3, 1);
    else if (a->K == 3) bwd_model_k(a, g, accbuf, 3, a->sw);
    else bwd_model_any(a, g, accbuf);
}

static void *bwd_worker(void *p) {
    const job_t *a = (const job_t *)p;
    const int T = a->C * a->K * a->K;
    float *accbuf = (float *)malloc(sizeof(float) * 8 * (size_t)T);
    if (!accbuf) return (void *)1;  /* reported as a failure by run() */
    for (int64_t g = a->begin; g < a->end; g++) bwd_model(a, (int)g, accbuf);
    free(accbuf);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------ driver */

/* Runs fn over [0, items) split into nthreads contiguous ranges; returns 0, or -1 if a worker failed.
   Built with -fopenmp this uses OpenMP, and since the library then needs libgomp.so.1, the dynamic loader binds
   it to the libgomp that PyTorch already loaded: the kernels run on PyTorch's own (already spinning) worker
   threads instead of competing with them for the cores. Without OpenMP, plain pthreads. */
#ifdef _OPENMP
#include <omp.h>
static int run(job_t *base, int64_t items, int nthreads, void *(*fn)(void *)) {
    if (nthreads > items) nthreads = (int)items;
    if (nthreads < 1) nthreads = 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        job_t j = *base;
        j.begin = items * t / nt;
        j.end = items * (t + 1) / nt;
        failed |= fn(&j) != NULL;
    }
    return failed ? -1 : 0;
}
#else
static int run(job_t *base, int64_t items, int nthreads, void *(*fn)(void *)) {
    if (nthreads > items) nthreads = (int)items;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    job_t jobs[64];
    pthread_t th[64];
    int started[64] = {0};
    for (int t = 0; t < nthreads; t++) {
        jobs[t] = *base;
        jobs[t].begin = items * t / nthreads;
        jobs[t].end = items * (t + 1) / nthreads;
    }
    for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&th[t], NULL, fn, &jobs[t]) == 0;
    int failed = fn(&jobs[0]) != NULL;
    for (int t = 1; t < nthreads; t++) {
        void *r = NULL;
        if (started[t]) pthread_join(th[t], &r);
        else r = fn(&jobs[t]);  /* could not start a thread: do its share here */
        failed |= r != NULL;
    }
    return failed ? -1 : 0;
}
#endif

int zs_convpool_abi(void) { return 2; }

int zs_convpool_forward(const float *x, const int64_t *xs, int B, int G, int C, int H, int W, int K, int O,
                         const float *w, const float *bias, float *out, uint8_t *idx, int nthreads) {
    job_t a;
    memset(&a, 0, sizeof a);
    a.x = x; a.sb = xs[0]; a.sg = xs[1]; a.sc = xs[2]; a.sh = xs[3]; a.sw = xs[4];
    a.B = B; a.G = G; a.C = C; a.H = H; a.W = W; a.K = K; a.O = O;
    a.H2 = (H - K + 1) / 2; a.W2 = (W - K + 1) / 2;
    a.w = w; a.bias = bias; a.out = out; a.idx = idx;
    return run(&a, (int64_t)G * B, nthreads, fwd_worker);
}

int zs_convpool_backward(const float *x, const int64_t *xs, int B, int G, int C, int H, int W, int K, int O,
                          const float *dout, const uint8_t *idx, float *dw, float *db, int nthreads) {
    job_t a;
    memset(&a, 0, sizeof a);
    a.x = x; a.sb = xs[0]; a.sg = xs[1]; a.sc = xs[2]; a.sh = xs[3]; a.sw = xs[4];
    a.B = B; a.G = G; a.C = C; a.H = H; a.W = W; a.K = K; a.O = O;
    a.H2 = (H - K + 1) / 2; a.W2 = (W - K + 1) / 2;
    a.dout = dout; a.idx = (uint8_t *)idx; a.dw = dw; a.db = db;
    return run(&a, G, nthreads, bwd_worker);
}
