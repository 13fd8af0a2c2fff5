/*
 * The fused sparsity + moments pass of filterstats.kernels.kernel_pass, in one loop;
 * and the sparsity count alone from one read (fs_maxima_*, fs_count_sparse_*, used by
 * filterstats.kernels.layer_sparsity).
 *
 * Compiled on first use by filterstats/_native/__init__.py (cc -O3 -march=native
 * -ffp-contract=off) and called through ctypes; the pure-torch path computes the same
 * quantities and is the fallback. Every per-kernel value (the float64 upcast, max|x|,
 * the sparse test, the scaled and shifted row y) is computed with exactly the same
 * IEEE operations as the torch path (no contraction into FMAs: y = x * f - c must
 * round twice, so that identical kernels give exactly y = 0). Only the order of the
 * float64 sums differs.
 *
 * Layout: `kernels` is (n, width) row-major, float32 or float64. Kernels are taken in
 * fixed blocks of FS_BLOCK; each block writes its partial sums to its own row of
 * `partials` (n_blocks, stride), stride = 2 + n_variants * (1 + width + width*(width+1)/2):
 *   [n_sparse, n_valid, then per variant: count, total[width], outer (upper triangle,
 *    row by row)].
 * A block is done in two phases. Phase 1 takes tiles of FS_LANES kernels as vectors
 * (lane l = kernel l of the tile, one vector per kernel value) and writes each
 * variant's rows y and 0/1 weights to a work buffer; phase 2 sums their products
 * over the block's tiles, 15 accumulators at a time kept in registers (3x3 kernels).
 * Lane l thus sums kernels l, l + FS_LANES, ... of the block; lanes are then added in
 * order, and fs_reduce adds the blocks in order. The result therefore depends neither
 * on how blocks are shared among threads nor on the caller's chunks.
 *
 * Needs GCC or Clang (vector extensions); -march=native makes the vectors
 * AVX-512/AVX2 registers.
 */
#include <fenv.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FS_LANES 8
#define FS_BLOCK 1024
#define FS_MAX_WIDTH 64 /* x and y tiles live on the stack */
#define FS_MAX_VARIANTS 4

typedef struct {
    int64_t n;           /* kernels */
    int64_t width;       /* values per kernel (k*k) */
    int64_t n_variants;  /* 0: the sparsity count only */
    int32_t strict;      /* sparse means max|x| < threshold instead of <= */
    int32_t omit;        /* leave out kernels holding NaN/inf */
    const double *threshold;      /* () the sparsity threshold */
    const uint8_t *all_sparse;    /* () every kernel is sparse (an all-zero layer) */
    int32_t scale[FS_MAX_VARIANTS];  /* divide each kernel by its max|x| */
    int32_t drop[FS_MAX_VARIANTS];   /* leave sparse kernels out */
    const double *shift;             /* (n_variants, width) */
} fs_pass_args;

int64_t fs_block_size(void) { return FS_BLOCK; }

int64_t fs_stride(int64_t width, int64_t n_variants) {
    return 2 + n_variants * (1 + width + width * (width + 1) / 2);
}

/* Doubles of working storage one caller of fs_pass_* needs: one block's rows y and
 * weights per variant (phase 1 writes them, phase 2 sums their products). */
int64_t fs_work_size(int64_t width, int64_t n_variants) {
    return (n_variants > 0 ? n_variants : 1) * (FS_BLOCK / FS_LANES) * (width + 1) * FS_LANES;
}

/* FS_LANES doubles as one vector (GCC/Clang vector extension; split into narrower
 * registers where the CPU has them), aligned like a double; lane l holds kernel l of
 * a tile. Comparisons give fs_mask lanes of -1 (true) or 0. */
typedef double fs_vec __attribute__((vector_size(FS_LANES * sizeof(double)), aligned(8)));
typedef int64_t fs_mask __attribute__((vector_size(FS_LANES * sizeof(int64_t)), aligned(8)));

static inline fs_vec fs_select(fs_mask mask, fs_vec yes, fs_vec no) {
    return (fs_vec)(((fs_mask)yes & mask) | ((fs_mask)no & ~mask));
}

static inline fs_vec fs_splat(double value) {
    return (fs_vec){value, value, value, value, value, value, value, value};
}

/* max|x| of each kernel of a tile, NaN if any value is NaN (as torch's amax). */
static inline __attribute__((always_inline)) fs_vec fs_tile_maxima(const fs_vec *x,
                                                                   const int64_t width) {
    const fs_mask abs_bits = (fs_mask)fs_splat(0.0) | INT64_MAX;
    fs_vec top = fs_splat(0.0);
    fs_mask nan = (fs_mask)top;
    for (int64_t c = 0; c < width; ++c) {
        const fs_vec mag = (fs_vec)((fs_mask)x[c] & abs_bits);
        nan |= mag != mag;
        top = fs_select(mag > top, mag, top);
    }
    return fs_select(nan, fs_splat((double)NAN), top);
}

/* Phase 1 of a tile of FS_LANES kernels, x[c] = value c of each kernel (0 where
 * absent, present: which lanes hold a kernel): max|x|, the sparse and valid flags and
 * counts, and per variant the rows y (y_out[v][c]) and the 0/1 weights (keep_out[v]).
 * Branch-free, whole vectors only. */
static inline __attribute__((always_inline)) void fs_tile(
    const fs_pass_args *a, const int64_t width, fs_vec *restrict x, const fs_mask present,
    const double threshold, const int all_sparse, fs_vec *restrict n_sparse,
    fs_vec *restrict n_valid, fs_vec *restrict y_out, fs_vec *restrict keep_out,
    const int64_t variant_stride) {
    const fs_vec zero = fs_splat(0.0), one = fs_splat(1.0);
    const fs_vec m = fs_tile_maxima(x, width);
    const fs_mask ok = a->omit ? (m - m == zero) : (fs_mask)zero - 1;
    const fs_mask below = a->strict ? m < fs_splat(threshold) : m <= fs_splat(threshold);
    const fs_mask valid = ok & present;
    const fs_mask sparse = (all_sparse ? valid : below & valid);
    *n_valid += fs_select(valid, one, zero);
    *n_sparse += fs_select(sparse, one, zero);
    if (a->omit) /* kernels holding NaN/inf are zeroed, as NaN * 0 would be NaN */
        for (int64_t c = 0; c < width; ++c) x[c] = fs_select(valid, x[c], zero);
    for (int64_t v = 0; v < a->n_variants; ++v) {
        const double *restrict shift = a->shift + v * width;
        fs_vec *restrict y = y_out + v * variant_stride;
        if (a->scale[v] || a->drop[v]) {
            const fs_mask kept = a->drop[v] ? valid & ~sparse : valid;
            const fs_vec keep = fs_select(kept, one, zero);
            const fs_vec inverse = a->scale[v] ? fs_select(m > zero, one / m, one) : one;
            const fs_vec factor = fs_select(kept, inverse, zero);
            for (int64_t c = 0; c < width; ++c) {
                const fs_vec scaled = x[c] * factor;
                y[c] = scaled - fs_splat(shift[c]) * keep;
            }
            keep_out[v * variant_stride] = keep;
        } else {
            for (int64_t c = 0; c < width; ++c)
                y[c] = fs_select(valid, x[c] - fs_splat(shift[c]), zero);
            keep_out[v * variant_stride] = fs_select(valid, one, zero);
        }
    }
}

static inline double fs_lane_sum(fs_vec v) {
    double sum = 0.0;
    for (int l = 0; l < FS_LANES; ++l) sum += v[l];
    return sum;
}

/* Phase 2, any width: count, totals and the upper triangle of sum y y^T over the
 * tiles of one variant (y: tiles x width vectors, keep: tiles vectors). */
static void fs_moments(const fs_vec *restrict y, const fs_vec *restrict keep,
                       int64_t tiles, int64_t width, int64_t stride, double *restrict out) {
    fs_vec count = {0}, total[FS_MAX_WIDTH];
    for (int64_t c = 0; c < width; ++c) total[c] = (fs_vec){0};
    for (int64_t t = 0; t < tiles; ++t) {
        count += keep[t * stride];
        for (int64_t c = 0; c < width; ++c) total[c] += y[t * stride + c];
    }
    out[0] = fs_lane_sum(count);
    for (int64_t c = 0; c < width; ++c) out[1 + c] = fs_lane_sum(total[c]);
    double *restrict outer = out + 1 + width;
    for (int64_t r = 0; r < width; ++r)
        for (int64_t c = r; c < width; ++c) {
            fs_vec acc = {0};
            for (int64_t t = 0; t < tiles; ++t) acc += y[t * stride + r] * y[t * stride + c];
            *outer++ = fs_lane_sum(acc);
        }
}

/* Phase 2 for 3x3 kernels: the 45 products in three groups of 15 accumulators, each
 * group kept in registers over all tiles of the block. */
static const unsigned char FS_ROW9[45] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1,
                                          1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
                                          4, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 7, 8};
static const unsigned char FS_COL9[45] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6,
                                          7, 8, 2, 3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8,
                                          4, 5, 6, 7, 8, 5, 6, 7, 8, 6, 7, 8, 7, 8, 8};

static inline __attribute__((always_inline)) void fs_group9(
    const fs_vec *restrict y, int64_t tiles, int64_t stride, const int first,
    double *restrict outer) {
    fs_vec acc[15];
#pragma GCC unroll 15
    for (int j = 0; j < 15; ++j) acc[j] = (fs_vec){0};
    for (int64_t t = 0; t < tiles; ++t) {
        const fs_vec *restrict yt = y + t * stride;
#pragma GCC unroll 15
        for (int j = 0; j < 15; ++j) acc[j] += yt[FS_ROW9[first + j]] * yt[FS_COL9[first + j]];
    }
#pragma GCC unroll 15
    for (int j = 0; j < 15; ++j) outer[first + j] = fs_lane_sum(acc[j]);
}

static void fs_moments9(const fs_vec *restrict y, const fs_vec *restrict keep,
                        int64_t tiles, int64_t stride, double *restrict out) {
    fs_vec count = {0}, total[9];
#pragma GCC unroll 9
    for (int c = 0; c < 9; ++c) total[c] = (fs_vec){0};
    for (int64_t t = 0; t < tiles; ++t) {
        count += keep[t * stride];
#pragma GCC unroll 9
        for (int c = 0; c < 9; ++c) total[c] += y[t * stride + c];
    }
    out[0] = fs_lane_sum(count);
#pragma GCC unroll 9
    for (int c = 0; c < 9; ++c) out[1 + c] = fs_lane_sum(total[c]);
    fs_group9(y, tiles, stride, 0, out + 10);
    fs_group9(y, tiles, stride, 15, out + 10);
    fs_group9(y, tiles, stride, 30, out + 10);
}

/* x[c] = value c of the FS_LANES kernels at k (width values each), as float64. */
static inline __attribute__((always_inline)) void fs_load_tile_double(
    const double *k, const int64_t width, fs_vec *restrict x) {
    for (int64_t c = 0; c < width; ++c)
        x[c] = (fs_vec){k[c], k[width + c], k[2 * width + c], k[3 * width + c],
                        k[4 * width + c], k[5 * width + c], k[6 * width + c], k[7 * width + c]};
}

static inline __attribute__((always_inline)) void fs_load_tile_float(
    const float *k, const int64_t width, fs_vec *restrict x) {
    /* element loads into registers: faster here than a hardware gather */
    for (int64_t c = 0; c < width; ++c)
        x[c] = (fs_vec){k[c], k[width + c], k[2 * width + c], k[3 * width + c],
                        k[4 * width + c], k[5 * width + c], k[6 * width + c], k[7 * width + c]};
}

/* x[c] = value c of the kernels i0, i0 + 1, ... (at most FS_LANES, none from stop on) of
 * `kernels` (width values each), as float64; absent kernels of the last tile are zeros.
 * Returns which lanes hold a kernel. */
#define FS_DEFINE_LOAD(T)                                                                \
    static inline __attribute__((always_inline)) fs_mask fs_load_##T(                   \
        const T *restrict kernels, const int64_t i0, const int64_t stop,                \
        const int64_t width, fs_vec *restrict x) {                                      \
        const int64_t count = stop - i0 < FS_LANES ? stop - i0 : FS_LANES;              \
        const T *k = kernels + i0 * width;                                              \
        T padded[FS_LANES * FS_MAX_WIDTH];                                              \
        if (count < FS_LANES) {                                                         \
            memset(padded, 0, sizeof padded);                                           \
            memcpy(padded, k, sizeof(T) * (size_t)(count * width));                     \
            k = padded;                                                                 \
        }                                                                               \
        fs_load_tile_##T(k, width, x);                                                  \
        const fs_mask present = {0 < count ? -1 : 0, 1 < count ? -1 : 0,                \
                                 2 < count ? -1 : 0, 3 < count ? -1 : 0,                \
                                 4 < count ? -1 : 0, 5 < count ? -1 : 0,                \
                                 6 < count ? -1 : 0, 7 < count ? -1 : 0};               \
        return present;                                                                 \
    }

FS_DEFINE_LOAD(float)
FS_DEFINE_LOAD(double)

/* One block [start, stop) of kernels of type T, with WIDTH values each. */
#define FS_DEFINE_BLOCK(NAME, T, WIDTH)                                                  \
    static void NAME(const T *restrict kernels, const fs_pass_args *a, int64_t start,   \
                     int64_t stop, double *restrict work, double *restrict out) {       \
        const int64_t width = WIDTH;                                                    \
        const int64_t per_variant = 1 + width + width * (width + 1) / 2;                \
        const int64_t tiles = (stop - start + FS_LANES - 1) / FS_LANES;                 \
        const int64_t stride = width + 1; /* vectors per tile: y rows, then keep */     \
        const double threshold = *a->threshold;                                         \
        const int all_sparse = *a->all_sparse != 0;                                     \
        fs_vec *restrict buffer = (fs_vec *)work;                                       \
        fs_vec n_sparse = fs_splat(0.0), n_valid = fs_splat(0.0);                      \
        for (int64_t t = 0; t < tiles; ++t) {                                           \
            fs_vec x[FS_MAX_WIDTH];                                                     \
            const fs_mask present = fs_load_##T(kernels, start + t * FS_LANES, stop,    \
                                                width, x);                              \
            fs_vec *restrict tile_work = buffer + t * stride;                           \
            fs_tile(a, width, x, present, threshold, all_sparse, &n_sparse, &n_valid,   \
                    tile_work, tile_work + width, FS_BLOCK / FS_LANES * stride);        \
        }                                                                               \
        const double sparse_sum = fs_lane_sum(n_sparse);                                \
        const double valid_sum = fs_lane_sum(n_valid);                                  \
        out[0] = sparse_sum;                                                            \
        out[1] = valid_sum;                                                             \
        for (int64_t v = 0; v < a->n_variants; ++v) {                                   \
            const fs_vec *y = buffer + v * (FS_BLOCK / FS_LANES) * stride;              \
            if (width == 9)                                                             \
                fs_moments9(y, y + width, tiles, stride, out + 2 + v * per_variant);    \
            else                                                                        \
                fs_moments(y, y + width, tiles, width, stride,                          \
                           out + 2 + v * per_variant);                                  \
        }                                                                               \
    }

FS_DEFINE_BLOCK(fs_block_f32, float, a->width)
FS_DEFINE_BLOCK(fs_block_f64, double, a->width)
/* The common case, 3x3 kernels, with the width known to the compiler. */
FS_DEFINE_BLOCK(fs_block9_f32, float, 9)
FS_DEFINE_BLOCK(fs_block9_f64, double, 9)

/* Blocks [first, last) of the layer: each writes its row of partials. */
/* The floating-point environment (rounding, and on x86 the flush-to-zero and
 * denormals-are-zero bits) is per thread: every thread runs in the caller's, so the
 * result does not depend on which thread sums which block. */
int64_t fs_fenv_size(void) { return (int64_t)sizeof(fenv_t); }
void fs_fenv_get(void *out) { fegetenv((fenv_t *)out); }

#define FS_DEFINE_PASS(NAME, BLOCK, BLOCK9, T)                                           \
    int NAME(const T *kernels, const fs_pass_args *a, int64_t first, int64_t last,      \
             double *work, double *partials, const void *caller_fenv) {                 \
        if (a->width < 1 || a->width > FS_MAX_WIDTH || a->n_variants < 0 ||             \
            a->n_variants > FS_MAX_VARIANTS)                                            \
            return 1;                                                                   \
        fenv_t own;                                                                     \
        fegetenv(&own);                                                                 \
        fesetenv((const fenv_t *)caller_fenv);                                          \
        const int64_t stride = fs_stride(a->width, a->n_variants);                      \
        for (int64_t b = first; b < last; ++b) {                                        \
            const int64_t start = b * FS_BLOCK;                                         \
            const int64_t stop = start + FS_BLOCK < a->n ? start + FS_BLOCK : a->n;     \
            if (a->width == 9)                                                          \
                BLOCK9(kernels, a, start, stop, work, partials + b * stride);           \
            else                                                                        \
                BLOCK(kernels, a, start, stop, work, partials + b * stride);            \
        }                                                                               \
        fesetenv(&own);                                                                 \
        return 0;                                                                       \
    }

FS_DEFINE_PASS(fs_pass_f32, fs_block_f32, fs_block9_f32, float)
FS_DEFINE_PASS(fs_pass_f64, fs_block_f64, fs_block9_f64, double)

/* The sparsity count from one read of the kernels, in two calls.
 * fs_maxima_*: blocks [first, last) of kernels write each kernel's max|x| in the
 * kernels' own type (exact: a maximum rounds nothing; NaN where a kernel holds NaN, as
 * torch's amax) and per block, into block_out (n_blocks, 3): the largest maximum (NaN
 * if any is NaN; with omit, over the finite kernels only, 0 if none), 1 if every
 * maximum is finite else 0, and the number of kernels used (the finite ones with omit).
 * fs_count_sparse_*: with the layer's threshold known from those, blocks [first, last)
 * write their number of sparse kernels, m <= threshold (m < threshold when strict)
 * compared in float64 as the fused pass does, every kernel when all_sparse; kernels
 * holding NaN/inf are left out with omit. */

/* FS_LANES values of type T, for storing a tile's maxima in one go. */
typedef float fs_vec_float __attribute__((vector_size(FS_LANES * sizeof(float)), aligned(4)));
typedef double fs_vec_double __attribute__((vector_size(FS_LANES * sizeof(double)), aligned(8)));

#define FS_DEFINE_MAXIMA_BLOCK(NAME, T, WIDTH)                                           \
    static void NAME(const T *restrict kernels, const int64_t width_in, int64_t start,  \
                     int64_t stop, const int omit, T *restrict out,                     \
                     double *restrict block_out) {                                      \
        const int64_t width = WIDTH;                                                    \
        (void)width_in;                                                                 \
        const fs_vec zero = fs_splat(0.0), one = fs_splat(1.0);                         \
        fs_vec top = zero, used = zero;                                                 \
        fs_mask nan = (fs_mask)zero, finite = (fs_mask)zero - 1;                        \
        for (int64_t i0 = start; i0 < stop; i0 += FS_LANES) {                           \
            const int64_t count = stop - i0 < FS_LANES ? stop - i0 : FS_LANES;          \
            fs_vec x[FS_MAX_WIDTH];                                                     \
            const fs_mask present = fs_load_##T(kernels, i0, stop, width, x);           \
            const fs_vec m = fs_tile_maxima(x, width);                                  \
            if (count == FS_LANES) {                                                    \
                const fs_vec_##T values = __builtin_convertvector(m, fs_vec_##T);       \
                memcpy(out + i0, &values, sizeof values);                               \
            } else {                                                                    \
                for (int64_t l = 0; l < count; ++l) out[i0 + l] = (T)m[l];              \
            }                                                                           \
            const fs_mask ok = m - m == zero; /* finite */                              \
            finite &= ok | ~present;                                                    \
            const fs_mask counted = omit ? ok & present : present;                      \
            used += fs_select(counted, one, zero);                                      \
            const fs_vec candidate = fs_select(counted, m, zero);                       \
            nan |= candidate != candidate;                                              \
            top = fs_select(candidate > top, candidate, top);                           \
        }                                                                               \
        double block_top = 0.0, block_finite = 1.0;                                     \
        int any_nan = 0;                                                                \
        for (int l = 0; l < FS_LANES; ++l) {                                            \
            any_nan |= nan[l] != 0;                                                     \
            if (top[l] > block_top) block_top = top[l];                                 \
            if (!finite[l]) block_finite = 0.0;                                         \
        }                                                                               \
        block_out[0] = any_nan ? (double)NAN : block_top;                               \
        block_out[1] = block_finite;                                                    \
        block_out[2] = fs_lane_sum(used);                                               \
    }

FS_DEFINE_MAXIMA_BLOCK(fs_maxima_block_f32, float, width_in)
FS_DEFINE_MAXIMA_BLOCK(fs_maxima_block_f64, double, width_in)
FS_DEFINE_MAXIMA_BLOCK(fs_maxima_block9_f32, float, 9)
FS_DEFINE_MAXIMA_BLOCK(fs_maxima_block9_f64, double, 9)

#define FS_DEFINE_MAXIMA(NAME, BLOCK, BLOCK9, T)                                         \
    int NAME(const T *kernels, int64_t n, int64_t width, int64_t first, int64_t last,   \
             int32_t omit, T *out, double *block_out, const void *caller_fenv) {        \
        if (width < 1 || width > FS_MAX_WIDTH) return 1;                                \
        fenv_t own;                                                                     \
        fegetenv(&own);                                                                 \
        fesetenv((const fenv_t *)caller_fenv);                                          \
        for (int64_t b = first; b < last; ++b) {                                        \
            const int64_t start = b * FS_BLOCK;                                         \
            const int64_t stop = start + FS_BLOCK < n ? start + FS_BLOCK : n;           \
            if (width == 9)                                                             \
                BLOCK9(kernels, width, start, stop, omit, out, block_out + 3 * b);      \
            else                                                                        \
                BLOCK(kernels, width, start, stop, omit, out, block_out + 3 * b);       \
        }                                                                               \
        fesetenv(&own);                                                                 \
        return 0;                                                                       \
    }

FS_DEFINE_MAXIMA(fs_maxima_f32, fs_maxima_block_f32, fs_maxima_block9_f32, float)
FS_DEFINE_MAXIMA(fs_maxima_f64, fs_maxima_block_f64, fs_maxima_block9_f64, double)

#define FS_DEFINE_COUNT_SPARSE(NAME, T)                                                  \
    int NAME(const T *maxima, int64_t n, int64_t first, int64_t last, double threshold, \
             int32_t strict, int32_t all_sparse, int32_t omit, double *block_sparse,    \
             const void *caller_fenv) {                                                 \
        fenv_t own;                                                                     \
        fegetenv(&own);                                                                 \
        fesetenv((const fenv_t *)caller_fenv);                                          \
        for (int64_t b = first; b < last; ++b) {                                        \
            const int64_t start = b * FS_BLOCK;                                         \
            const int64_t stop = start + FS_BLOCK < n ? start + FS_BLOCK : n;           \
            int64_t sparse = 0;                                                         \
            for (int64_t i = start; i < stop; ++i) {                                    \
                const double m = maxima[i];                                             \
                const int below = strict ? m < threshold : m <= threshold;              \
                const int ok = !omit || m - m == 0.0;                                   \
                sparse += ok && (below || all_sparse);                                  \
            }                                                                           \
            block_sparse[b] = (double)sparse;                                           \
        }                                                                               \
        fesetenv(&own);                                                                 \
        return 0;                                                                       \
    }

FS_DEFINE_COUNT_SPARSE(fs_count_sparse_f32, float)
FS_DEFINE_COUNT_SPARSE(fs_count_sparse_f64, double)

/* Sum of the block rows, in block order: out[j] = sum_b partials[b][j]. */
void fs_reduce(const double *partials, int64_t n_blocks, int64_t stride, double *out) {
    for (int64_t j = 0; j < stride; ++j) out[j] = 0.0;
    for (int64_t b = 0; b < n_blocks; ++b)
        for (int64_t j = 0; j < stride; ++j) out[j] += partials[b * stride + j];
}
