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
// below at floor. Logits are not clamped above: 2^x overflows beyond x = 127 (float64: 1023), and the
// callers keep x = logit - top far below that (top the pair's own maximum, x <= 0, or a shift that no
// logit exceeds by more than 40, float64: 600); the upper clamp cost ~10% of the time per pair. A NaN logit stays NaN.
// Sums are kept in the logits' type over 256 candidates and then added in float64.
// Tables must have 2 * 16 readable columns past the last segment's end.
// The work is cut into items (runs of pairs of a segment by runs of its columns, see run()) that OpenMP
// threads take in turn; the cut depends on the segments alone, so the results do not depend on the number
// of threads. OpenMP, not threads of our own: built with -fopenmp, the library runs on the OpenMP runtime
// torch has loaded where that is GNU OpenMP (torch's Linux wheels), whose idle workers spin for a while
// after each torch operation and slowed threads of our own down by competing with them for the cores.
// Written with GCC/Clang vector extensions: the compiler maps them to the machine's SIMD registers.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <new>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

enum { R = 8, U = 2, CHUNK = 256, MAXIMA = 1, SUMS = 2 };
// below this many (pair, column) evaluations per thread (~0.1 ms), starting a thread costs more than it saves
static const double MIN_PAIRS_PER_THREAD = 262144.0;
// work items: runs of at most PAIR_STEP pairs (each block of table columns, once in cache, serves many
// pairs) by runs of columns worth about ITEM_PAIRS (pair, column) evaluations (~1 ms)
static const long PAIR_STEP = 32 * R;
static const double ITEM_PAIRS = 2097152.0;

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

// setup()(i) for i in [0, n) on up to `threads` OpenMP threads, which take the i in turn; setup() is called once
// per thread (e.g. for its buffers), each thread runs with the floating-point control state (flush to zero) of
// the calling thread, and a failure (out of memory) in any thread is rethrown as std::bad_alloc
template <class Setup> static void parallel(long n, int threads, Setup setup) {
    if (n <= 0) return;
    if (threads > n) threads = int(n);
    std::atomic<long> next(0);
    std::atomic<bool> failed(false);
#if defined(__SSE__)
    unsigned csr = _mm_getcsr();
#endif
#pragma omp parallel num_threads(threads)
    {
#if defined(__SSE__)
        unsigned own = _mm_getcsr();
        _mm_setcsr(csr);
#endif
        try {
            auto f = setup();
            for (long i = next++; i < n && !failed; i = next++) f(i);
        } catch (...) {                                     // nothing may leave the region
            failed = true;
        }
#if defined(__SSE__)
        _mm_setcsr(own);
#endif
    }
    if (failed) throw std::bad_alloc();
}

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
#if defined(__AVX512F__)
        if constexpr (sizeof(T) == 4) {                     // clamp, round and scale in one instruction each
            x = (vt)_mm512_max_ps(_mm512_set1_ps(floor), (__m512)x);   // max(floor, NaN) is NaN
            __m512 n = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            return (vt)_mm512_scalef_ps((__m512)poly(x - (vt)n), n);
        }
#endif
        x = x < floor ? vt{} + floor : x;
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

    // passes: MAXIMA sets top (each pair's largest logit if OWN, else 0), SUMS sets sums (relative to top)
    template <int V1, bool OWN>
    static void segment(long p0, long p1, long lo, long hi, int K, const T *lhs, const T *tab, long ldt,
                        const T *vals, long ldv, T floor, double *sums, T *top, T *a, int passes) {
        // columns in blocks of about 256 KB of table (kept in cache while every pair passes over them)
        long block = (65536 * 4 / sizeof(T) / K + CHUNK - 1) / CHUNK * CHUNK;
        for (long p = p0; p < p1; p++) {
            if (passes & MAXIMA) top[p] = OWN ? -INFINITY : 0;
            if (passes & SUMS)
                for (int k = 0; k < V1; k++) sums[p * V1 + k] = 0.0;
        }
        for (int pass = 0; pass < 2; pass++)                // pass 0: each pair's largest logit
            if (pass == 0 ? OWN && (passes & MAXIMA) : (passes & SUMS))
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
                                bool tail = g + u * W + W > hi;        // lanes past the end weigh nothing
                                it in = tail ? before(g, u, hi) : it{};    // (their weights may overflow)
                                for (int r = 0; r < R; r++) {
                                    vt w = exp2v(OWN ? s[r][u] - shift[r] : s[r][u], floor);
                                    if (tail) w = (vt)((it)w & in);
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

    // f(i, rows) for i in [0, n) on up to `threads` OpenMP threads (parallel()), each with its own buffer for
    // R rows of lhs
    template <class F> static void each(long n, int threads, int K, F f) {
        parallel(n, threads, [&] {
            return [rows = std::vector<T>(R * (size_t)K), &f](long i) mutable { f(i, rows.data()); };
        });
    }

    // want_sums = 0: only each pair's largest logit (every segment own_max; vals and sums are not read)
    static int run(long n_seg, const long *pair_lo, const long *pair_hi, const long *col_lo, const long *col_hi,
                   const unsigned char *own_max, int K, int V1, const T *lhs, const T *tab, long ldt,
                   const T *vals, long ldv, T floor, double *sums, T *top, int threads, int want_sums) {
        if (V1 < 2 || V1 > 4 || K < 1) return 1;
        // Items: runs of at most PAIR_STEP pairs of a segment by runs of its columns worth about ITEM_PAIRS
        // (pair, column) evaluations each. A run of pairs in several column runs gets partial sums per run;
        // with its own maximum, the maxima are found first (every column run) and combined, and then every
        // column run sums relative to that common maximum, so that the floor applies as without the cut.
        // The cut depends on the segments alone: the results do not depend on the number of threads.
        struct Item { long s, p0, p1, c0, c1, part; };        // part: offset of its partial sums, or -1
        std::vector<Item> items;
        long parts = 0;
        double work = 0;
        for (long s = 0; s < n_seg; s++) {
            long np = pair_hi[s] - pair_lo[s], nc = col_hi[s] - col_lo[s];
            if (np <= 0) continue;
            work += double(np) * double(nc > 0 ? nc : 0);
            long split = long(double(np < PAIR_STEP ? np : PAIR_STEP) * double(nc) / ITEM_PAIRS);
            split = split < 1 ? 1 : split > 64 ? 64 : split;
            long width = (nc / split + CHUNK - 1) / CHUNK * CHUNK;
            bool whole = split == 1 || width >= nc;          // (no columns: top and sums are set all the same)
            for (long p = pair_lo[s]; p < pair_hi[s]; p += PAIR_STEP) {
                long pe = p + PAIR_STEP < pair_hi[s] ? p + PAIR_STEP : pair_hi[s];
                if (whole) { items.push_back({s, p, pe, col_lo[s], col_hi[s], -1}); continue; }
                for (long c = col_lo[s]; c < col_hi[s]; c += width, parts += pe - p)
                    items.push_back({s, p, pe, c, c + width < col_hi[s] ? c + width : col_hi[s], parts});
            }
        }
        std::vector<double> part_sums(parts * V1);
        std::vector<T> part_top(parts);
        if (threads < 1 || work < MIN_PAIRS_PER_THREAD * 2.0) threads = 1;
        if (threads > 1 && work / threads < MIN_PAIRS_PER_THREAD) threads = int(work / MIN_PAIRS_PER_THREAD);
        if (threads > (long)items.size()) threads = int(items.size());
        auto go = [&](const Item &it, T *a, int passes, bool to_parts) {
            long n = it.p1 - it.p0;
            double *su = it.part < 0 ? sums + it.p0 * V1 : part_sums.data() + it.part * V1;
            T *to = to_parts ? part_top.data() + it.part : top + it.p0;
            const T *l = lhs + it.p0 * K;
#define CASE(v) case v: (own_max[it.s] ? segment<v, true> : segment<v, false>)(0, n, it.c0, it.c1, K, l, tab, \
                                                             ldt, vals, ldv, floor, su, to, a, passes); break;
            switch (V1) { CASE(2) CASE(3) CASE(4) }
#undef CASE
        };
        std::vector<long> split_own;                        // column runs of pairs with their own maximum
        for (long i = 0; i < (long)items.size(); i++)
            if (items[i].part >= 0 && own_max[items[i].s]) split_own.push_back(i);
        // each column run's maxima, combined in item order (a run of pairs' column runs are consecutive)
        each((long)split_own.size(), threads, K, [&](long j, T *a) { go(items[split_own[j]], a, MAXIMA, true); });
        for (size_t i = 0; i < items.size(); i++) {
            const Item &it = items[i];
            if (it.part < 0) continue;
            bool first = i == 0 || items[i - 1].s != it.s || items[i - 1].p0 != it.p0;
            for (long p = it.p0; p < it.p1; p++) {
                T t = own_max[it.s] ? part_top[it.part + p - it.p0] : T(0);
                top[p] = first || t > top[p] ? t : top[p];
            }
        }
        if (!want_sums) {                                   // the whole items' maxima; column runs are done
            std::vector<long> whole_items;
            for (long i = 0; i < (long)items.size(); i++)
                if (items[i].part < 0) whole_items.push_back(i);
            each((long)whole_items.size(), threads, K,
                 [&](long j, T *a) { go(items[whole_items[j]], a, MAXIMA, false); });
            return 0;
        }
        // the sums: whole items set top and sums, column runs sum relative to the combined top
        each((long)items.size(), threads, K, [&](long i, T *a) {
            go(items[i], a, items[i].part < 0 ? MAXIMA | SUMS : SUMS, false);
        });
        for (size_t i = 0; i < items.size(); i++) {          // add the column runs' sums in item order
            const Item &it = items[i];
            if (it.part < 0) continue;
            bool first = i == 0 || items[i - 1].s != it.s || items[i - 1].p0 != it.p0;
            for (long p = it.p0; p < it.p1; p++)
                for (int k = 0; k < V1; k++) {
                    double x = part_sums[(it.part + p - it.p0) * V1 + k];
                    sums[p * V1 + k] = first ? x : sums[p * V1 + k] + x;
                }
        }
        return 0;
    }
};

// Return 0, 1 when V1 or K is out of range, 2 when memory ran out. `threads`: at most this many threads share
// the work. `want_sums` = 0: only `top` (each pair's largest logit; every segment must have own_max).
extern "C" int softmax_sums_f32(long n_seg, const long *pair_lo, const long *pair_hi, const long *col_lo,
                                const long *col_hi, const unsigned char *own_max, int K, int V1, const float *lhs,
                                const float *tab, long ldt, const float *vals, long ldv, float floor, double *sums,
                                float *top, int threads, int want_sums) {
    try {
        return Kernel<float>::run(n_seg, pair_lo, pair_hi, col_lo, col_hi, own_max, K, V1, lhs, tab, ldt, vals, ldv,
                                  floor, sums, top, threads, want_sums);
    } catch (...) {
        return 2;
    }
}

extern "C" int softmax_sums_f64(long n_seg, const long *pair_lo, const long *pair_hi, const long *col_lo,
                                const long *col_hi, const unsigned char *own_max, int K, int V1, const double *lhs,
                                const double *tab, long ldt, const double *vals, long ldv, double floor,
                                double *sums, double *top, int threads, int want_sums) {
    try {
        return Kernel<double>::run(n_seg, pair_lo, pair_hi, col_lo, col_hi, own_max, K, V1, lhs, tab, ldt, vals, ldv,
                                   floor, sums, top, threads, want_sums);
    } catch (...) {
        return 2;
    }
}

// The left-hand sides of the (query, cluster) pairs of companion/_els_bank.py's evaluation by clusters (see
// cluster_sums below), in one pass: for pair p, d = q[qi[p]] - m[ki[p]] (float64
// queries q, Q x P, and centres m), dist[p] = |d| (if dist is not null) and, if out is not null, the row
// [2 t_p d, -t_p, log2 e, -(t_p |d|^2 + u_p)] of P + 3 values in T (t_p = s_p log2 e, u_p = shift_p log2 e).
template <typename T>
static void cluster_rows(long n, int P, const double *q, const double *m, const long *qi, const long *ki,
                         const double *t, const double *u, T *out, double *dist) {
    for (long p = 0; p < n; p++) {
        const double *a = q + qi[p] * P, *b = m + ki[p] * P;
        double d2 = 0.0;
        for (int j = 0; j < P; j++) d2 += (a[j] - b[j]) * (a[j] - b[j]);
        if (dist) dist[p] = sqrt(d2);
        if (!out) continue;
        T *row = out + p * (P + 3);
        double two_t = 2.0 * t[p];
        for (int j = 0; j < P; j++) row[j] = T((a[j] - b[j]) * two_t);
        row[P] = T(-t[p]), row[P + 1] = T(1.4426950408889634), row[P + 2] = T(-(t[p] * d2 + u[p]));
    }
}

// The evaluation by clusters of companion/_els_bank.py (PatchBank._by_cluster) in one call, from the clusters
// each query keeps (keep: n_clusters x Q bytes) to each query's sums; natural log units, s = 1/2 sigma^2 per query.
// The pairs p = (query, cluster) are taken cluster by cluster, queries in order. Per cluster c, with the bound
// ub_p = log_cmax_c - s (|q - m_c| - r_c)_+^2 on every log-weight of c for the query (triangle inequality):
//   gap_c   = max(0, max_p ub_p - ref_q)
//   exact_c = eps32 ((max_p sqrt(s) |q - m_c| + r_c sqrt(max_p s))^2 + max_p |shift_p| + log_cmax_c) > limit,
//             the float32 rounding estimate of the logits: float64 logits (tab64, vals64) if exact, else float32
//   fixed_c = gap_c <= margin, or exact_c and gap_c <= margin64 (float64 logits are weighed in float64);
//             shift_p = ref_q if fixed_c (the rounding estimate takes shift 0 until then), else 0 and each
//             pair takes its own maximum
// and each pair gets the kernel's sums over its cluster's columns start[c]:start[c + 1] (centred tables, rows
// from cluster_rows) and top_p = log2 e shift_p + (its maximum, or 0). Per query, in pair order (float64):
// best_q = max_p top_p and out_q = sum_p sums_p 2^(top_p - best_q). flags[c] = fixed_c + 2 exact_c.
template <typename T>
static void cluster_item(long p0, long p1, long c, int P, int V1, const long *qi, const long *ki, const double *q,
                         const double *centre, const double *t, const double *u, const long *start, const T *tab,
                         const T *vals, long ld, bool own, double floor, double *sums, double *top) {
    int K = P + 3;
    long n = p1 - p0;
    std::vector<T> rows(n * (size_t)K), a(R * (size_t)K), tops(n);
    cluster_rows<T>(n, P, q, centre, qi + p0, ki + p0, t + p0, u + p0, rows.data(), nullptr);
#define CASE(v) case v: (own ? Kernel<T>::template segment<v, true> : Kernel<T>::template segment<v, false>)( \
        0, n, start[c], start[c + 1], K, rows.data(), tab, ld, vals, ld, T(floor), sums + p0 * V1, tops.data(), \
        a.data(), MAXIMA | SUMS); break;
    switch (V1) { CASE(2) CASE(3) CASE(4) }
#undef CASE
    for (long i = 0; i < n; i++) top[p0 + i] = u[p0 + i] + double(tops[i]);
}

extern "C" int cluster_sums(long Q, int P, int V1, long n_clusters, const unsigned char *keep, const double *q,
                            const double *s, const double *ref, const double *centre, const double *radius,
                            const double *log_cmax, const long *start, const float *tab32, const float *vals32,
                            long ld32, const double *tab64, const double *vals64, long ld64, double floor,
                            double margin, double margin64, double limit, double *out, unsigned char *flags,
                            int threads) {
    if (V1 < 2 || V1 > 4 || P < 1) return 1;
    const double log2e = 1.4426950408889634, eps32 = 1.0 / 16777216.0;
    try {
        std::vector<long> first(n_clusters + 1, 0);                 // the pairs of cluster c: first[c]:first[c + 1]
        for (long c = 0; c < n_clusters; c++) {
            long k = 0;
            for (long i = 0; i < Q; i++) k += keep[c * Q + i] != 0;
            first[c + 1] = first[c] + k;
        }
        long n = first[n_clusters];
        std::vector<long> qi(n), ki(n);
        std::vector<double> dist(n), t(n), u(n), sums(n * (size_t)V1), top(n);
        for (long c = 0, p = 0; c < n_clusters; c++)
            for (long i = 0; i < Q; i++)
                if (keep[c * Q + i]) qi[p] = i, ki[p++] = c;
        cluster_rows<double>(n, P, q, centre, qi.data(), ki.data(), nullptr, nullptr, nullptr, dist.data());
        struct Item { long c, p0, p1; };
        std::vector<Item> items;
        double work = 0;
        for (long c = 0; c < n_clusters; c++) {
            double gap = 0, sd = 0, smax = 0, shift = 0;
            for (long p = first[c]; p < first[c + 1]; p++) {
                double si = s[qi[p]], d = dist[p] - radius[c] > 0 ? dist[p] - radius[c] : 0.0;
                double g = log_cmax[c] - si * d * d - ref[qi[p]];
                gap = g > gap ? g : gap;
                sd = sqrt(si) * dist[p] > sd ? sqrt(si) * dist[p] : sd;
                smax = si > smax ? si : smax;
            }
            bool fixed = gap <= margin;
            for (long p = first[c]; p < first[c + 1] && fixed; p++)
                shift = fabs(ref[qi[p]]) > shift ? fabs(ref[qi[p]]) : shift;
            double r = sd + radius[c] * sqrt(smax);
            bool exact = eps32 * (r * r + shift + log_cmax[c]) > limit;
            fixed = fixed || (exact && gap <= margin64);
            flags[c] = (unsigned char)(fixed + 2 * exact);
            for (long p = first[c]; p < first[c + 1]; p++)
                t[p] = s[qi[p]] * log2e, u[p] = fixed ? ref[qi[p]] * log2e : 0.0;
            for (long p = first[c]; p < first[c + 1]; p += PAIR_STEP)
                items.push_back({c, p, p + PAIR_STEP < first[c + 1] ? p + PAIR_STEP : first[c + 1]});
            work += double(first[c + 1] - first[c]) * double(start[c + 1] - start[c]);
        }
        if (threads < 1 || work < MIN_PAIRS_PER_THREAD * 2.0) threads = 1;
        if (threads > 1 && work / threads < MIN_PAIRS_PER_THREAD) threads = int(work / MIN_PAIRS_PER_THREAD);
        parallel((long)items.size(), threads, [&] {
            return [&](long i) {
                const Item &it = items[i];
                bool own = !(flags[it.c] & 1);
                if (flags[it.c] & 2)
                    cluster_item<double>(it.p0, it.p1, it.c, P, V1, qi.data(), ki.data(), q, centre, t.data(), u.data(),
                                         start, tab64, vals64, ld64, own, floor, sums.data(), top.data());
                else
                    cluster_item<float>(it.p0, it.p1, it.c, P, V1, qi.data(), ki.data(), q, centre, t.data(), u.data(),
                                        start, tab32, vals32, ld32, own, floor, sums.data(), top.data());
            };
        });
        std::vector<double> best(Q, -INFINITY);
        for (long p = 0; p < n; p++) best[qi[p]] = top[p] > best[qi[p]] ? top[p] : best[qi[p]];
        for (long i = 0; i < Q * V1; i++) out[i] = 0.0;
        for (long p = 0; p < n; p++) {
            double w = exp2(top[p] - best[qi[p]]);
            for (int k = 0; k < V1; k++) out[qi[p] * V1 + k] += sums[p * V1 + k] * w;
        }
    } catch (...) {
        return 2;
    }
    return 0;
}

// 1 when built with OpenMP (the work can be shared among threads), else 0.
extern "C" int softmax_sums_openmp() {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}
