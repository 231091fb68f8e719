// Fused softmax-weighted sums over a bank of candidates, the inner loop of companion/_els_bank.py.
//
// Segment s owns the pairs [pair_lo, pair_hi) (rows of `lhs`: a query, combined with its shift) and
// the candidate columns [col_lo, col_hi); for each of its pairs p and columns j:
//     logit_pj = lhs_p . tab_j            (log2 units; tab is stored transposed, K x ld)
//     top_p    = 0, or max_j logit_pj     (own_max: one pass more)
//     sums_p   = sum_j 2^(logit_pj - top_p) vals_j     (vals: V1 x ld, e.g. [v, 1])
// without writing the logits to memory: a block of R pairs by U vectors of W candidates is kept in
// registers, from the product through exp2 to the sums. exp2 is evaluated as 2^n 2^f, n the nearest
// integer, 2^f by a degree-5 polynomial on [-1/2, 1/2] (relative error 8e-8, fitted by least squares
// at Chebyshev nodes: weights to float32 accuracy also when the logits are float64), after clamping
// to [floor, 127]. Sums are kept in the logits' type over 256 candidates and then added in float64.
// Tables must have 2 * 16 readable columns past the last segment's end.
// Written with GCC/Clang vector extensions: the compiler maps them to the machine's SIMD registers.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

enum { R = 8, U = 2, CHUNK = 256 };

// T: the type of logits, tables and values (float, or double when float32 logits would round too much)
template <typename T> struct Simd;
template <> struct Simd<float> {
    typedef float v __attribute__((vector_size(64)));
    typedef int32_t n;
    typedef n i __attribute__((vector_size(64)));
    typedef uint32_t u __attribute__((vector_size(64)));
    static constexpr float magic = 12582912.0f;            // 1.5 * 2^23: adding it rounds to an integer
    static constexpr int mantissa = 23;
};
template <> struct Simd<double> {
    typedef double v __attribute__((vector_size(64)));
    typedef int64_t n;
    typedef n i __attribute__((vector_size(64)));
    typedef uint64_t u __attribute__((vector_size(64)));
    static constexpr double magic = 6755399441055744.0;    // 1.5 * 2^52
    static constexpr int mantissa = 52;
};

template <typename T> struct Kernel {
    typedef typename Simd<T>::v vt;
    typedef typename Simd<T>::i it;
    typedef typename Simd<T>::u ut;
    static constexpr int W = 64 / sizeof(T);                // lanes per vector

    static inline vt load(const T *p) { vt v; memcpy(&v, p, sizeof v); return v; }

    static inline vt poly(vt f) {                           // 2^f for f in [-1/2, 1/2]
        vt p = vt{} + T(0.0013266970636323094);
        p = p * f + T(0.009675459936261177);
        p = p * f + T(0.05550742521882057);
        p = p * f + T(0.24022121727466583);
        p = p * f + T(0.6931469440460205);
        return p * f + T(1.0000001192092896);
    }

    static inline vt exp2v(vt x, T floor) {
        x = x < floor ? vt{} + floor : x;
        x = x > T(127) ? vt{} + T(127) : x;
#if defined(__AVX512F__)
        if constexpr (sizeof(T) == 4) {                     // round and scale by 2^n in one instruction each
            __m512 n = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            return (vt)_mm512_scalef_ps((__m512)poly(x - (vt)n), n);
        }
#endif
        const vt magic = vt{} + Simd<T>::magic;
        vt t = x + magic, f = x - (t - magic);            // t - magic: x rounded to an integer n
        ut n = (ut)((it)t - (it)magic) << Simd<T>::mantissa;   // n (>= floor >= the least normal exponent)
        return (vt)((ut)poly(f) + n);                        // 2^f 2^n via the exponent bits
    }

    // logits of R pairs (rows of a, K apart) against U vectors of candidates from column g
    static inline void logits(vt s[R][U], const T *a, int K, const T *tab, long ldt, long g) {
        for (int r = 0; r < R; r++)
            for (int u = 0; u < U; u++) s[r][u] = vt{};
        for (int d = 0; d < K; d++) {
            vt y[U];
            for (int u = 0; u < U; u++) y[u] = load(tab + d * ldt + g + u * W);
            for (int r = 0; r < R; r++) {
                vt ar = a[r * K + d] - vt{};                // a broadcast (x - 0 is x; x + 0 is not, for -0)
                for (int u = 0; u < U; u++) s[r][u] += ar * y[u];
            }
        }
    }

    // lanes of vector u from column g that lie before hi (all bits set) or not (zero)
    static inline it before(long g, int u, long hi) {
        it lane;
        for (int l = 0; l < W; l++) lane[l] = u * W + l;
        long left = hi - g < W * U ? hi - g : W * U;        // lane offsets, not columns: no overflow
        return lane < (typename Simd<T>::n)left;
    }

    template <int V1, bool OWN>
    static void segment(long p0, long p1, long lo, long hi, int K, const T *lhs, const T *tab, long ldt,
                        const T *vals, long ldv, T floor, double *sums, T *top, T *a) {
        // columns in blocks of about 256 KB of table (kept in cache while every pair passes over them)
        long block = (65536 * 4 / sizeof(T) / K + CHUNK - 1) / CHUNK * CHUNK;
        for (long p = p0; p < p1; p++) {
            top[p] = OWN ? -INFINITY : 0;
            for (int k = 0; k < V1; k++) sums[p * V1 + k] = 0.0;
        }
        for (int pass = OWN ? 0 : 1; pass < 2; pass++)      // pass 0: each pair's largest logit
            for (long b0 = lo; b0 < hi; b0 += block) {
                long b1 = b0 + block < hi ? b0 + block : hi;
                for (long i0 = p0; i0 < p1; i0 += R) {
                    T shift[R];
                    for (int r = 0; r < R; r++) {              // a short last block repeats its last pair
                        long i = i0 + r < p1 ? i0 + r : p1 - 1;
                        memcpy(a + r * K, lhs + i * K, sizeof(T) * K);
                        shift[r] = top[i];
                    }
                    if (pass == 0) {
                        vt mx[R];
                        for (int r = 0; r < R; r++) mx[r] = vt{} + shift[r];
                        for (long g = b0; g < b1; g += W * U) {
                            vt s[R][U];
                            logits(s, a, K, tab, ldt, g);
                            for (int u = 0; u < U; u++) {
                                it in = before(g, u, hi);
                                for (int r = 0; r < R; r++) {
                                    vt x = (vt)(((it)s[r][u] & in) | ((it)mx[r] & ~in));
                                    mx[r] = x > mx[r] ? x : mx[r];
                                }
                            }
                        }
                        for (int r = 0; r < R && i0 + r < p1; r++)
                            for (int l = 0; l < W; l++) top[i0 + r] = mx[r][l] > top[i0 + r] ? mx[r][l] : top[i0 + r];
                        continue;
                    }
                    for (long c = b0; c < b1; c += CHUNK) {
                        long ce = c + CHUNK < b1 ? c + CHUNK : b1;
                        vt part[R][V1];
                        for (int r = 0; r < R; r++)
                            for (int k = 0; k < V1; k++) part[r][k] = vt{};
                        for (long g = c; g < ce; g += W * U) {
                            vt s[R][U];
                            logits(s, a, K, tab, ldt, g);
                            for (int u = 0; u < U; u++) {
                                vt v[V1];
                                for (int k = 0; k < V1; k++) v[k] = load(vals + k * ldv + g + u * W);
                                if (g + u * W + W > hi)                // lanes past the end weigh nothing
                                    for (int k = 0; k < V1; k++) v[k] = (vt)((it)v[k] & before(g, u, hi));
                                for (int r = 0; r < R; r++) {
                                    vt w = exp2v(OWN ? s[r][u] - shift[r] : s[r][u], floor);
                                    for (int k = 0; k < V1; k++) part[r][k] += w * v[k];
                                }
                            }
                        }
                        for (int r = 0; r < R && i0 + r < p1; r++)
                            for (int k = 0; k < V1; k++) {
                                double h = 0.0;
                                for (int l = 0; l < W; l++) h += part[r][k][l];
                                sums[(i0 + r) * V1 + k] += h;
                            }
                    }
                }
            }
    }

    static int run(long n_seg, const long *pair_lo, const long *pair_hi, const long *col_lo, const long *col_hi,
                   const unsigned char *own_max, int K, int V1, const T *lhs, const T *tab, long ldt,
                   const T *vals, long ldv, T floor, double *sums, T *top) {
        if (V1 < 2 || V1 > 4 || K < 1) return 1;
        std::vector<T> rows(R * (size_t)K);                 // the lhs rows of the current block of pairs
        T *a = rows.data();
        for (long s = 0; s < n_seg; s++) {
            long p0 = pair_lo[s], p1 = pair_hi[s], lo = col_lo[s], hi = col_hi[s];
#define CASE(v) case v: (own_max[s] ? segment<v, true> : segment<v, false>)(p0, p1, lo, hi, K, lhs, tab, ldt, \
                                                                              vals, ldv, floor, sums, top, a); break;
            switch (V1) { CASE(2) CASE(3) CASE(4) }
#undef CASE
        }
        return 0;
    }
};

// Return 0, or 1 when V1 or K is out of range.
extern "C" int softmax_sums_f32(long n_seg, const long *pair_lo, const long *pair_hi, const long *col_lo,
                                const long *col_hi, const unsigned char *own_max, int K, int V1, const float *lhs,
                                const float *tab, long ldt, const float *vals, long ldv, float floor, double *sums,
                                float *top) {
    return Kernel<float>::run(n_seg, pair_lo, pair_hi, col_lo, col_hi, own_max, K, V1, lhs, tab, ldt, vals, ldv,
                              floor, sums, top);
}

extern "C" int softmax_sums_f64(long n_seg, const long *pair_lo, const long *pair_hi, const long *col_lo,
                                const long *col_hi, const unsigned char *own_max, int K, int V1, const double *lhs,
                                const double *tab, long ldt, const double *vals, long ldv, double floor,
                                double *sums, double *top) {
    return Kernel<double>::run(n_seg, pair_lo, pair_hi, col_lo, col_hi, own_max, K, V1, lhs, tab, ldt, vals, ldv,
                               floor, sums, top);
}
