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
static inline void fwd8(const float *w, const float *ls, const float *eps, float *out, float *lac) {
    __m256 inside, t;
    const __m256 wv = _mm256_loadu_ps(w);
    const __m256 la = log_alpha8(wv, _mm256_loadu_ps(ls), &inside, &t);
    const __m256 noise = _mm256_mul_ps(exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f))), _mm256_loadu_ps(eps));
    _mm256_storeu_ps(out, _mm256_add_ps(wv, _mm256_mul_ps(absv(wv), noise)));
    const __m256 coded = _mm256_mul_ps(la, _mm256_set1_ps(1.05f));  /* +-10 -> +-10.5 */
    _mm256_storeu_ps(lac, _mm256_blendv_ps(coded, la, _mm256_cmp_ps(inside, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
}

static inline void bwd8(const float *g, const float *w, const float *lac, const float *eps, float scale, float *gw,
                        float *gls) {
    const __m256 wv = _mm256_loadu_ps(w), gv = _mm256_loadu_ps(g), c = _mm256_loadu_ps(lac);
    const __m256 ten = _mm256_set1_ps(10.0f);
    /* inside the clip: |c| <= 10 (NaN: not inside, and NaN propagates through la) */
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(absv(c), ten, _CMP_LE_OQ), _mm256_set1_ps(1.0f));
    const __m256 la = _mm256_max_ps(_mm256_set1_ps(-10.0f), _mm256_min_ps(ten, c));
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(wv, wv), _mm256_set1_ps(1e-8f));
    const __m256 e = exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f)));  /* exp(la/2) */
    const __m256 q = _mm256_mul_ps(gv, _mm256_mul_ps(e, _mm256_loadu_ps(eps)));
    __m256 gla = _mm256_mul_ps(_mm256_mul_ps(q, absv(wv)), _mm256_set1_ps(0.5f));
    if (scale != 0.0f) {
        const __m256 one = _mm256_set1_ps(1.0f);
        const __m256 s = sigmoid8(_mm256_fmadd_ps(la, _mm256_set1_ps(K3), _mm256_set1_ps(K2)));
        const __m256 ds = _mm256_sub_ps(s, _mm256_mul_ps(s, s));
        gla = _mm256_fmadd_ps(ds, _mm256_set1_ps(-K1 * K3 * scale), gla);
        const __m256 sneg = _mm256_div_ps(one, _mm256_fmadd_ps(e, e, one));  /* sigmoid(-la) = 1 / (1 + e^la) */
        gla = _mm256_fmadd_ps(sneg, _mm256_set1_ps(-0.5f * scale), gla);
    }
    const __m256 glsv = _mm256_mul_ps(gla, inside);
    /* sign(w): +1, -1, or 0 for w == 0 */
    const __m256 zero = _mm256_setzero_ps();
    const __m256 sgn = _mm256_sub_ps(_mm256_and_ps(_mm256_cmp_ps(wv, zero, _CMP_GT_OQ), _mm256_set1_ps(1.0f)),
                                     _mm256_and_ps(_mm256_cmp_ps(wv, zero, _CMP_LT_OQ), _mm256_set1_ps(1.0f)));
    __m256 gwv = _mm256_fmadd_ps(q, sgn, gv);
    gwv = _mm256_fmadd_ps(_mm256_mul_ps(glsv, _mm256_div_ps(wv, t)), _mm256_set1_ps(-2.0f), gwv);
    _mm256_storeu_ps(gw, gwv);
    _mm256_storeu_ps(gls, glsv);
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

static void bwd_row(const float *g, const float *w, const float *lac, const float *eps, float scale, float *gw,
                    float *gls, int64_t K) {
    int64_t i = 0;
    for (; i + 8 <= K; i += 8) bwd8(g + i, w + i, lac + i, eps + i, scale, gw + i, gls + i);
    if (i < K) {
        float bg[8], bw[8], bl[8], be[8], bgw[8], bgl[8];
        for (int j = 0; j < 8; j++) { bg[j] = 0.0f; bw[j] = TAIL_W; bl[j] = 0.0f; be[j] = 0.0f; }
        const int64_t r = K - i;
        memcpy(bg, g + i, r * sizeof(float));
        memcpy(bw, w + i, r * sizeof(float));
        memcpy(bl, lac + i, r * sizeof(float));
        memcpy(be, eps + i, r * sizeof(float));
        bwd8(bg, bw, bl, be, scale, bgw, bgl);
        memcpy(gw + i, bgw, r * sizeof(float));
        memcpy(gls + i, bgl, r * sizeof(float));
    }
}

int zs_ard_abi(void) { return 2; }

/* w, ls, eps: [N, K] rows ldw, ldl, lde apart (unit column stride); out, lac (la coded for the backward): [N, K]
   contiguous */
int zs_ard_sample_forward(const float *w, int64_t ldw, const float *ls, int64_t ldl, const float *eps, int64_t lde,
                          float *out, float *lac, int64_t N, int64_t K, int nthreads) {
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && N * K >= 65536)
#endif
    for (int64_t n = 0; n < N; n++) fwd_row(w + n * ldw, ls + n * ldl, eps + n * lde, out + n * K, lac + n * K, K);
    (void)nthreads;
    return 0;
}

/* g: [N, K] rows ldg apart; w, eps as in the forward; lac: the forward's [N, K]; gw, gls: [N, K] contiguous */
int zs_ard_sample_backward(const float *g, int64_t ldg, const float *w, int64_t ldw, const float *lac,
                           const float *eps, int64_t lde, float scale, float *gw, float *gls, int64_t N, int64_t K,
                           int nthreads) {
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && N * K >= 65536)
#endif
    for (int64_t n = 0; n < N; n++)
        bwd_row(g + n * ldg, w + n * ldw, lac + n * K, eps + n * lde, scale, gw + n * K, gls + n * K, K);
    (void)nthreads;
    return 0;
}
