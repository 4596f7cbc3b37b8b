// Track building's kernels (streamtrk/recon/tracks.py).
//
// Min-label propagation with pointer jumping (_propagate) as two kernels an iteration, where
// the array path launches eight: propagate_labels, a thread per edge, gives each end the
// smaller label of the two (read from the iteration's labels, written by atomic minimum
// into their copy); jump_labels, a thread per node, replaces a node's label by its label's
// label's label, in place. Every label stays a node of its own component and no larger than
// the node (so the fixed point, each component labelled by its smallest node, is the array
// path's), whatever order the threads run in.
//
// The mutual-best choice of junction resolution and stitching (_mutual_best) as two kernels
// for the arrays' sixteen operations: mutual_best_codes, a thread per edge, gives each edge
// its code (score descending, then index) and takes the smallest code at each of its ends
// (atomic minimum); mutual_best_flags, a thread per edge, marks the edges whose code is
// the smallest at both ends. Integers only past the score's bits: the arrays' choice.
//
// streamtrk/recon/kernels.py puts its PRELUDE (FOR_EACH_THREAD, the host form) first.

#ifdef STREAMTRK_HOST
#include <cstring>
inline int __float_as_int(float f) {
    int bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
}
inline long long atomicMin(long long *address, long long value) {  // one thread at a time
    const long long old = *address;
    if (value < old) *address = value;
    return old;
}
#endif

extern "C" __global__ void propagate_labels(long long n_edges, const long long *a,
                                            const long long *b, const long long *labels,
                                            long long *next) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long la = labels[a[e]], lb = labels[b[e]], low = la < lb ? la : lb;
        atomicMin(&next[a[e]], low);
        atomicMin(&next[b[e]], low);
    }
}

extern "C" __global__ void jump_labels(long long n_nodes, long long *labels) {
    FOR_EACH_THREAD(n, n_nodes) { labels[n] = labels[labels[labels[n]]]; }
}

// Per edge (src -> dst, its float32 score): code = (2^32 - 1 - rank) * 2^31 + e, rank the
// score's order among floats (-0.0 as 0.0; subnormals kept, where -ftz=true would flush the
// result of any float operation) offset by 2^31; the smallest code of each
// source's out-edges into low_out, of each target's in-edges into low_in (both filled with
// the largest int64 first).
extern "C" __global__ void mutual_best_codes(long long n_edges, const long long *src,
                                             const long long *dst, const float *score,
                                             long long *code, long long *low_out,
                                             long long *low_in) {
    FOR_EACH_THREAD(e, n_edges) {
        int bits = __float_as_int(score[e]);  // its bits: no float arithmetic to flush to 0
        if ((bits & 0x7FFFFFFF) == 0) bits = 0;  // -0.0 as 0.0
        const long long rank = (long long)(bits ^ ((bits >> 31) & 0x7FFFFFFF)) + 2147483648LL;
        const long long c = ((4294967295LL - rank) << 31) | e;
        code[e] = c;
        atomicMin(&low_out[src[e]], c);
        atomicMin(&low_in[dst[e]], c);
    }
}

extern "C" __global__ void mutual_best_flags(long long n_edges, const long long *src,
                                             const long long *dst, const long long *code,
                                             const long long *low_out, const long long *low_in,
                                             bool *best) {
    FOR_EACH_THREAD(e, n_edges) {
        best[e] = low_out[src[e]] == code[e] && low_in[dst[e]] == code[e];
    }
}
