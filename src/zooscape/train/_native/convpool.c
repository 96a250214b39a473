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
 * A ReLU right after the pool can be fused: the forward applies it before storing, and the backward passes no
 * gradient where the stored output is not positive.
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
    int Op;                          /* O rounded up to a multiple of 8 (weights and bias are zero-padded) */
    const float *w;                  /* forward: [G, C, K, K, Op] */
    const float *bias;               /* [G, Op] or NULL */
    const float *wc;                 /* input gradient: [G, O, K, K, C] */
    float *dx;                       /* input gradient: [B, H, W, G*C] */
    float *out;                      /* [B, H2, W2, G*O] */
    uint8_t *idx;                    /* [B, H2, W2, G*O] or NULL */
    const float *dout;               /* backward: [B, H2, W2, G*O] */
    int relu;                        /* forward: apply ReLU after the pool (a fused activation) */
    const float *act;                /* backward: the ReLU'd forward output ([B, H2, W2, G*O]) or NULL */
    float *dw;                       /* backward: [G, C, K, K, O] (weights only) or [G, O, K, K, C] (full) */
    float *db;                       /* backward: [G, O] or NULL */
    int64_t begin, end;              /* work items of one thread */
} job_t;

/* ------------------------------------------------------------------------------------------------ forward */

static inline __attribute__((always_inline)) __m256i lane_mask(int n) { /* first n lanes set */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __attribute__((always_inline)) void pool4(__m256 a0, __m256 a1, __m256 a2, __m256 a3, float *dst,
                                                        uint8_t *idst, int n, int relu) {
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
    if (relu) m = _mm256_max_ps(_mm256_setzero_ps(), m);  /* (max_ps returns its second operand for NaN) */
    if (n == 8) _mm256_storeu_ps(dst, m);
    else _mm256_maskstore_ps(dst, lane_mask(n), m);
    if (idst) {
        __m256i v = _mm256_cvtps_epi32(id);
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        __m128i p8 = _mm_packus_epi16(p16, p16);
        if (n == 8) _mm_storel_epi64((__m128i *)idst, p8);
        else {
            uint8_t tmp[16];  /* (a byte loop, not memcpy: a call would make the caller spill its registers) */
            _mm_storeu_si128((__m128i *)tmp, p8);
            for (int i = 0; i < n; i++) idst[i] = tmp[i];
        }
    }
}

/* The convolution outputs of two pool windows, at columns x0 and x0 + d2/sw of rows y0 and y0 + 1, into
   acc[0..3] (row y0: x0, x0+1, then the second window's two) and acc[4..7] (row y0 + 1). With d2 = 0 both
   windows are the same one (the last window of an odd row). */
static inline __attribute__((always_inline)) void conv_windows(const float *xg, const float *wg, int64_t sc,
                                                               int64_t sh, const int64_t sw, const int64_t d2,
                                                               int C, const int K, int Op, int y0, int x0,
                                                               __m256 bias, __m256 *acc) {
    for (int i = 0; i < 8; i++) acc[i] = bias;
    const float *wt = wg;
    for (int c = 0; c < C; c++) {
        for (int ky = 0; ky < K; ky++) {
            const float *r0 = xg + c * sc + (y0 + ky) * sh + x0 * sw;
            const float *r1 = r0 + sh;
            for (int kx = 0; kx < K; kx++, wt += Op) {
                const __m256 wv = _mm256_loadu_ps(wt);
                const float *p0 = r0 + kx * sw, *p1 = r1 + kx * sw;
                acc[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(p0), wv, acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + sw), wv, acc[1]);
                acc[2] = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + d2), wv, acc[2]);
                acc[3] = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + d2 + sw), wv, acc[3]);
                acc[4] = _mm256_fmadd_ps(_mm256_broadcast_ss(p1), wv, acc[4]);
                acc[5] = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + sw), wv, acc[5]);
                acc[6] = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + d2), wv, acc[6]);
                acc[7] = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + d2 + sw), wv, acc[7]);
            }
        }
    }
}

/* one model, one image: all pooled outputs (K and sw are passed separately so that the common cases can be
   compiled with them as constants: fully unrolled taps and immediate address offsets) */
static inline __attribute__((always_inline)) void fwd_block(const job_t *a, int g, int b, const int K,
                                                            const int64_t sw, const int ob, const int n) {
    const int C = a->C, O = a->O, Op = a->Op, W2 = a->W2;
    const int64_t GO = (int64_t)a->G * O, sh = a->sh;
    const float *xg = a->x + b * a->sb + g * a->sg;
    {
        const float *wg = a->w + (int64_t)g * C * K * K * Op + ob;
        const __m256 bias = a->bias ? _mm256_loadu_ps(a->bias + (int64_t)g * Op + ob) : _mm256_setzero_ps();
        for (int py = 0; py < a->H2; py++) {
            const int64_t orow = (((int64_t)b * a->H2 + py) * W2) * GO + (int64_t)g * O + ob;
            for (int px = 0; px < W2; px += 2) {  /* two pool windows side by side: 2 rows x 4 columns */
                __m256 acc[8];
                const int two = px + 1 < W2;
                if (two) conv_windows(xg, wg, a->sc, sh, sw, 2 * sw, C, K, Op, 2 * py, 2 * px, bias, acc);
                else conv_windows(xg, wg, a->sc, sh, sw, 0, C, K, Op, 2 * py, 2 * px, bias, acc);  /* odd W2 */
                const int64_t o0 = orow + (int64_t)px * GO;
                pool4(acc[0], acc[1], acc[4], acc[5], a->out + o0, a->idx ? a->idx + o0 : NULL, n, a->relu);
                if (two)
                    pool4(acc[2], acc[3], acc[6], acc[7], a->out + o0 + GO, a->idx ? a->idx + o0 + GO : NULL, n,
                          a->relu);
            }
        }
    }
}

static inline __attribute__((always_inline)) void fwd_image_k(const job_t *a, int g, int b, const int K,
                                                              const int64_t sw) {
    for (int ob = 0; ob < a->O; ob += 8) {  /* 8 output channels at a time; full blocks compiled separately */
        if (a->O - ob >= 8) fwd_block(a, g, b, K, sw, ob, 8);
        else fwd_block(a, g, b, K, sw, ob, a->O - ob);
    }
}

static void fwd_image(const job_t *a, int g, int b) {
    if (a->sw == 1 && a->K == 5) fwd_image_k(a, g, b, 5, 1);
    else if (a->sw == 1 && a->K == 3) fwd_image_k(a, g, b, 3, 1);
    else if (a->K == 5) fwd_image_k(a, g, b, 5, a->sw);
    else if (a->K == 3) fwd_image_k(a, g, b, 3, a->sw);
    else fwd_image_k(a, g, b, a->K, a->sw);
}

/* Copies image b of model g into buf as [H][W][C]. In a channels-last population tensor one model's pixels are
   G*C floats apart (2 KB for CNN-s's conv2 at N=64): every pixel of an image falls into the same few L1 cache
   sets and evicts the others. A private copy (small next to the convolution's arithmetic) avoids that. */
static void gather_image(const job_t *a, int g, int b, float *buf) {
    const int C = a->C, H = a->H, W = a->W;
    const float *xg = a->x + b * a->sb + g * a->sg;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const float *src = xg + y * a->sh + x * a->sw;
            float *dst = buf + ((int64_t)y * W + x) * C;
            if (a->sc == 1 && C % 8 == 0)
                for (int c = 0; c < C; c += 8) _mm256_storeu_ps(dst + c, _mm256_loadu_ps(src + c));
            else
                for (int c = 0; c < C; c++) dst[c] = src[c * a->sc];
        }
}

/* Image b of models g0..g1-1 into bufs[g - g0] ([H][W][C] each, img floats apart), reading each pixel's
   channels of all these models in one sequential pass (for channels-last x: sc == 1, sg == C). */
static void gather_models(const job_t *a, int b, int64_t g0, int64_t g1, float *bufs, int64_t img) {
    const int C = a->C, H = a->H, W = a->W;
    if (!(a->sc == 1 && a->sg == C && C % 8 == 0)) {
        for (int64_t g = g0; g < g1; g++) gather_image(a, (int)g, b, bufs + (g - g0) * img);
        return;
    }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const float *src = a->x + b * a->sb + y * a->sh + x * a->sw + g0 * C;
            float *dst = bufs + ((int64_t)y * W + x) * C;
            for (int64_t g = 0; g < g1 - g0; g++, src += C, dst += img)
                for (int c = 0; c < C; c += 8) _mm256_storeu_ps(dst + c, _mm256_loadu_ps(src + c));
        }
}

static float *alloc_floats(size_t n) {  /* 64-byte aligned: no vector access straddles a cache line */
    void *p = NULL;
    return posix_memalign(&p, 64, sizeof(float) * (n ? n : 1)) == 0 ? (float *)p : NULL;
}

/* whether images are copied first: pixels not adjacent in memory and more than 256 bytes apart */
static int needs_gather(const job_t *a) { return a->sw != 1 && a->sw * (int64_t)sizeof(float) > 256; }

static void *fwd_worker(void *p) {
    const job_t *a = (const job_t *)p;
    if (!needs_gather(a)) {
        for (int64_t i = a->begin; i < a->end; i++)  /* items are (image, model), image-major */
            fwd_image(a, (int)(i % a->G), (int)(i / a->G));
        return NULL;
    }
    return (void *)1;  /* (gathering jobs run fwd_gather_worker) */
}

/* gathering forward: one thread per range of models [begin, end), image by image */
static void *fwd_gather_worker(void *p) {
    const job_t *a = (const job_t *)p;
    const int64_t img = (int64_t)a->H * a->W * a->C + 16;  /* (+16: consecutive images not 4 KB apart) */
    float *bufs = alloc_floats((size_t)(img * (a->end - a->begin)));
    if (!bufs) return (void *)1;
    job_t l = *a;  /* the same job reading private images: [H][W][C] */
    l.sb = 0; l.sg = 0; l.sc = 1; l.sw = a->C; l.sh = (int64_t)a->W * a->C;
    for (int b = 0; b < a->B; b++) {
        gather_models(a, b, a->begin, a->end, bufs, img);
        for (int64_t g = a->begin; g < a->end; g++) {
            l.x = bufs + (g - a->begin) * img;  /* fwd_image reads x at (b, g) with zero strides: this image */
            fwd_image(&l, (int)g, b);
        }
    }
    free(bufs);
    return NULL;
}

/* ----------------------------------------------------------------------------------------------- backward */

static inline __m256 load_d(const float *p, int n) {  /* n lanes; the others zero (and never read) */
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n));
}

/* the gradient through a fused ReLU: zero where the forward output is not positive (as threshold_backward) */
static inline __attribute__((always_inline)) __m256 relu_mask(const job_t *a, __m256 d, int64_t pos, int n) {
    if (!a->act) return d;
    return _mm256_and_ps(d, _mm256_cmp_ps(load_d(a->act + pos, n), _mm256_setzero_ps(), _CMP_GT_OQ));
}

static inline __m256i load_idx(const uint8_t *p, int n) {  /* n pool indices as int32 lanes, never over-reading */
    if (n == 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    uint8_t tmp[16] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)tmp));
}

/* Per pooled output the gradient d (8 lanes = 8 output channels) goes to one window position per lane, given by
   the pool index: dx = idx & 1, dy = idx >> 1. So for tap (c, ky, kx) the input each lane needs is selected from
   the four window candidates with two blends, and one FMA accumulates it: 1 FMA per tap and output instead of
   the 4 of a masked formulation. Along a kernel row the candidates slide: 2 new broadcasts per tap. The
   accumulators of one kernel row (K of them) live in registers while one image's outputs stream by. */
static inline __attribute__((always_inline)) void bwd_block(const job_t *a, int g, float *accbuf, const int K,
                                                            const int64_t sw, const int ob, const int n) {
    const int C = a->C, O = a->O, W2 = a->W2, T = C * K * K;
    const int64_t GO = (int64_t)a->G * O, sh = a->sh;
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    {
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
                        const __m256 d = relu_mask(a, load_d(a->dout + pos, n), pos, n);
                        if (row == 0) dbias = _mm256_add_ps(dbias, d);
                        const __m256i iv = load_idx(a->idx + pos, n);
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
            memcpy(a->dw + ((int64_t)g * T + t) * O + ob, accbuf + (int64_t)t * 8, sizeof(float) * (size_t)n);
        if (a->db) _mm256_maskstore_ps(a->db + (int64_t)g * O + ob, lane_mask(n), dbias);
    }
}

static inline __attribute__((always_inline)) void bwd_model_k(const job_t *a, int g, float *accbuf, const int K,
                                                              const int64_t sw) {
    for (int ob = 0; ob < a->O; ob += 8) {  /* full blocks of 8 output channels compiled separately */
        if (a->O - ob >= 8) bwd_block(a, g, accbuf, K, sw, ob, 8);
        else bwd_block(a, g, accbuf, K, sw, ob, a->O - ob);
    }
}

/* generic kernel sizes: the same computation with the row's accumulators in memory */
static void bwd_model_any(const job_t *a, int g, float *accbuf) {
    const int K = a->K, C = a->C, O = a->O, W2 = a->W2, T = C * K * K;
    const int64_t GO = (int64_t)a->G * O, sh = a->sh, sw = a->sw;
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    for (int ob = 0; ob < O; ob += 8) {
        const int n = O - ob < 8 ? O - ob : 8;
        memset(accbuf, 0, sizeof(float) * 8 * (size_t)T);
        __m256 dbias = _mm256_setzero_ps();
        for (int b = 0; b < a->B; b++) {
            const float *xg = a->x + b * a->sb + g * a->sg;
            for (int py = 0; py < a->H2; py++) {
                int64_t pos = (((int64_t)b * a->H2 + py) * W2) * GO + (int64_t)g * O + ob;
                for (int px = 0; px < W2; px++, pos += GO) {
                    const __m256 d = relu_mask(a, load_d(a->dout + pos, n), pos, n);
                    dbias = _mm256_add_ps(dbias, d);
                    const __m256i iv = load_idx(a->idx + pos, n);
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
            memcpy(a->dw + ((int64_t)g * T + t) * O + ob, accbuf + (int64_t)t * 8, sizeof(float) * (size_t)n);
        if (a->db) _mm256_maskstore_ps(a->db + (int64_t)g * O + ob, lane_mask(n), dbias);
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

/* Input and weight gradients of a layer whose input needs a gradient (a population's second convolution,
   say). Channels are the SIMD lanes here (C a multiple of 8, channels contiguous in x: channels-last input).
   The pooled gradient reaches one conv output per (pooled position, output channel): the window position the
   pool picked. For it and every tap (ky, kx):
       dX[y + ky, x + kx, :] += d * W[o, :, ky, kx]        dW[o, ky, kx, :] += d * X[y + ky, x + kx, :]
   which touches only the outputs the pool kept (a quarter of a dense gradient) and needs no zero-filled
   full-resolution map. One thread owns a model: its dW block, and its slice of every image of dX (zeroed here
   first), so no two threads write the same memory. (The bias gradient is a plain sum, left to the caller.) */
static inline __attribute__((always_inline)) void bwd_full_image_k(const job_t *a, int g, int b, const float *xb,
                                                                   float *dxb, const int K) {
    const int C = a->C, O = a->O, W2 = a->W2, H = a->H, W = a->W;
    const int64_t GO = (int64_t)a->G * O, sh = (int64_t)W * C, sw = C;  /* private [H][W][C] copies */
    float *dwg = a->dw + (int64_t)g * O * K * K * C;
    const float *wcg = a->wc + (int64_t)g * O * K * K * C;
    const int64_t pos0 = ((int64_t)b * a->H2 * W2) * GO + (int64_t)g * O;
    memset(dxb, 0, sizeof(float) * (size_t)H * W * C);
    /* per (channel block, output channel, kernel row): that row's K weights and K weight-gradient accumulators
       stay in registers while the image's pooled outputs stream by */
    for (int c = 0; c < C; c += 8) {
        for (int o = 0; o < O; o++) {
            for (int ky = 0; ky < K; ky++) {
                const float *wr = wcg + ((int64_t)o * K + ky) * K * C + c;
                float *dwr = dwg + ((int64_t)o * K + ky) * K * C + c;
                __m256 wv[8], acc[8];
#pragma GCC unroll 8
                for (int kx = 0; kx < 8; kx++) wv[kx] = acc[kx] = _mm256_setzero_ps();  /* (for generic K) */
#pragma GCC unroll 8
                for (int kx = 0; kx < K; kx++) {
                    wv[kx] = _mm256_loadu_ps(wr + kx * C);
                    acc[kx] = _mm256_loadu_ps(dwr + kx * C);
                }
                for (int py = 0; py < a->H2; py++) {
                    for (int px = 0; px < W2; px++) {
                        const int64_t pos = pos0 + ((int64_t)py * W2 + px) * GO + o;
                        if (a->act && !(a->act[pos] > 0.f)) continue;  /* a fused ReLU passed no gradient */
                        const int j = a->idx[pos];
                        const __m256 d = _mm256_set1_ps(a->dout[pos]);
                        const int64_t off = (2 * py + (j >> 1) + ky) * sh + (2 * px + (j & 1)) * sw + c;
                        const float *xr = xb + off;
                        float *dxr = dxb + off;
#pragma GCC unroll 8
                        for (int kx = 0; kx < K; kx++) {
                            acc[kx] = _mm256_fmadd_ps(d, _mm256_loadu_ps(xr + kx * sw), acc[kx]);
                            _mm256_storeu_ps(dxr + kx * sw, _mm256_fmadd_ps(d, wv[kx], _mm256_loadu_ps(dxr + kx * sw)));
                        }
                    }
                }
#pragma GCC unroll 8
                for (int kx = 0; kx < K; kx++) _mm256_storeu_ps(dwr + kx * C, acc[kx]);
            }
        }
    }
}

static void bwd_full_image(const job_t *a, int g, int b, const float *xb, float *dxb) {
    if (a->K == 5) bwd_full_image_k(a, g, b, xb, dxb, 5);
    else if (a->K == 3) bwd_full_image_k(a, g, b, xb, dxb, 3);
    else bwd_full_image_k(a, g, b, xb, dxb, a->K);  /* K <= 8 (checked by the driver) */
}

/* dx[b] ([H, W, G*C]) of models g0..g1-1 from their private [H][W][C] gradients, pixel by pixel */
static void scatter_models(const job_t *a, int b, int64_t g0, int64_t g1, const float *bufs, int64_t img) {
    const int C = a->C, H = a->H, W = a->W;
    const int64_t GC = (int64_t)a->G * C;
    for (int64_t q = 0; q < (int64_t)H * W; q++) {
        float *dst = a->dx + ((int64_t)b * H * W + q) * GC + g0 * C;
        const float *src = bufs + q * C;
        for (int64_t g = 0; g < g1 - g0; g++, dst += C, src += img)
            for (int c = 0; c < C; c += 8) _mm256_storeu_ps(dst + c, _mm256_loadu_ps(src + c));
    }
}

static void *bwd_full_worker(void *p) {
    const job_t *a = (const job_t *)p;
    const int64_t img = (int64_t)a->H * a->W * a->C + 16, m = a->end - a->begin;
    float *xbufs = alloc_floats((size_t)(2 * img * m));
    if (!xbufs) return (void *)1;
    float *dxbufs = xbufs + img * m;
    const int64_t per_model = (int64_t)a->O * a->K * a->K * a->C;
    memset(a->dw + a->begin * per_model, 0, sizeof(float) * (size_t)(m * per_model));
    /* image by image: the image of this thread's models is read (and its gradient written) in one sequential
       pass, and the per-model work runs on private contiguous copies */
    for (int b = 0; b < a->B; b++) {
        gather_models(a, b, a->begin, a->end, xbufs, img);
        for (int64_t g = a->begin; g < a->end; g++)
            bwd_full_image(a, (int)g, b, xbufs + (g - a->begin) * img, dxbufs + (g - a->begin) * img);
        scatter_models(a, b, a->begin, a->end, dxbufs, img);
    }
    free(xbufs);
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

int zs_convpool_abi(void) { return 5; }

int zs_convpool_forward(const float *x, const int64_t *xs, int B, int G, int C, int H, int W, int K, int O,
                         const float *w, const float *bias, float *out, uint8_t *idx, int relu, int nthreads) {
    job_t a;
    memset(&a, 0, sizeof a);
    a.Op = (O + 7) / 8 * 8;
    a.x = x; a.sb = xs[0]; a.sg = xs[1]; a.sc = xs[2]; a.sh = xs[3]; a.sw = xs[4];
    a.B = B; a.G = G; a.C = C; a.H = H; a.W = W; a.K = K; a.O = O;
    a.H2 = (H - K + 1) / 2; a.W2 = (W - K + 1) / 2;
    a.w = w; a.bias = bias; a.out = out; a.idx = idx; a.relu = relu;
    if (needs_gather(&a)) return run(&a, G, nthreads, fwd_gather_worker);
    return run(&a, (int64_t)G * B, nthreads, fwd_worker);
}

int zs_convpool_backward(const float *x, const int64_t *xs, int B, int G, int C, int H, int W, int K, int O,
                          const float *dout, const uint8_t *idx, const float *act, float *dw, float *db,
                          int nthreads) {
    job_t a;
    memset(&a, 0, sizeof a);
    a.x = x; a.sb = xs[0]; a.sg = xs[1]; a.sc = xs[2]; a.sh = xs[3]; a.sw = xs[4];
    a.B = B; a.G = G; a.C = C; a.H = H; a.W = W; a.K = K; a.O = O;
    a.H2 = (H - K + 1) / 2; a.W2 = (W - K + 1) / 2;
    a.dout = dout; a.idx = (uint8_t *)idx; a.act = act; a.dw = dw; a.db = db;
    return run(&a, G, nthreads, bwd_worker);
}

/* dx must be [B, H, W, G*C] (contiguous), wc [G, O, K, K, C], dw [G, O, K, K, C]; x channels contiguous, C % 8 == 0 */
int zs_convpool_backward_full(const float *x, const int64_t *xs, int B, int G, int C, int H, int W, int K, int O,
                              const float *dout, const uint8_t *idx, const float *act, const float *wc, float *dx,
                              float *dw, int nthreads) {
    job_t a;
    memset(&a, 0, sizeof a);
    if (C % 8 != 0 || xs[2] != 1 || K > 8) return -2;
    a.x = x; a.sb = xs[0]; a.sg = xs[1]; a.sc = xs[2]; a.sh = xs[3]; a.sw = xs[4];
    a.B = B; a.G = G; a.C = C; a.H = H; a.W = W; a.K = K; a.O = O;
    a.H2 = (H - K + 1) / 2; a.W2 = (W - K + 1) / 2;
    a.dout = dout; a.idx = (uint8_t *)idx; a.act = act; a.wc = wc; a.dx = dx; a.dw = dw;
    return run(&a, G, nthreads, bwd_full_worker);
}
