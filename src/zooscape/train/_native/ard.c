/*
 * The "weight" estimator of variational-dropout (ARD) twins in one pass forward and one pass backward (float32,
 * AVX2/FMA), called through ctypes by zooscape.sparsify._native_ard. PyTorch's version (sparsify.pop_ard's
 * _WeightSample) makes about 29 elementwise passes per step over the weights, log sigma^2, the noise and the
 * gradient; at MLP sizes (a few thousand weights per model) those passes cost more than the model's matrix
 * products.
 *
 * Per element (Molchanov et al. 2017; Kingma et al. 2015, sec. 2.3), with scale = the KL penalty's weight:
 *   forward:  t = w*w + 1e-8;  u = ls - log(t);  la = clip(u, -10, 10);  out = w + |w| * (exp(la/2) * eps)
 *   backward: n = exp(la/2) * eps;  q = g * n;  gla = 0.5 * q * |w|
 *             gla -= scale * (k1 k3 s (1 - s) + 0.5 sigmoid(-la)),  s = sigmoid(k2 + k3 la),
 *             sigmoid(-la) = 1 / (1 + exp(la/2)^2)  (la saved by the forward)
 *             gls = gla * [la == u];  gw = g + q * sign(w) - 2 * gls * w / t
 * The *_rng entries generate eps inline (counter-based Philox-4x32-10 + Box-Muller, below), and
 * zs_ard_local_sample is the "local" estimator's sample mu + sqrt(var + 1e-8) eps with eps inline.
 * log and exp are Cephes-style polynomials (as in the widely used avx_mathfun; about 1 ulp): results agree with
 * PyTorch's to float32 rounding, not bit for bit. Every element, also in a row's tail, goes through the same
 * 8-wide code, so an element's result depends only on its inputs: a twin computes the same in any population.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define K1 0.63576f
#define K2 1.8732f
#define K3 1.48695f

static inline __m256 exp8(__m256 x) {
    /* NaN propagates: the constant is the first operand of min/max (they return the second on NaN) */
    x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
    x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), x);
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, z, x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    e = _mm256_slli_epi32(e, 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* log of positive normal numbers (t = w*w + 1e-8 >= 1e-8); NaN and +inf are passed through */
static inline __m256 log8(__m256 x0) {
    __m256 x = _mm256_max_ps(x0, _mm256_set1_ps(1.17549435e-38f));
    __m256i ei = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
    x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(~0x7f800000)));
    x = _mm256_or_ps(x, _mm256_set1_ps(0.5f));
    ei = _mm256_sub_epi32(ei, _mm256_set1_epi32(0x7f));
    __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(ei), _mm256_set1_ps(1.0f));
    const __m256 mask = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    const __m256 tmp = _mm256_and_ps(x, mask);
    x = _mm256_sub_ps(x, _mm256_set1_ps(1.0f));
    e = _mm256_sub_ps(e, _mm256_and_ps(_mm256_set1_ps(1.0f), mask));
    x = _mm256_add_ps(x, tmp);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(7.0376836292E-2f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174E-1f));
    y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
    x = _mm256_add_ps(x, y);
    x = _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), x);
    /* NaN in, NaN out; +inf in, +inf out */
    const __m256 special = _mm256_or_ps(_mm256_cmp_ps(x0, x0, _CMP_UNORD_Q),
                                        _mm256_cmp_ps(x0, _mm256_set1_ps(__builtin_inff()), _CMP_EQ_OQ));
    return _mm256_blendv_ps(x, x0, special);
}

static inline __m256 sigmoid8(__m256 z) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}

static const float TAIL_W = 1.0f;  /* padding of a row's last partial vector (results discarded) */

/* la (clipped log alpha), the clip's pass mask (1 where la == u) and t = w*w + 1e-8 */
static inline __m256 log_alpha8(__m256 w, __m256 ls, __m256 *inside, __m256 *t) {
    *t = _mm256_add_ps(_mm256_mul_ps(w, w), _mm256_set1_ps(1e-8f));
    const __m256 u = _mm256_sub_ps(ls, log8(*t));
    __m256 la = _mm256_max_ps(_mm256_set1_ps(-10.0f), u);
    la = _mm256_min_ps(_mm256_set1_ps(10.0f), la);
    *inside = _mm256_and_ps(_mm256_cmp_ps(la, u, _CMP_EQ_OQ), _mm256_set1_ps(1.0f));
    return la;
}

static inline __m256 absv(__m256 w) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), w); }

/* The forward also writes la for the backward, coded: a clipped la (no gradient through the clip) is stored as
   +-10.5, outside the clip range, so that the backward needs neither log nor the clip's comparison. */
static inline void fwd8v(const float *w, const float *ls, __m256 epsv, float *out, float *lac) {
    __m256 inside, t;
    const __m256 wv = _mm256_loadu_ps(w);
    const __m256 la = log_alpha8(wv, _mm256_loadu_ps(ls), &inside, &t);
    const __m256 noise = _mm256_mul_ps(exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f))), epsv);
    _mm256_storeu_ps(out, _mm256_add_ps(wv, _mm256_mul_ps(absv(wv), noise)));
    const __m256 coded = _mm256_mul_ps(la, _mm256_set1_ps(1.05f));  /* +-10 -> +-10.5 */
    _mm256_storeu_ps(lac, _mm256_blendv_ps(coded, la, _mm256_cmp_ps(inside, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
}

static inline void fwd8(const float *w, const float *ls, const float *eps, float *out, float *lac) {
    fwd8v(w, ls, _mm256_loadu_ps(eps), out, lac);
}

/* the backward's last step, shared by both formats: gw = g + q sign(w) - 2 gls w / t (t = w*w + 1e-8); stores
   gw and gls */
static inline void bwd_out8(__m256 gv, __m256 wv, __m256 q, __m256 glsv, float *gw, float *gls) {
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(wv, wv), _mm256_set1_ps(1e-8f));
    /* sign(w): +1, -1, or 0 for w == 0 */
    const __m256 zero = _mm256_setzero_ps();
    const __m256 sgn = _mm256_sub_ps(_mm256_and_ps(_mm256_cmp_ps(wv, zero, _CMP_GT_OQ), _mm256_set1_ps(1.0f)),
                                     _mm256_and_ps(_mm256_cmp_ps(wv, zero, _CMP_LT_OQ), _mm256_set1_ps(1.0f)));
    __m256 gwv = _mm256_fmadd_ps(q, sgn, gv);
    gwv = _mm256_fmadd_ps(_mm256_mul_ps(glsv, _mm256_div_ps(wv, t)), _mm256_set1_ps(-2.0f), gwv);
    _mm256_storeu_ps(gw, gwv);
    _mm256_storeu_ps(gls, glsv);
}

/* The "kl" format (the default with inline noise): the forward also does the backward's transcendental work. It
   returns the noise n = exp(la/2) eps (written for the backward instead of eps) and writes code = scale * dKL/d la
   where the clip passes the gradient, +inf where it does not (NaN stays NaN), so the backward needs no exp:
   gla = 0.5 g n |w| + code (the same formula; the KL term's products rounded in another order). */
static inline __m256 fwdkl8v(const float *w, const float *ls, __m256 epsv, float scale, float *out, float *code) {
    __m256 inside, t;
    const __m256 wv = _mm256_loadu_ps(w);
    const __m256 la = log_alpha8(wv, _mm256_loadu_ps(ls), &inside, &t);
    const __m256 e = exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f)));
    const __m256 noise = _mm256_mul_ps(e, epsv);
    _mm256_storeu_ps(out, _mm256_add_ps(wv, _mm256_mul_ps(absv(wv), noise)));
    __m256 c = _mm256_setzero_ps();
    if (scale != 0.0f) {
        /* scale * (-k1 k3 s (1 - s) - 0.5 sigmoid(-la)) with s = 1 / (1 + a), a = exp(-(k2 + k3 la)), sigmoid(-la)
           = 1 / m, m = 1 + e^2: -scale (k1 k3 a m + 0.5 p^2) / (p^2 m), p = 1 + a, one division (la in [-10, 10]:
           no overflow) */
        const __m256 one = _mm256_set1_ps(1.0f);
        const __m256 a = exp8(_mm256_fnmadd_ps(la, _mm256_set1_ps(K3), _mm256_set1_ps(-K2)));
        const __m256 p = _mm256_add_ps(one, a), m = _mm256_fmadd_ps(e, e, one);
        const __m256 p2 = _mm256_mul_ps(p, p);
        const __m256 num = _mm256_fmadd_ps(_mm256_mul_ps(a, _mm256_set1_ps(K1 * K3)), m,
                                           _mm256_mul_ps(p2, _mm256_set1_ps(0.5f)));
        c = _mm256_mul_ps(_mm256_div_ps(num, _mm256_mul_ps(p2, m)), _mm256_set1_ps(-scale));
    }
    /* NaN la: not inside, +inf; the NaN reaches the gradients through n */
    _mm256_storeu_ps(code, _mm256_blendv_ps(_mm256_set1_ps(__builtin_inff()), c,
                                            _mm256_cmp_ps(inside, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
    return noise;
}

static inline void bwdkl8(const float *g, const float *w, const float *nz, const float *code, float *gw, float *gls) {
    const __m256 wv = _mm256_loadu_ps(w), gv = _mm256_loadu_ps(g), c = _mm256_loadu_ps(code);
    const __m256 in = _mm256_cmp_ps(c, _mm256_set1_ps(__builtin_inff()), _CMP_NEQ_OQ);  /* NaN: not inside */
    const __m256 q = _mm256_mul_ps(gv, _mm256_loadu_ps(nz));
    __m256 gla = _mm256_mul_ps(_mm256_mul_ps(q, absv(wv)), _mm256_set1_ps(0.5f));
    gla = _mm256_add_ps(gla, _mm256_and_ps(c, in));
    bwd_out8(gv, wv, q, _mm256_mul_ps(gla, _mm256_and_ps(in, _mm256_set1_ps(1.0f))), gw, gls);
}

static inline void bwd8v(const float *g, const float *w, const float *lac, __m256 epsv, float scale, float *gw,
                         float *gls) {
    const __m256 wv = _mm256_loadu_ps(w), gv = _mm256_loadu_ps(g), c = _mm256_loadu_ps(lac);
    const __m256 ten = _mm256_set1_ps(10.0f);
    /* inside the clip: |c| <= 10 (NaN: not inside, and NaN propagates through la) */
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(absv(c), ten, _CMP_LE_OQ), _mm256_set1_ps(1.0f));
    const __m256 la = _mm256_max_ps(_mm256_set1_ps(-10.0f), _mm256_min_ps(ten, c));
    const __m256 e = exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f)));  /* exp(la/2) */
    const __m256 q = _mm256_mul_ps(gv, _mm256_mul_ps(e, epsv));
    __m256 gla = _mm256_mul_ps(_mm256_mul_ps(q, absv(wv)), _mm256_set1_ps(0.5f));
    if (scale != 0.0f) {
        const __m256 one = _mm256_set1_ps(1.0f);
        const __m256 s = sigmoid8(_mm256_fmadd_ps(la, _mm256_set1_ps(K3), _mm256_set1_ps(K2)));
        const __m256 ds = _mm256_sub_ps(s, _mm256_mul_ps(s, s));
        gla = _mm256_fmadd_ps(ds, _mm256_set1_ps(-K1 * K3 * scale), gla);
        const __m256 sneg = _mm256_div_ps(one, _mm256_fmadd_ps(e, e, one));  /* sigmoid(-la) = 1 / (1 + e^la) */
        gla = _mm256_fmadd_ps(sneg, _mm256_set1_ps(-0.5f * scale), gla);
    }
    bwd_out8(gv, wv, q, _mm256_mul_ps(gla, inside), gw, gls);
}

static inline void bwd8(const float *g, const float *w, const float *lac, const float *eps, float scale, float *gw,
                        float *gls) {
    bwd8v(g, w, lac, _mm256_loadu_ps(eps), scale, gw, gls);
}

static void fwd_row(const float *w, const float *ls, const float *eps, float *out, float *lac, int64_t K) {
    int64_t i = 0;
    for (; i + 8 <= K; i += 8) fwd8(w + i, ls + i, eps + i, out + i, lac + i);
    if (i < K) {
        float bw[8], bl[8], be[8], bo[8], bc[8];
        for (int j = 0; j < 8; j++) { bw[j] = TAIL_W; bl[j] = 0.0f; be[j] = 0.0f; }
        const int64_t r = K - i;
        memcpy(bw, w + i, r * sizeof(float));
        memcpy(bl, ls + i, r * sizeof(float));
        memcpy(be, eps + i, r * sizeof(float));
        fwd8(bw, bl, be, bo, bc);
        memcpy(out + i, bo, r * sizeof(float));
        memcpy(lac + i, bc, r * sizeof(float));
    }
}

/* one row of a backward: the "la coded" format (kl == 0: a = lac, b = eps; bwd8) or the "kl" format (kl == 1:
   a = nz, b = code; bwdkl8, scale unused); a row's last partial vector through the same code on padded copies */
static inline void bwd_any8(int kl, const float *g, const float *w, const float *a, const float *b, float scale,
                            float *gw, float *gls) {
    if (kl) bwdkl8(g, w, a, b, gw, gls);
    else bwd8(g, w, a, b, scale, gw, gls);
}

static void bwd_row(int kl, const float *g, const float *w, const float *a, const float *b, float scale, float *gw,
                    float *gls, int64_t K) {
    int64_t i = 0;
    for (; i + 8 <= K; i += 8) bwd_any8(kl, g + i, w + i, a + i, b + i, scale, gw + i, gls + i);
    if (i < K) {
        float bg[8], bw[8], ba[8], bb[8], bgw[8], bgl[8];
        for (int j = 0; j < 8; j++) { bg[j] = 0.0f; bw[j] = TAIL_W; ba[j] = 0.0f; bb[j] = 0.0f; }
        const int64_t r = K - i;
        memcpy(bg, g + i, r * sizeof(float));
        memcpy(bw, w + i, r * sizeof(float));
        memcpy(ba, a + i, r * sizeof(float));
        memcpy(bb, b + i, r * sizeof(float));
        bwd_any8(kl, bg, bw, ba, bb, scale, bgw, bgl);
        memcpy(gw + i, bgw, r * sizeof(float));
        memcpy(gls + i, bgl, r * sizeof(float));
    }
}

/* the row loop of an entry point over N rows of K elements, on nthreads OpenMP threads when worth it */
#ifdef _OPENMP
#define PARALLEL_ROWS _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && N * K >= 65536)")
#else
#define PARALLEL_ROWS
#endif

int zs_ard_abi(void) { return 2; }

/* w, ls, eps: [N, K] rows ldw, ldl, lde apart (unit column stride); out, lac (la coded for the backward): [N, K]
   contiguous */
int zs_ard_sample_forward(const float *w, int64_t ldw, const float *ls, int64_t ldl, const float *eps, int64_t lde,
                          float *out, float *lac, int64_t N, int64_t K, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++) fwd_row(w + n * ldw, ls + n * ldl, eps + n * lde, out + n * K, lac + n * K, K);
    (void)nthreads;
    return 0;
}

/* g: [N, K] rows ldg apart; w, eps as in the forward; lac: the forward's [N, K]; gw, gls: [N, K] contiguous */
int zs_ard_sample_backward(const float *g, int64_t ldg, const float *w, int64_t ldw, const float *lac,
                           const float *eps, int64_t lde, float scale, float *gw, float *gls, int64_t N, int64_t K,
                           int nthreads) {
    if (nthreads < 1) nthreads = 1;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++)
        bwd_row(0, g + n * ldg, w + n * ldw, lac + n * K, eps + n * lde, scale, gw + n * K, gls + n * K, K);
    (void)nthreads;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Counter-based Gaussian noise (the "weight" estimator's eps), evaluated inline by the sample kernel.
 *
 * Philox-4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
 * Random123 library; the generator of cuRAND and of PyTorch's CUDA RNG) maps a 128-bit counter and a 64-bit key to
 * four 32-bit words; it passes BigCrush with a margin (7 rounds already do; 10 is the published default). Eight
 * counters run at once in the eight 32-bit lanes of an AVX2 register (32x32 -> 64-bit products on the even and the
 * odd lanes). Counter of a model's element e at step s: j = (e / 32) * 8 + e % 8, (c0, c1, c2, c3) = (j mod 2^32,
 * s, tag, j / 2^32); element e takes word k = (e % 32) / 8 of counter j. So 32 consecutive elements are one Philox
 * call of 8 lanes whose four words are four vectors of 8 consecutive elements (no shuffles). Words (x0, x1) and
 * (x2, x3) each give two normals by Box-Muller (Box & Muller 1958): r = sqrt(-2 log u), u = ((x0 >> 8) | 1) 2^-24
 * in (0, 1) (|z| <= 5.8), angle 2 pi v 2^-24 with v = x1 >> 8, reduced exactly in integers to a quadrant q and
 * a in [-pi/4, pi/4]; word 0 = r cos, 1 = r sin (of x0, x1), 2 = r cos, 3 = r sin (of x2, x3). sin/cos are Cephes
 * polynomials on [-pi/4, pi/4] (about 1 ulp). The PyTorch twin of this code (zooscape.sparsify.counter_noise)
 * computes the same integers exactly and the same floats to float32 rounding.
 * --------------------------------------------------------------------------------------------------------------- */

#define PH_M0 0xD2511F53u
#define PH_M1 0xCD9E8D57u
#define PH_W0 0x9E3779B9u
#define PH_W1 0xBB67AE85u

static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    const __m256i pe = _mm256_mul_epu32(a, m);                           /* lanes 0, 2, 4, 6 (64-bit products) */
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);    /* lanes 1, 3, 5, 7 */
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

/* Philox-4x32-10 of the counters (c0[l], c1, c2, c3) for the 8 lanes l, key (k0, k1) */
static inline void philox8(__m256i c0, uint32_t c1s, uint32_t c2s, uint32_t c3s, uint32_t k0, uint32_t k1,
                           __m256i x[4]) {
    const __m256i m0 = _mm256_set1_epi32((int)PH_M0), m1 = _mm256_set1_epi32((int)PH_M1);
    __m256i c1 = _mm256_set1_epi32((int)c1s), c2 = _mm256_set1_epi32((int)c2s), c3 = _mm256_set1_epi32((int)c3s);
    for (int r = 0; r < 10; r++) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0, m0, &hi0, &lo0);
        mulhilo8(c2, m1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        c1 = lo1;
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c3 = lo0;
        k0 += PH_W0;
        k1 += PH_W1;
    }
    x[0] = c0; x[1] = c1; x[2] = c2; x[3] = c3;
}

/* (r cos, r sin) of Box-Muller from the words xa (radius) and xb (angle) */
static inline void boxmuller8(__m256i xa, __m256i xb, __m256 *zc, __m256 *zs) {
    const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_or_si256(_mm256_srli_epi32(xa, 8), _mm256_set1_epi32(1))),
                                   _mm256_set1_ps(5.9604644775390625e-8f));  /* 2^-24 */
    const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log8(u)));
    const __m256i v = _mm256_srli_epi32(xb, 8);                                      /* angle = 2 pi v / 2^24 */
    const __m256i q = _mm256_srli_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(1 << 21)), 22);  /* 0..4 */
    const __m256i f = _mm256_sub_epi32(v, _mm256_slli_epi32(q, 22));                 /* [-2^21, 2^21) */
    const __m256 a = _mm256_mul_ps(_mm256_cvtepi32_ps(f), _mm256_set1_ps((float)(1.57079632679489661923 / 4194304.0)));  /* f (pi/2) 2^-22 */
    const __m256 z = _mm256_mul_ps(a, a);
    __m256 s = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891E-4f), z, _mm256_set1_ps(8.3321608736E-3f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.6666654611E-1f));
    s = _mm256_fmadd_ps(_mm256_mul_ps(s, z), a, a);
    __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948E-5f), z, _mm256_set1_ps(-1.388731625493765E-3f));
    c = _mm256_fmadd_ps(c, z, _mm256_set1_ps(4.166664568298827E-2f));
    c = _mm256_fmadd_ps(_mm256_mul_ps(c, z), z, _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z, _mm256_set1_ps(1.0f)));
    /* cos(q pi/2 + a), sin(q pi/2 + a): odd q swaps cos and sin; cos negated for q = 1, 2, sin for q = 2, 3 */
    const __m256i q4 = _mm256_and_si256(q, _mm256_set1_epi32(3));
    const __m256 odd = _mm256_castsi256_ps(_mm256_slli_epi32(q4, 31));
    const __m256 cq = _mm256_blendv_ps(c, s, odd), sq = _mm256_blendv_ps(s, c, odd);
    const __m256 negc = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(q4, _mm256_set1_epi32(1)), 30));
    const __m256 negs = _mm256_castsi256_ps(_mm256_slli_epi32(q4, 30));
    const __m256 sign = _mm256_set1_ps(-0.0f);
    *zc = _mm256_mul_ps(r, _mm256_xor_ps(cq, _mm256_and_ps(negc, sign)));
    *zs = _mm256_mul_ps(r, _mm256_xor_ps(sq, _mm256_and_ps(negs, sign)));
}

/* the 32 normals of elements 32 b .. 32 b + 31 of the stream (key, step, tag) */
static inline void noise32(int64_t b, uint32_t k0, uint32_t k1, uint32_t step, uint32_t tag, __m256 z[4]) {
    const uint64_t j0 = (uint64_t)b * 8u;
    const __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)j0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i x[4];
    philox8(c0, step, tag, (uint32_t)(j0 >> 32), k0, k1, x);
    boxmuller8(x[0], x[1], &z[0], &z[1]);
    boxmuller8(x[2], x[3], &z[2], &z[3]);
}

/* One row of the sample with eps generated inline: the forward (mode 0: a = ls; o1, o2 = out, lac; eps also
   written to eps_out unless it is NULL), the backward with eps generated again (mode 1: a = lac; o1, o2 = gw,
   gls) or the "kl" forward (mode 2: a = ls; o1, o2 = out, code; the noise n written to eps_out). A row's last
   partial vector goes through the same 8-wide code on padded copies. */
static void rng_row(int mode, const float *g, const float *w, const float *a, uint32_t k0, uint32_t k1,
                    uint32_t step, uint32_t tag, float scale, float *o1, float *o2, float *eps_out, int64_t K) {
    for (int64_t b = 0; b * 32 < K; b++) {
        __m256 z[4];
        noise32(b, k0, k1, step, tag, z);
        for (int k = 0; k < 4; k++) {
            const int64_t i = b * 32 + 8 * k;
            if (i >= K) break;
            const int64_t r = K - i < 8 ? K - i : 8;
            float bg[8], bw[8], ba[8], b1[8], b2[8];
            const float *pg = g ? g + i : NULL, *pw = w + i, *pa = a + i;
            float *p1 = o1 + i, *p2 = o2 + i;
            if (r < 8) {
                for (int j = 0; j < 8; j++) { bg[j] = 0.0f; bw[j] = TAIL_W; ba[j] = 0.0f; }
                if (g) memcpy(bg, g + i, (size_t)r * sizeof(float));
                memcpy(bw, w + i, (size_t)r * sizeof(float));
                memcpy(ba, a + i, (size_t)r * sizeof(float));
                pg = bg; pw = bw; pa = ba; p1 = b1; p2 = b2;
            }
            __m256 kept = z[k];
            if (mode == 1) bwd8v(pg, pw, pa, z[k], scale, p1, p2);
            else if (mode == 2) kept = fwdkl8v(pw, pa, z[k], scale, p1, p2);
            else fwd8v(pw, pa, z[k], p1, p2);
            if (r < 8) {
                memcpy(o1 + i, b1, (size_t)r * sizeof(float));
                memcpy(o2 + i, b2, (size_t)r * sizeof(float));
            }
            if (eps_out) {
                float bz[8];
                _mm256_storeu_ps(bz, kept);
                memcpy(eps_out + i, bz, (size_t)r * sizeof(float));
            }
        }
    }
}

/* as zs_ard_sample_forward, eps of row n from the stream (keys[n], step, tag); eps_out ([N, K] contiguous) may be
   NULL */
int zs_ard_sample_forward_rng(const float *w, int64_t ldw, const float *ls, int64_t ldl, const int64_t *keys,
                              int64_t step, int64_t tag, float *out, float *lac, float *eps_out, int64_t N, int64_t K,
                              int nthreads) {
    if (nthreads < 1) nthreads = 1;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++)
        rng_row(0, NULL, w + n * ldw, ls + n * ldl, (uint32_t)keys[2 * n], (uint32_t)keys[2 * n + 1], (uint32_t)step,
                (uint32_t)tag, 0.0f, out + n * K, lac + n * K, eps_out ? eps_out + n * K : NULL, K);
    (void)nthreads;
    return 0;
}

/* as zs_ard_sample_backward, eps generated again from (keys[n], step, tag) */
int zs_ard_sample_backward_rng(const float *g, int64_t ldg, const float *w, int64_t ldw, const float *lac,
                               const int64_t *keys, int64_t step, int64_t tag, float scale, float *gw, float *gls,
                               int64_t N, int64_t K, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++)
        rng_row(1, g + n * ldg, w + n * ldw, lac + n * K, (uint32_t)keys[2 * n], (uint32_t)keys[2 * n + 1],
                (uint32_t)step, (uint32_t)tag, scale, gw + n * K, gls + n * K, NULL, K);
    (void)nthreads;
    return 0;
}

/* the "kl" format: as zs_ard_sample_forward_rng, writing out, code (scale * dKL/d la or +inf, see fwdkl8v) and
   the noise n = exp(la/2) eps ([N, K] contiguous each) */
int zs_ard_sample_forward_kl(const float *w, int64_t ldw, const float *ls, int64_t ldl, const int64_t *keys,
                             int64_t step, int64_t tag, float scale, float *out, float *code, float *nz, int64_t N,
                             int64_t K, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++)
        rng_row(2, NULL, w + n * ldw, ls + n * ldl, (uint32_t)keys[2 * n], (uint32_t)keys[2 * n + 1], (uint32_t)step,
                (uint32_t)tag, scale, out + n * K, code + n * K, nz + n * K, K);
    (void)nthreads;
    return 0;
}

/* the "kl" format's backward (no transcendental function): g rows ldg apart, w rows ldw apart, code and nz from
   zs_ard_sample_forward_kl; gw, gls rows ldgw, ldgls apart (e.g. straight into a flat gradient buffer) */
int zs_ard_sample_backward_kl(const float *g, int64_t ldg, const float *w, int64_t ldw, const float *code,
                              const float *nz, float *gw, int64_t ldgw, float *gls, int64_t ldgls, int64_t N,
                              int64_t K, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++)
        bwd_row(1, g + n * ldg, w + n * ldw, nz + n * K, code + n * K, 0.0f, gw + n * ldgw, gls + n * ldgls, K);
    (void)nthreads;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * The "local" estimator's sample with its noise generated inline: out = mu + sqrt(var + 1e-8) * eps and, for the
 * backward (d out / d var = eps / (2 std)), h = eps * (0.5 / std). Model n's element e of its stream (its noise in
 * [B, H, W, C] order, or [B, C]) is at row e / C, column e % C: at n * ldm + (e / C) * ldr + e % C in memory (the
 * population's channels-last [B, H, W, N*C] maps: ldr = N*C, ldm = C). With mu == NULL only eps is written (to out).
 * --------------------------------------------------------------------------------------------------------------- */

#define LOCAL_CHUNK 256 /* elements of a model's stream generated at once (a multiple of 32) */

static inline void local_seg(const float *mu, const float *var, const float *z, float *out, float *h, int64_t len) {
    int64_t i = 0;
    if (mu == NULL) {
        for (; i + 8 <= len; i += 8) _mm256_storeu_ps(out + i, _mm256_loadu_ps(z + i));
        for (; i < len; i++) out[i] = z[i];
        return;
    }
    const __m256 tiny = _mm256_set1_ps(1e-8f), half = _mm256_set1_ps(0.5f);
    for (; i + 8 <= len; i += 8) {
        const __m256 sd = _mm256_sqrt_ps(_mm256_add_ps(_mm256_loadu_ps(var + i), tiny));
        const __m256 zv = _mm256_loadu_ps(z + i);
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(mu + i), _mm256_mul_ps(sd, zv)));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(zv, _mm256_div_ps(half, sd)));
    }
    for (; i < len; i++) {  /* the same operations, one at a time (IEEE: the same results) */
        const float sd = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(var[i] + 1e-8f)));
        out[i] = mu[i] + sd * z[i];
        h[i] = z[i] * (0.5f / sd);
    }
}

/* elements [e0, e1) of one model's stream (e0 a multiple of 32, e1 - e0 <= LOCAL_CHUNK) */
static void local_chunk(uint32_t k0, uint32_t k1, uint32_t step, uint32_t tag, int64_t e0, int64_t e1, int64_t C,
                        int64_t ldr, const float *mu, const float *var, float *out, float *h) {
    float buf[LOCAL_CHUNK] __attribute__((aligned(32)));
    for (int64_t b = e0 / 32; b * 32 < e1; b++) {
        __m256 z[4];
        noise32(b, k0, k1, step, tag, z);
        for (int k = 0; k < 4; k++) _mm256_store_ps(buf + (b * 32 - e0) + 8 * k, z[k]);
    }
    int64_t row = e0 / C, col = e0 - row * C;  /* one division per chunk; then row by row */
    for (int64_t e = e0; e < e1;) {
        const int64_t len = (C - col) < (e1 - e) ? (C - col) : (e1 - e);
        const int64_t at = row * ldr + col;
        local_seg(mu ? mu + at : NULL, var ? var + at : NULL, buf + (e - e0), out + at, h ? h + at : NULL, len);
        e += len;
        col += len;
        if (col == C) { row++; col = 0; }
    }
}

/* keys: [N, 2]; numel: elements per model; the population's memory as above (row length C, rows ldr apart, models
   ldm apart); mu, var, out, h share that layout; mu == NULL: out = eps */
int zs_ard_local_sample(const int64_t *keys, int64_t step, int64_t tag, const float *mu, const float *var, float *out,
                        float *h, int64_t N, int64_t numel, int64_t C, int64_t ldr, int64_t ldm, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    /* chunk by chunk of every model's stream, models inner: the maps are written in memory order (a model's
       rows are N*C apart; model by model each row would be a new page) */
    const int64_t chunks = (numel + LOCAL_CHUNK - 1) / LOCAL_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && N * numel >= 65536)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t e0 = k * LOCAL_CHUNK, e1 = e0 + LOCAL_CHUNK < numel ? e0 + LOCAL_CHUNK : numel;
        for (int64_t n = 0; n < N; n++)
            local_chunk((uint32_t)keys[2 * n], (uint32_t)keys[2 * n + 1], (uint32_t)step, (uint32_t)tag, e0, e1, C,
                        ldr, mu ? mu + n * ldm : NULL, var ? var + n * ldm : NULL, out + n * ldm,
                        h ? h + n * ldm : NULL);
    }
    (void)nthreads;
    return 0;
}
