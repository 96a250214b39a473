/*
 * One Adam / AdamW step over a population's flat [N, P] buffers in a single pass (float32, AVX2/FMA), called
 * through ctypes by zooscape.train.native.adam_step. PyTorch's whole-buffer version (zooscape.train.optim) makes
 * eight passes over the parameters, gradients and both moments; at MLP sizes those buffers live in L3, and the
 * passes cost more than the arithmetic.
 *
 * Per element, in the order of torch.optim.Adam (Kingma & Ba, 2015) / AdamW (Loshchilov & Hutter, 2019), with
 * per-model learning rate lr[n] and weight decay wd[n]:
 *     adamw: p *= 1 - lr*wd             adam with weight decay: g += wd*p
 *     m = m + (1 - b1)*(g - m)          v = v*b2 + (1 - b2)*g*g
 *     p += (m * (-lr/bc1)) / (sqrt(max(v, tiny))/bc2 + eps)
 * (tiny: as zooscape.train.optim's _sqrt, 0 for a plain sqrt), with PyTorch's roundings (see adam_row), so that
 * the result equals the PyTorch version bit for bit.
 */
#include <immintrin.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* The operations and roundings of PyTorch's CPU kernels for the whole-buffer update in zooscape.train.optim
   (checked against them): lerp_ is one FMA, addcmul_ one FMA after its own multiply, everything else separately
   rounded. The library is compiled with -ffp-contract=off so that no other multiply-add is fused. */
static void adam_row(float *p, const float *g, float *m, float *v, int64_t P, float lr, float wd, float a1,
                     float b2, float a2, float eps, float bc1, float bc2, float tiny, int adamw, int use_wd) {
    const float step = -lr / bc1, decay = 1.f - lr * wd;
    const __m256 vstep = _mm256_set1_ps(step), vdecay = _mm256_set1_ps(decay), va1 = _mm256_set1_ps(a1);
    const __m256 va2 = _mm256_set1_ps(a2), vb2 = _mm256_set1_ps(b2), veps = _mm256_set1_ps(eps);
    const __m256 vbc2 = _mm256_set1_ps(bc2), vtiny = _mm256_set1_ps(tiny), vwd = _mm256_set1_ps(wd);
    int64_t i = 0;
    for (; i + 8 <= P; i += 8) {
        __m256 pv = _mm256_loadu_ps(p + i), gv = _mm256_loadu_ps(g + i);
        if (adamw) pv = _mm256_mul_ps(pv, vdecay);
        else if (use_wd) gv = _mm256_add_ps(gv, _mm256_mul_ps(vwd, pv));
        __m256 mv = _mm256_loadu_ps(m + i), vv = _mm256_loadu_ps(v + i);
        mv = _mm256_fmadd_ps(va1, _mm256_sub_ps(gv, mv), mv);                              /* lerp_ */
        vv = _mm256_fmadd_ps(_mm256_mul_ps(va2, gv), gv, _mm256_mul_ps(vv, vb2));         /* mul_, addcmul_ */
        /* max_ps(tiny, v) returns v when v is NaN: NaN propagates, as clamp_min does */
        const __m256 d = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(_mm256_max_ps(vtiny, vv)), vbc2), veps);
        pv = _mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(mv, vstep), d));             /* addcdiv_ */
        _mm256_storeu_ps(p + i, pv);
        _mm256_storeu_ps(m + i, mv);
        _mm256_storeu_ps(v + i, vv);
    }
    for (; i < P; i++) {
        float pv = p[i], gv = g[i];
        if (adamw) pv = pv * decay;
        else if (use_wd) gv = gv + wd * pv;
        const float mv = __builtin_fmaf(a1, gv - m[i], m[i]);
        const float vv = __builtin_fmaf(a2 * gv, gv, v[i] * b2);
        const float s = !(vv < tiny) ? vv : tiny;
        const float d = __builtin_sqrtf(s) / bc2 + eps;
        p[i] = pv + (mv * step) / d;
        m[i] = mv;
        v[i] = vv;
    }
}

/* p, g, m, v: [N, P] rows P apart (row stride ld); lr, wd: [N] */
/* a1 = 1 - b1 and a2 = 1 - b2 are passed as computed in double and rounded once, as PyTorch's scalars are */
int zs_adam_step(float *p, const float *g, float *m, float *v, int64_t N, int64_t P, int64_t ld, const float *lr,
                 const float *wd, float a1, float b2, float a2, float eps, float bc1, float bc2, float tiny,
                 int adamw, int use_wd, int nthreads) {
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static)
#endif
    for (int64_t n = 0; n < N; n++)
        adam_row(p + n * ld, g + n * ld, m + n * ld, v + n * ld, P, lr[n], wd[n], a1, b2, a2, eps, bc1, bc2, tiny,
                 adamw, use_wd);
    (void)nthreads;
    return 0;
}
