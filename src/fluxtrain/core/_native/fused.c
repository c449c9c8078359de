/* Single-pass Descent / Momentum / Adam steps with the rule core's exact
 * operation order (fluxtrain.core.rules, fluxtrain.core.plan).
 *
 * Every element goes through the same IEEE-754 operations (+ - * / sqrt), in
 * the same order and in the same precision, as the rule core's sequence of
 * torch kernels; IEEE arithmetic is deterministic, so the bits are the same.
 * That holds only if the compiler neither contracts a*b+c into an FMA nor
 * reassociates: build with -ffp-contract=off and without -ffast-math
 * (fluxtrain.core.native does; -fno-math-errno only lets sqrt vectorise).
 *
 * Square root: torch's CPU sqrt is not always the IEEE one. Builds with MKL
 * compute it with MKL VML's vmsSqrt/vmdSqrt (high-accuracy mode, within 1 ulp
 * but not always correctly rounded). fluxtrain_set_sqrt installs one of:
 *  - the IEEE sqrt, inline, in a single loop (torch without MKL);
 *  - for float32, SQRT_MKL_RSQRT: MKL's own algorithm written out here (the
 *    one its SSE code path, taken on this project's AMD hosts, runs: rsqrtps
 *    and two Newton-style corrections, see mkl_rsqrt_sqrt_f32). rsqrtps is
 *    not specified bit for bit across CPU makers, so this is only ever
 *    installed after fluxtrain.core.native has checked it against torch.sqrt
 *    on this CPU (and tests check it on every float32 input);
 *  - a library function (MKL's vmsSqrt/vmdSqrt found in torch's own library).
 * With SQRT_MKL_RSQRT on AVX-512 and under MKL's floating-point mode, Adam is
 * one pass with the sqrt in registers (adam_rsqrt_f32). Otherwise, with either
 * of the last two, Adam works in blocks: moments and the two quotients into
 * stack buffers, the sqrt over the buffer, then the rest of the step. The
 * buffers stay in L1, so memory is still read and written once.
 *
 * One call updates a whole group of leaves: arrays of per-leaf addresses
 * (x, dx and the state tensors), the cumulative element offsets of the
 * leaves (n + 1 entries) and per-leaf bias corrections (Adam). The elements
 * are split evenly over up to `nthreads` threads, at least `min_per_thread`
 * each: built with -fopenmp, the process's OpenMP pool (torch's own workers);
 * otherwise POSIX threads made per call (the calling thread does one share).
 * Every share runs in the caller's floating-point mode.
 * No torch headers: this file compiles in well under a second.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_MKL_RSQRT 1
#endif

#define FLUXTRAIN_ABI 4

int fluxtrain_abi(void) { return FLUXTRAIN_ABI; }

enum { RULE_DESCENT = 0, RULE_MOMENTUM = 1, RULE_ADAM = 2 };

typedef struct {
    int rule, f64;
    int64_t nleaf;
    const int64_t *x, *g, *m, *v, *offs;
    const double *d1, *d2;
    int64_t dstride;
    double eta, b1, b2, c1, c2, eps;
    int64_t lo, hi;
    unsigned csr; /* the caller's MXCSR control bits (x86), for every thread */
} job_t;

/* s = dx*eta; x = x - s */
#define DESCENT(T, SUF)                                                        \
    static void descent_##SUF(T *restrict x, const T *restrict g, int64_t n,   \
                              T eta) {                                         \
        for (int64_t i = 0; i < n; i++) {                                      \
            T s = g[i] * eta;                                                  \
            x[i] = x[i] - s;                                                   \
        }                                                                      \
    }

/* s = dx*eta; v = v*rho; v = v + s; x = x - v */
#define MOMENTUM(T, SUF)                                                       \
    static void momentum_##SUF(T *restrict x, const T *restrict g,             \
                               T *restrict v, int64_t n, T eta, T rho) {       \
        for (int64_t i = 0; i < n; i++) {                                      \
            T s = g[i] * eta;                                                  \
            T vv = v[i] * rho;                                                 \
            vv = vv + s;                                                       \
            v[i] = vv;                                                         \
            x[i] = x[i] - vv;                                                  \
        }                                                                      \
    }

/* t1 = dx*c1; m = m*b1; m = m + t1; t2 = dx*dx; t2 = t2*c2; v = v*b2;
 * v = v + t2; s = m/d1; q = v/d2; q = sqrt(q); q = q + eps; s = s/q;
 * s = s*eta; x = x - s */

/* Adam's moment updates (the first seven operations above), shared by the inline-
 * and the library-sqrt kernels: declares mm and vv, the new m and v of one element
 * (c1, c2, b1, b2 are the kernel's scalars). */
#define ADAM_MOMENTS(T, G, M, V, mm, vv)                                       \
    T dx = (G);                                                                \
    T t1 = dx * c1;                                                            \
    T mm = (M) * b1;                                                           \
    mm = mm + t1;                                                              \
    T t2 = dx * dx;                                                            \
    t2 = t2 * c2;                                                              \
    T vv = (V) * b2;                                                           \
    vv = vv + t2

#define ADAM(T, SUF, SQRT)                                                     \
    static void adam_##SUF(T *restrict x, const T *restrict g,                 \
                           T *restrict m, T *restrict v, int64_t n, T eta,     \
                           T b1, T b2, T c1, T c2, T eps, T d1, T d2) {        \
        for (int64_t i = 0; i < n; i++) {                                      \
            ADAM_MOMENTS(T, g[i], m[i], v[i], mm, vv);                         \
            T s = mm / d1;                                                     \
            T q = vv / d2;                                                     \
            q = SQRT(q);                                                       \
            q = q + eps;                                                       \
            s = s / q;                                                         \
            s = s * eta;                                                       \
            m[i] = mm;                                                         \
            v[i] = vv;                                                         \
            x[i] = x[i] - s;                                                   \
        }                                                                      \
    }

/* a vector square root: f(n, in, out, mode), MKL VML's signature (LP64) */
typedef void (*vsqrt_f32_t)(int, const float *, float *, int64_t);
typedef void (*vsqrt_f64_t)(int, const double *, double *, int64_t);
static vsqrt_f32_t vsqrt_f32 = NULL;
static vsqrt_f64_t vsqrt_f64 = NULL;
static int64_t vsqrt_mode = 0;
/* MKL_Set_Num_Threads_Local: MKL would otherwise run each small call as an
 * OpenMP parallel region (a fork and join per block); 1 keeps it on the
 * calling thread, and the previous setting is put back afterwards. */
typedef int (*set_local_t)(int);
static set_local_t vsqrt_set_local = NULL;

/* float32 square root in use: SQRT_IEEE inline, SQRT_MKL_RSQRT (below), or
 * SQRT_LIBRARY (vsqrt_f32). float64 has IEEE or a library function. */
enum { SQRT_IEEE = 0, SQRT_LIBRARY = 1, SQRT_MKL_RSQRT = 2 };
static int sqrt_kind_f32 = SQRT_IEEE;

/* Whether SQRT_MKL_RSQRT exists in this build (x86 only). */
int fluxtrain_has_mkl_rsqrt(void) {
#ifdef HAVE_MKL_RSQRT
    return 1;
#else
    return 0;
#endif
}

/* Install the vector sqrt per dtype (NULL: IEEE sqrt inline) and the MKL
 * thread-local thread-count setter (or NULL); f32_rsqrt != 0 installs
 * SQRT_MKL_RSQRT for float32 instead of f32 (refused where it does not exist).
 * Call before any step. */
void fluxtrain_set_sqrt(void *f32, void *f64, int64_t mode, void *set_local,
                        int f32_rsqrt) {
    vsqrt_f32 = (vsqrt_f32_t)f32;
    vsqrt_f64 = (vsqrt_f64_t)f64;
    vsqrt_mode = mode;
    vsqrt_set_local = (set_local_t)set_local;
    if (f32_rsqrt && fluxtrain_has_mkl_rsqrt()) {
        sqrt_kind_f32 = SQRT_MKL_RSQRT;
        vsqrt_f32 = NULL;
    } else {
        sqrt_kind_f32 = vsqrt_f32 ? SQRT_LIBRARY : SQRT_IEEE;
    }
}

#ifdef HAVE_MKL_RSQRT
/* MKL VML's high-accuracy float32 sqrt as its SSE path computes it, operation
 * for operation (no FMA): r = rsqrt(x); y = x*r; h = r*0.5; t = 0.5 - y*h;
 * y = y*t + y; h = t*h + h; d = x - y*y; result = d*h + y. Only for "regular"
 * x, bit patterns 0x00800000..0x7F7FF000 (positive, normal, not near
 * FLT_MAX); MKL gives every other x the IEEE sqrt, except that a negative
 * non-NaN x (not -0) gives the positive quiet NaN. */
#define RSQRT_LO 0x00800000u
#define RSQRT_HI 0x7F7FF000u
/* MXCSR: its control bits (the rest are sticky exception flags), and MKL's mode
 * among them: every exception masked, round to nearest, no FTZ/DAZ */
#define CSR_CONTROL 0xffc0u
#define CSR_MKL_MODE 0x1f80u

static inline float mkl_rsqrt_irregular(float x, uint32_t b) {
    if ((b >> 31) && b != 0x80000000u && !isnan(x)) {
        uint32_t qnan = 0x7fc00000u;
        float r;
        memcpy(&r, &qnan, sizeof r);
        return r;
    }
    return sqrtf(x);
}

static inline float mkl_rsqrt_one(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    if (b - RSQRT_LO > RSQRT_HI - RSQRT_LO) return mkl_rsqrt_irregular(x, b);
    float r = _mm_cvtss_f32(_mm_rsqrt_ss(_mm_set_ss(x)));
    float y = x * r, h = r * 0.5f;
    float t = 0.5f - y * h;
    y = y * t + y;
    h = t * h + h;
    float d = x - y * y;
    return d * h + y;
}

/* MKL's formula on a vector x of type V with P's intrinsics (mm, mm256,
 * mm512); RSQRT is the 12-bit reciprocal square root of a whole V. */
#define MKL_RSQRT_BODY(V, P, RSQRT, x, out)                                    \
    V r = RSQRT(x);                                                            \
    V y = _##P##_mul_ps(x, r);                                                 \
    V h = _##P##_mul_ps(r, half);                                              \
    V t = _##P##_sub_ps(half, _##P##_mul_ps(y, h));                            \
    y = _##P##_add_ps(_##P##_mul_ps(y, t), y);                                 \
    h = _##P##_add_ps(_##P##_mul_ps(t, h), h);                                 \
    V d = _##P##_sub_ps(x, _##P##_mul_ps(y, y));                               \
    V out = _##P##_add_ps(_##P##_mul_ps(d, h), y)

/* q[0:n] = sqrt(q[0:n]) as MKL computes it. MKL runs with round-to-nearest
 * and without flush-to-zero/denormals-are-zero whatever the caller set (its
 * mode VML_FTZDAZ_OFF), so this does too. */
static void mkl_rsqrt_sqrt_f32(int64_t n, float *q) {
    unsigned csr = _mm_getcsr();
    int switched = (csr & CSR_CONTROL) != CSR_MKL_MODE;
    if (switched) _mm_setcsr((csr & ~CSR_CONTROL) | CSR_MKL_MODE);
    int64_t i = 0;
#ifdef __AVX__
    {
        const __m256 half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps();
        const __m256 lo = _mm256_castsi256_ps(_mm256_set1_epi32((int)RSQRT_LO));
        const __m256 hi = _mm256_castsi256_ps(_mm256_set1_epi32((int)RSQRT_HI));
        for (; i + 8 <= n; i += 8) {
            __m256 x = _mm256_loadu_ps(q + i);
            MKL_RSQRT_BODY(__m256, mm256, _mm256_rsqrt_ps, x, res);
            /* a zero is its own root (common: a gradient entry that stays 0);
             * ordered compares: NaN is not regular */
            __m256 iszero = _mm256_cmp_ps(x, zero, _CMP_EQ_OQ);
            res = _mm256_blendv_ps(res, x, iszero);
            __m256 ok = _mm256_or_ps(iszero,
                                     _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ),
                                                   _mm256_cmp_ps(x, hi, _CMP_LE_OQ)));
            int mask = _mm256_movemask_ps(ok);
            _mm256_storeu_ps(q + i, res);
            if (mask != 0xff) {
                for (int k = 0; k < 8; k++) {
                    if (mask & (1 << k)) continue;
                    float xv;
                    uint32_t b;
                    memcpy(&xv, (const float *)&x + k, sizeof xv);
                    memcpy(&b, &xv, sizeof b);
                    q[i + k] = mkl_rsqrt_irregular(xv, b);
                }
            }
        }
    }
#endif
    {
        const __m128 half = _mm_set1_ps(0.5f);
        for (; i + 4 <= n; i += 4) {
            __m128 x = _mm_loadu_ps(q + i);
            MKL_RSQRT_BODY(__m128, mm, _mm_rsqrt_ps, x, res);
            float xs[4];
            _mm_storeu_ps(xs, x);
            _mm_storeu_ps(q + i, res);
            for (int k = 0; k < 4; k++) {
                uint32_t b;
                memcpy(&b, &xs[k], sizeof b);
                if (b - RSQRT_LO > RSQRT_HI - RSQRT_LO) q[i + k] = mkl_rsqrt_irregular(xs[k], b);
            }
        }
    }
    for (; i < n; i++) q[i] = mkl_rsqrt_one(q[i]);
    if (switched) _mm_setcsr(csr);
}
#endif

/* q[0:n] = sqrt(q[0:n]) with the installed float32 square root. */
static void sqrt_block_f32(int64_t n, float *q) {
#ifdef HAVE_MKL_RSQRT
    if (sqrt_kind_f32 == SQRT_MKL_RSQRT) {
        mkl_rsqrt_sqrt_f32(n, q);
        return;
    }
#endif
    if (vsqrt_f32) vsqrt_f32((int)n, q, q, vsqrt_mode);
    else for (int64_t j = 0; j < n; j++) q[j] = sqrtf(q[j]);
}

static void sqrt_block_f64(int64_t n, double *q) {
    if (vsqrt_f64) vsqrt_f64((int)n, q, q, vsqrt_mode);
    else for (int64_t j = 0; j < n; j++) q[j] = sqrt(q[j]);
}

/* Adam's block length: MKL's vmsSqrt/vmdSqrt is fast only on long calls;
 * the inline MKL_RSQRT is fastest on short blocks (measured on the 2-core AMD
 * host: 4096 floats of buffers fill L1 and slow the memory streams down). */
#ifndef BLOCK
#define BLOCK 4096
#endif
#define RSQRT_BLOCK 256

/* The same as ADAM, in blocks, with the installed block sqrt. */
#define ADAM_BLOCKED(T, SUF)                                                   \
    static void adam_blocked_##SUF(T *restrict x, const T *restrict g,         \
                                   T *restrict m, T *restrict v, int64_t n,    \
                                   T eta, T b1, T b2, T c1, T c2, T eps, T d1, \
                                   T d2, int64_t blk) {                        \
        T sb[BLOCK], qb[BLOCK];                                                \
        for (int64_t a = 0; a < n; a += blk) {                                 \
            int64_t k = n - a < blk ? n - a : blk;                             \
            const T *restrict gg = g + a;                                      \
            T *restrict mp = m + a;                                            \
            T *restrict vp = v + a;                                            \
            T *restrict xp = x + a;                                            \
            for (int64_t i = 0; i < k; i++) {                                  \
                ADAM_MOMENTS(T, gg[i], mp[i], vp[i], mm, vv);                  \
                mp[i] = mm;                                                    \
                vp[i] = vv;                                                    \
                sb[i] = mm / d1;                                               \
                qb[i] = vv / d2;                                               \
            }                                                                  \
            sqrt_block_##SUF(k, qb);                                           \
            for (int64_t i = 0; i < k; i++) {                                  \
                T q = qb[i] + eps;                                             \
                T s = sb[i] / q;                                               \
                s = s * eta;                                                   \
                xp[i] = xp[i] - s;                                             \
            }                                                                  \
        }                                                                      \
    }

ADAM_BLOCKED(float, f32)
ADAM_BLOCKED(double, f64)

DESCENT(float, f32)
DESCENT(double, f64)
MOMENTUM(float, f32)
MOMENTUM(double, f64)
ADAM(float, f32, sqrtf)
ADAM(double, f64, sqrt)

#if defined(HAVE_MKL_RSQRT) && defined(__AVX512F__) && defined(__AVX512DQ__)
#define HAVE_ADAM_RSQRT_FUSED 1
/* The scalar ADAM loop with MKL's algorithm, for the last n % 16 elements. */
ADAM(float, rsqrt_tail_f32, mkl_rsqrt_one)

/* The 12-bit rsqrt exists only for 8 lanes: taken on the two halves. */
static inline __m512 rsqrt12_m512(__m512 q) {
    __m256 lo = _mm256_rsqrt_ps(_mm512_castps512_ps256(q));
    __m256 hi = _mm256_rsqrt_ps(_mm512_extractf32x8_ps(q, 1));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

/* ADAM with SQRT_MKL_RSQRT in one pass, 16 lanes at a time (AVX-512):
 * the same IEEE operations in the same order as ADAM (a + b and b + a are the
 * same bits), MKL's sqrt in registers. A zero quotient is its own root; lanes
 * outside MKL's formula take the scalar irregular case. Only under MKL's mode
 * (round to nearest, no FTZ/DAZ; the caller checks), which must then hold for
 * every operation here. */
static void adam_rsqrt_f32(float *restrict x, const float *restrict g,
                           float *restrict m, float *restrict v, int64_t n,
                           float eta, float b1, float b2, float c1, float c2,
                           float eps, float d1, float d2) {
    const __m512 half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps();
    const __m512 lo = _mm512_castsi512_ps(_mm512_set1_epi32((int)RSQRT_LO));
    const __m512 hi = _mm512_castsi512_ps(_mm512_set1_epi32((int)RSQRT_HI));
    const __m512 vc1 = _mm512_set1_ps(c1), vb1 = _mm512_set1_ps(b1);
    const __m512 vc2 = _mm512_set1_ps(c2), vb2 = _mm512_set1_ps(b2);
    const __m512 vd1 = _mm512_set1_ps(d1), vd2 = _mm512_set1_ps(d2);
    const __m512 veps = _mm512_set1_ps(eps), veta = _mm512_set1_ps(eta);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 dx = _mm512_loadu_ps(g + i);
        __m512 t1 = _mm512_mul_ps(dx, vc1);
        __m512 mm = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(m + i), vb1), t1);
        __m512 t2 = _mm512_mul_ps(_mm512_mul_ps(dx, dx), vc2);
        __m512 vv = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), vb2), t2);
        __m512 s = _mm512_div_ps(mm, vd1);
        __m512 q = _mm512_div_ps(vv, vd2);
        MKL_RSQRT_BODY(__m512, mm512, rsqrt12_m512, q, root);
        /* every lane in the formula's range: the usual case, one test. Zeros (a
         * gradient entry that stays 0) are looked for only when some lane is not:
         * 3-5% of the kernel's time against testing them in every vector */
        __mmask16 ok = _mm512_cmp_ps_mask(q, lo, _CMP_GE_OQ) &
                       _mm512_cmp_ps_mask(q, hi, _CMP_LE_OQ);
        if (ok != 0xffff) {
            __mmask16 z = _mm512_cmp_ps_mask(q, zero, _CMP_EQ_OQ);
            root = _mm512_mask_mov_ps(root, z, q); /* a zero is its own root */
            ok |= z;
            if (ok != 0xffff) {
                float qs[16], rs[16];
                _mm512_storeu_ps(qs, q);
                _mm512_storeu_ps(rs, root);
                for (int k = 0; k < 16; k++) {
                    if (ok & (1u << k)) continue;
                    uint32_t b;
                    memcpy(&b, &qs[k], sizeof b);
                    rs[k] = mkl_rsqrt_irregular(qs[k], b);
                }
                root = _mm512_loadu_ps(rs);
            }
        }
        root = _mm512_add_ps(root, veps);
        s = _mm512_mul_ps(_mm512_div_ps(s, root), veta);
        _mm512_storeu_ps(m + i, mm);
        _mm512_storeu_ps(v + i, vv);
        _mm512_storeu_ps(x + i, _mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    }
    if (i < n)
        adam_rsqrt_tail_f32(x + i, g + i, m + i, v + i, n - i, eta, b1, b2, c1, c2,
                            eps, d1, d2);
}
#endif

/* float32 Adam with the installed sqrt. */
static void adam_any_f32(float *restrict x, const float *restrict g,
                         float *restrict m, float *restrict v, int64_t n,
                         float eta, float b1, float b2, float c1, float c2,
                         float eps, float d1, float d2) {
    if (sqrt_kind_f32 == SQRT_IEEE)
        adam_f32(x, g, m, v, n, eta, b1, b2, c1, c2, eps, d1, d2);
#ifdef HAVE_ADAM_RSQRT_FUSED
    else if (sqrt_kind_f32 == SQRT_MKL_RSQRT && (_mm_getcsr() & CSR_CONTROL) == CSR_MKL_MODE)
        adam_rsqrt_f32(x, g, m, v, n, eta, b1, b2, c1, c2, eps, d1, d2);
#endif
    else
        adam_blocked_f32(x, g, m, v, n, eta, b1, b2, c1, c2, eps, d1, d2,
                         sqrt_kind_f32 == SQRT_MKL_RSQRT ? RSQRT_BLOCK : BLOCK);
}

/* out = sqrt(in) with the installed sqrt (to check it against torch.sqrt). */
void fluxtrain_sqrt(int f64, int64_t n, const void *in, void *out) {
    int prev = vsqrt_set_local ? vsqrt_set_local(1) : 0;
    if (f64) {
        memmove(out, in, (size_t)n * sizeof(double));
        for (int64_t a = 0; a < n; a += BLOCK)
            sqrt_block_f64(n - a < BLOCK ? n - a : BLOCK, (double *)out + a);
    } else {
        memmove(out, in, (size_t)n * sizeof(float));
        for (int64_t a = 0; a < n; a += BLOCK)
            sqrt_block_f32(n - a < BLOCK ? n - a : BLOCK, (float *)out + a);
    }
    if (vsqrt_set_local) vsqrt_set_local(prev);
}


#define PTR(T, arr, k, off) ((T *)(intptr_t)(arr)[k] + (off))

static void leaf_range(const job_t *j, int64_t k, int64_t a, int64_t n) {
    if (j->f64) {
        double *x = PTR(double, j->x, k, a);
        const double *g = PTR(double, j->g, k, a);
        if (j->rule == RULE_DESCENT) {
            descent_f64(x, g, n, j->eta);
        } else if (j->rule == RULE_MOMENTUM) {
            momentum_f64(x, g, PTR(double, j->m, k, a), n, j->eta, j->b1);
        } else {
            double *m = PTR(double, j->m, k, a), *v = PTR(double, j->v, k, a);
            double d1 = j->d1[k * j->dstride], d2 = j->d2[k * j->dstride];
            if (vsqrt_f64)
                adam_blocked_f64(x, g, m, v, n, j->eta, j->b1, j->b2, j->c1, j->c2,
                                 j->eps, d1, d2, BLOCK);
            else
                adam_f64(x, g, m, v, n, j->eta, j->b1, j->b2, j->c1, j->c2, j->eps,
                         d1, d2);
        }
    } else {
        float *x = PTR(float, j->x, k, a);
        const float *g = PTR(float, j->g, k, a);
        if (j->rule == RULE_DESCENT) {
            descent_f32(x, g, n, (float)j->eta);
        } else if (j->rule == RULE_MOMENTUM) {
            momentum_f32(x, g, PTR(float, j->m, k, a), n, (float)j->eta,
                         (float)j->b1);
        } else {
            adam_any_f32(
                     x, g, PTR(float, j->m, k, a), PTR(float, j->v, k, a), n,
                     (float)j->eta, (float)j->b1, (float)j->b2, (float)j->c1,
                     (float)j->c2, (float)j->eps,
                     (float)j->d1[k * j->dstride], (float)j->d2[k * j->dstride]);
        }
    }
}

/* Elements [lo, hi) of the concatenated leaves. */
static void run_job(const job_t *j) {
    int64_t lo = j->lo, hi = j->hi;
    if (lo >= hi) return;
#ifdef HAVE_MKL_RSQRT
    /* a worker thread computes in the caller's floating-point mode (flush-to-zero,
     * rounding), as the caller's own torch operations would on its thread; OpenMP
     * pool threads otherwise keep the mode they were started with */
    unsigned own = _mm_getcsr();
    int switched = (own & CSR_CONTROL) != j->csr;
    if (switched) _mm_setcsr((own & ~CSR_CONTROL) | j->csr);
#endif
    const int64_t *offs = j->offs;
    int lib_sqrt = j->rule == RULE_ADAM && (j->f64 ? vsqrt_f64 != NULL : sqrt_kind_f32 == SQRT_LIBRARY);
    int prev = lib_sqrt && vsqrt_set_local ? vsqrt_set_local(1) : 0;
    int64_t a = 0, b = j->nleaf; /* last k with offs[k] <= lo */
    while (b - a > 1) {
        int64_t mid = a + (b - a) / 2;
        if (offs[mid] <= lo) a = mid; else b = mid;
    }
    for (int64_t k = a; k < j->nleaf && offs[k] < hi; k++) {
        int64_t s = lo > offs[k] ? lo : offs[k];
        int64_t e = hi < offs[k + 1] ? hi : offs[k + 1];
        if (e > s) leaf_range(j, k, s - offs[k], e - s);
    }
    if (lib_sqrt && vsqrt_set_local) vsqrt_set_local(prev);
#ifdef HAVE_MKL_RSQRT
    if (switched) _mm_setcsr(own);
#endif
}

#ifndef _OPENMP
static void *thread_main(void *arg) {
    run_job((const job_t *)arg);
    return NULL;
}
#endif

#define MAX_THREADS 256

/* One step of `rule` over `nleaf` leaves of one dtype. Never fails: a thread
 * that cannot be started has its share done by the calling thread. */
void fluxtrain_step(int rule, int f64, int64_t nleaf, const int64_t *x,
                    const int64_t *g, const int64_t *m, const int64_t *v,
                    const int64_t *offs, const double *d1, const double *d2,
                    int64_t dstride, double eta, double b1, double b2,
                    double c1, double c2, double eps, int nthreads,
                    int64_t min_per_thread) {
    if (nleaf <= 0) return;
    int64_t total = offs[nleaf];
    if (min_per_thread < 1) min_per_thread = 1;
    int64_t nt = total / min_per_thread;
    if (nt > nthreads) nt = nthreads;
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    if (nt < 1) nt = 1;
    job_t jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS];
#ifdef HAVE_MKL_RSQRT
    unsigned csr = _mm_getcsr() & CSR_CONTROL; /* the caller's mode, for every share */
#else
    unsigned csr = 0;
#endif
    int64_t prev = 0;
    for (int64_t t = 0; t < nt; t++) {
        job_t *j = &jobs[t];
        j->rule = rule; j->f64 = f64; j->nleaf = nleaf;
        j->x = x; j->g = g; j->m = m; j->v = v; j->offs = offs;
        j->d1 = d1; j->d2 = d2; j->dstride = dstride;
        j->eta = eta; j->b1 = b1; j->b2 = b2; j->c1 = c1; j->c2 = c2; j->eps = eps;
        j->csr = csr;
        /* boundaries on multiples of 16 elements: whole cache lines per thread */
        int64_t end = t + 1 == nt ? total : (total / nt * (t + 1)) & ~(int64_t)15;
        if (end < prev) end = prev;
        j->lo = prev; j->hi = end;
        prev = end;
    }
#ifdef _OPENMP
    /* Built with -fopenmp, this library uses the process's libgomp, the one torch
     * loaded: torch's own worker threads, which spin for a while after each of
     * torch's parallel operations, take the shares at once (threads of our own
     * would compete with them for the cores). */
    (void)tids;
    (void)started;
    if (nt > 1) {
#pragma omp parallel for num_threads((int)nt) schedule(static, 1)
        for (int64_t t = 0; t < nt; t++) run_job(&jobs[t]);
        return;
    }
    run_job(&jobs[0]);
#else
    for (int64_t t = 1; t < nt; t++)
        started[t] = pthread_create(&tids[t], NULL, thread_main, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int64_t t = 1; t < nt; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        else run_job(&jobs[t]);
    }
#endif
}
