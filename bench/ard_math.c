/*
 * Where the native ARD sample kernel's time goes, and what cheaper math would buy (issue 15, branch ardmlp).
 * Includes src/zooscape/train/_native/ard.c unchanged and times its per-8-weight forward and backward against
 * variants written here (nothing here is used by the library): the forward also storing e = exp(la/2) so the
 * backward needs no exp for the noise and sigmoid(-la) (= 1 / (1 + e^2)); a reciprocal + Newton step instead of
 * the division w / t; the KL gradient term k1 k3 s (1 - s) + 0.5 sigmoid(-la) from a 4096-entry table
 * (gather + linear interpolation); for attribution only, the forward without its log, and a plain streaming pass
 * (3 loads, 2 stores). Shapes: the digits MLP 64-32-32-10 twin population, N = 64 (3 layers, 3,392 weights per
 * model); thread CPU time, best of 7 x 50 steps.
 *
 * Usage (the library's own flags):
 *   gcc -O3 -mavx2 -mfma -ffp-contract=off bench/ard_math.c -o /tmp/ard_math -lm && /tmp/ard_math
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../src/zooscape/train/_native/ard.c"
/* variant B: forward stores e = exp(la/2) (and la coded) so the backward has no exp for the noise and sigmoid(-la) */
static inline void fwd8_e(const float *w, const float *ls, const float *eps, float *out, float *lac, float *ee) {
    __m256 inside, t;
    const __m256 wv = _mm256_loadu_ps(w);
    const __m256 la = log_alpha8(wv, _mm256_loadu_ps(ls), &inside, &t);
    const __m256 e = exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f)));
    const __m256 noise = _mm256_mul_ps(e, _mm256_loadu_ps(eps));
    _mm256_storeu_ps(out, _mm256_add_ps(wv, _mm256_mul_ps(absv(wv), noise)));
    const __m256 coded = _mm256_mul_ps(la, _mm256_set1_ps(1.05f));
    _mm256_storeu_ps(lac, _mm256_blendv_ps(coded, la, _mm256_cmp_ps(inside, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
    _mm256_storeu_ps(ee, e);
}
/* variant C: the KL gradient term d(la) = k1 k3 s(1-s) + 0.5 sigmoid(-la) from a table over [-10, 10] with
   linear interpolation (gather) instead of exp + 2 div */
#define TN 4096
static float TAB[TN + 2], DTAB[TN + 2];
static void mktab(void) {
    for (int i = 0; i <= TN + 1; i++) {
        double la = -10.0 + 20.0 * i / TN; if (la > 10) la = 10;
        double s = 1 / (1 + exp(-(K2 + K3 * la)));
        TAB[i] = (float)(K1 * K3 * s * (1 - s) + 0.5 / (1 + exp(la)));
    }
    for (int i = 0; i <= TN; i++) DTAB[i] = TAB[i + 1] - TAB[i];
}
enum { KL_EXP = 0, KL_EXP_RCP = 1, KL_TABLE = 2 };
/* the backward reusing the forward's e; mode (a constant at every call, so inlined without branches): the KL term
   as in ard.c, the same with w / t by reciprocal + Newton, or the KL term from the table */
static inline void bwd8_e(const float *g, const float *w, const float *lac, const float *ee, const float *eps,
                          float scale, float *gw, float *gls, int mode) {
    const __m256 wv = _mm256_loadu_ps(w), gv = _mm256_loadu_ps(g), c = _mm256_loadu_ps(lac);
    const __m256 ten = _mm256_set1_ps(10.0f), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(absv(c), ten, _CMP_LE_OQ), one);
    const __m256 la = _mm256_max_ps(_mm256_set1_ps(-10.0f), _mm256_min_ps(ten, c));
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(wv, wv), _mm256_set1_ps(1e-8f));
    const __m256 e = _mm256_loadu_ps(ee);
    const __m256 q = _mm256_mul_ps(gv, _mm256_mul_ps(e, _mm256_loadu_ps(eps)));
    __m256 gla = _mm256_mul_ps(_mm256_mul_ps(q, absv(wv)), _mm256_set1_ps(0.5f));
    if (mode == KL_TABLE) {
        const __m256 x = _mm256_mul_ps(_mm256_add_ps(la, ten), _mm256_set1_ps(TN / 20.0f));
        const __m256 fl = _mm256_floor_ps(x);
        const __m256i ix = _mm256_cvttps_epi32(fl);
        const __m256 d = _mm256_fmadd_ps(_mm256_i32gather_ps(DTAB, ix, 4), _mm256_sub_ps(x, fl),
                                         _mm256_i32gather_ps(TAB, ix, 4));
        gla = _mm256_fmadd_ps(d, _mm256_set1_ps(-scale), gla);
    } else if (scale != 0.0f) {
        const __m256 s = sigmoid8(_mm256_fmadd_ps(la, _mm256_set1_ps(K3), _mm256_set1_ps(K2)));
        gla = _mm256_fmadd_ps(_mm256_sub_ps(s, _mm256_mul_ps(s, s)), _mm256_set1_ps(-K1 * K3 * scale), gla);
        const __m256 sneg = _mm256_div_ps(one, _mm256_fmadd_ps(e, e, one));
        gla = _mm256_fmadd_ps(sneg, _mm256_set1_ps(-0.5f * scale), gla);
    }
    const __m256 glsv = _mm256_mul_ps(gla, inside);
    const __m256 sgn = _mm256_sub_ps(_mm256_and_ps(_mm256_cmp_ps(wv, zero, _CMP_GT_OQ), one),
                                     _mm256_and_ps(_mm256_cmp_ps(wv, zero, _CMP_LT_OQ), one));
    __m256 r;
    if (mode == KL_EXP_RCP) {
        __m256 y = _mm256_rcp_ps(t);
        y = _mm256_mul_ps(y, _mm256_fnmadd_ps(t, y, _mm256_set1_ps(2.0f)));
        r = _mm256_mul_ps(wv, y);
    } else {
        r = _mm256_div_ps(wv, t);
    }
    const __m256 gwv = _mm256_fmadd_ps(_mm256_mul_ps(glsv, r), _mm256_set1_ps(-2.0f), _mm256_fmadd_ps(q, sgn, gv));
    _mm256_storeu_ps(gw, gwv);
    _mm256_storeu_ps(gls, glsv);
}
/* cost attribution only: fwd without log (u = ls - t) */
static inline void fwd8_nolog(const float *w, const float *ls, const float *eps, float *out, float *lac) {
    const __m256 wv = _mm256_loadu_ps(w);
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(wv, wv), _mm256_set1_ps(1e-8f));
    const __m256 u = _mm256_sub_ps(_mm256_loadu_ps(ls), t);
    __m256 la = _mm256_min_ps(_mm256_set1_ps(10.0f), _mm256_max_ps(_mm256_set1_ps(-10.0f), u));
    const __m256 noise = _mm256_mul_ps(exp8(_mm256_mul_ps(la, _mm256_set1_ps(0.5f))), _mm256_loadu_ps(eps));
    _mm256_storeu_ps(out, _mm256_add_ps(wv, _mm256_mul_ps(absv(wv), noise)));
    _mm256_storeu_ps(lac, la);
}
static inline void copy8(const float *w, const float *ls, const float *eps, float *out, float *lac) {
    const __m256 wv = _mm256_loadu_ps(w);
    _mm256_storeu_ps(out, _mm256_fmadd_ps(wv, _mm256_loadu_ps(eps), _mm256_loadu_ps(ls)));
    _mm256_storeu_ps(lac, wv);
}

static double now(void) { struct timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }

int main(void) {
    mktab();
    const int64_t N = 64, KS[3] = {2048, 1024, 320}; int64_t tot = 0; for (int l = 0; l < 3; l++) tot += N * KS[l];
    float *w = malloc(tot * 4), *ls = malloc(tot * 4), *eps = malloc(tot * 4), *out = malloc(tot * 4),
          *lac = malloc(tot * 4), *ee = malloc(tot * 4), *g = malloc(tot * 4), *gw = malloc(tot * 4), *gl = malloc(tot * 4);
    srand(1);
    for (int64_t i = 0; i < tot; i++) {
        w[i] = ((rand() / (float)RAND_MAX) - 0.5f) * 0.4f; ls[i] = -14 + 16 * (rand() / (float)RAND_MAX);
        eps[i] = (rand() / (float)RAND_MAX) - 0.5f; g[i] = (rand() / (float)RAND_MAX) - 0.5f;
    }
    const char *names[] = {"fwd (orig)", "bwd (orig, scale>0)", "bwd (orig, scale=0)", "fwd storing e",
                           "bwd reusing e", "bwd reusing e + rcp/Newton div", "bwd reusing e + KL table",
                           "fwd without log (attribution)", "streaming copy (3 loads, 2 stores)"};
    for (int v = 0; v < 9; v++) {
        double best = 1e9;
        for (int r = 0; r < 7; r++) {
            double t0 = now();
            for (int rep = 0; rep < 50; rep++) {
                int64_t off = 0;
                for (int l = 0; l < 3; l++) {
                    int64_t K = KS[l];
                    for (int64_t n = 0; n < N; n++) {
                        int64_t o = off + n * K;
                        for (int64_t i = 0; i + 8 <= K; i += 8) {
                            int64_t j = o + i;
                            switch (v) {
                            case 0: fwd8(w + j, ls + j, eps + j, out + j, lac + j); break;
                            case 1: bwd8(g + j, w + j, lac + j, eps + j, 0.01f, gw + j, gl + j); break;
                            case 2: bwd8(g + j, w + j, lac + j, eps + j, 0.0f, gw + j, gl + j); break;
                            case 3: fwd8_e(w + j, ls + j, eps + j, out + j, lac + j, ee + j); break;
                            case 4: bwd8_e(g + j, w + j, lac + j, ee + j, eps + j, 0.01f, gw + j, gl + j, KL_EXP); break;
                            case 5: bwd8_e(g + j, w + j, lac + j, ee + j, eps + j, 0.01f, gw + j, gl + j, KL_EXP_RCP); break;
                            case 6: bwd8_e(g + j, w + j, lac + j, ee + j, eps + j, 0.01f, gw + j, gl + j, KL_TABLE); break;
                            case 7: fwd8_nolog(w + j, ls + j, eps + j, out + j, lac + j); break;
                            case 8: copy8(w + j, ls + j, eps + j, out + j, lac + j); break;
                            }
                        }
                    }
                    off += N * K;
                }
            }
            double dt = (now() - t0) / 50;
            if (dt < best) best = dt;
        }
        printf("%-40s %.3f ms/step  %.2f ns/weight\n", names[v], best * 1e3, best * 1e9 / tot);
    }
    /* accuracy of the table KL term against double */
    double maxerr = 0, maxrel = 0;
    for (int i = 0; i < 200000; i++) {
        double la = -10 + 20.0 * i / 200000; float laf = (float)la;
        double s = 1 / (1 + exp(-(K2 + K3 * (double)laf)));
        double ref = K1 * K3 * s * (1 - s) + 0.5 / (1 + exp((double)laf));
        float x = (laf + 10.0f) * (TN / 20.0f); int ix = (int)floorf(x); float fr = x - floorf(x);
        double got = TAB[ix] + DTAB[ix] * fr;
        double err = fabs(got - ref); if (err > maxerr) maxerr = err; if (err / ref > maxrel) maxrel = err / ref;
    }
    printf("KL table: max abs err %.2e, max rel err %.2e\n", maxerr, maxrel);
    return (int)out[0] & 0;
}
