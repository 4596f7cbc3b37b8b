// Track building's kernels (streamtrk/recon/tracks.py).
//
// Min-label propagation with pointer jumping (components_label_propagation) as one kernel
// an iteration, where the array path launches eight: propagate_labels, a thread per edge,
// in place over all the nodes, gives each end the smaller label of the two and then its
// label's label's label (atomic minimum), and sets *changed where it lowers any. Every
// label stays a node of its own component and no larger than the node, whatever order the
// threads run in; an iteration that lowers none read labels that did not change, equal
// at both ends of every edge: each component labelled by its smallest node, the array
// path's fixed point.
//
// Junction resolution (_junction_edges, its mutual-best choice _mutual_best) as two kernels
// a pass over all the edges for the arrays' thirty-odd operations and two compactions a
// pass: junction_codes, a thread per edge, gives each edge taking part its code (score
// descending, then index) and takes the smallest code at each of its ends (atomic
// minimum); junction_take, a thread per edge, chooses the edges whose code is the smallest
// at both ends. Integers only past the score's bits: the arrays' choice.
//
// Stitching (stitch_edges) as four kernels, the same codes (piece_ends, stitch_ends,
// stitch_candidates, stitch_take; below) for its sixty-odd array operations and the
// compactions between them.
//
// Joining pieces over a layer's two hits (join_doubles) as five kernels (piece_links,
// double_exit_count, double_exits, double_codes, double_take; below) for its seventy-odd
// array operations: the diamonds' second crossings go into a hash table, which the first
// crossings look up, and the same codes choose.
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
inline unsigned long long atomicAdd(unsigned long long *address, unsigned long long value) {
    const unsigned long long old = *address;
    *address = old + value;
    return old;
}
inline unsigned long long atomicCAS(unsigned long long *address, unsigned long long compare,
                                    unsigned long long value) {
    const unsigned long long old = *address;
    if (old == compare) *address = value;
    return old;
}
#endif

extern "C" __global__ void propagate_labels(long long n_edges, const long long *a,
                                            const long long *b, long long *labels,
                                            int *changed) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long la = labels[a[e]], lb = labels[b[e]], low = la < lb ? la : lb;
        const long long ends[2] = {a[e], b[e]};
        bool lowered = false;
        for (int k = 0; k < 2; ++k) {
            lowered = atomicMin(&labels[ends[k]], low) > low || lowered;
            const long long jump = labels[labels[labels[ends[k]]]];
            lowered = atomicMin(&labels[ends[k]], jump) > jump || lowered;
        }
        if (lowered) *changed = 1;
    }
}

#define NO_CODE 9223372036854775807LL  // int64's largest: no candidate

// The rank of a float32 score s among floats, offset by 2^31 (-0.0 as 0.0, subnormals kept:
// the score's bits, no float arithmetic that -ftz=true would flush); a NaN's is above all.
__device__ inline long long score_rank(float s) {
    int bits = __float_as_int(s);
    if ((bits & 0x7FFFFFFF) == 0) bits = 0;  // -0.0 as 0.0
    return (long long)(bits ^ ((bits >> 31) & 0x7FFFFFFF)) + 2147483648LL;
}

// Whether score s is above the threshold of rank threshold_rank (score_rank of the float32
// threshold, from the host): numpy's s > threshold in float32, subnormals included.
__device__ inline bool above(float s, long long threshold_rank) {
    return (__float_as_int(s) & 0x7FFFFFFF) <= 0x7F800000 && score_rank(s) > threshold_rank;
}

// The code of an item of float32 score s and tie-break key (below 2^31) in a mutual-best
// choice: (2^32 - 1 - rank) * 2^31 + key, so the smallest code is the best score, then the
// smallest key.
__device__ inline long long score_code(float s, long long key) {
    return ((4294967295LL - score_rank(s)) << 31) | key;
}

// A pass of junction resolution (_junction_edges) over the graph's edges: those scored
// above the threshold (above, by its rank) and not chosen, whose source has no chosen edge
// out and target none in (out_used, in_used), take part. junction_codes: each one's code
// (key: its index, the arrays' order) in code[e] (NO_CODE for the others), the smallest code
// of each source's out-edges into low_out, of each target's in-edges into low_in (both
// filled with NO_CODE first).
extern "C" __global__ void junction_codes(long long n_edges, const long long *src,
                                          const long long *dst, const float *score,
                                          long long threshold_rank,
                                          const unsigned char *chosen,
                                          const unsigned char *out_used,
                                          const unsigned char *in_used, long long *code,
                                          long long *low_out, long long *low_in) {
    FOR_EACH_THREAD(e, n_edges) {
        long long c = NO_CODE;
        if (above(score[e], threshold_rank) && !chosen[e] && !out_used[src[e]] &&
            !in_used[dst[e]]) {
            c = score_code(score[e], e);
            atomicMin(&low_out[src[e]], c);
            atomicMin(&low_in[dst[e]], c);
        }
        code[e] = c;
    }
}

// junction_take: the edges whose code is the smallest at both ends are chosen, and their
// ends used (read by the next pass's junction_codes only).
extern "C" __global__ void junction_take(long long n_edges, const long long *src,
                                         const long long *dst, const long long *code,
                                         const long long *low_out, const long long *low_in,
                                         unsigned char *chosen, unsigned char *out_used,
                                         unsigned char *in_used) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long c = code[e];
        if (c != NO_CODE && low_out[src[e]] == c && low_in[dst[e]] == c) {
            chosen[e] = 1;
            out_used[src[e]] = 1;
            in_used[dst[e]] = 1;
        }
    }
}

// Stitching (stitch_edges) as four kernels over the graph's edges, those scored above the
// threshold (above, by its rank) taking part; an edge's index keeps the arrays' order, so
// no list is compacted. piece_ends, a thread per kept edge: which hits have a kept edge out
// (has_out) and in (has_in); a piece's last hit has one in and none out, its first one out
// and none in, a free hit neither.
extern "C" __global__ void piece_ends(long long n_kept, const long long *src,
                                      const long long *dst, unsigned char *has_out,
                                      unsigned char *has_in) {
    FOR_EACH_THREAD(e, n_kept) {
        has_out[src[e]] = 1;
        has_in[dst[e]] = 1;
    }
}

#define STITCH_PARAMS                                                                       \
    long long n_edges, const long long *src, const long long *dst, const float *score,      \
        long long threshold_rank, const unsigned char *has_out, const unsigned char *has_in
#define STITCH_ARGS n_edges, src, dst, score, threshold_rank, has_out, has_in

__device__ inline bool is_last(long long h, const unsigned char *has_out,
                               const unsigned char *has_in) {
    return has_in[h] && !has_out[h];
}

__device__ inline bool is_first(long long h, const unsigned char *has_out,
                                const unsigned char *has_in) {
    return has_out[h] && !has_in[h];
}

__device__ inline bool is_free(long long h, const unsigned char *has_out,
                               const unsigned char *has_in) {
    return !has_out[h] && !has_in[h];
}

// stitch_ends: the best entry into each free hit from a piece's last hit (its code in
// into[hit]) and the best exit from each free hit to a piece's first hit (out[hit]): the
// smallest code, key the edge's index.
extern "C" __global__ void stitch_ends(STITCH_PARAMS, long long *into, long long *out) {
    FOR_EACH_THREAD(e, n_edges) {
        if (above(score[e], threshold_rank)) {
            const long long a = src[e], b = dst[e];
            if (is_last(a, has_out, has_in) && is_free(b, has_out, has_in))
                atomicMin(&into[b], score_code(score[e], e));
            if (is_free(a, has_out, has_in) && is_first(b, has_out, has_in))
                atomicMin(&out[a], score_code(score[e], e));
        }
    }
}

// The edge a bridge through free hit b leaves by (the best exit's key), -1 where none.
__device__ inline long long exit_of(long long b, const long long *out) {
    return out[b] == NO_CODE ? -1 : (out[b] & 0x7FFFFFFFLL);
}

// stitch_candidates: the candidates of the mutual-best choice, each edge's own code (or
// NO_CODE) in codes[0][e] where it joins a piece's last hit to another piece's first hit,
// and in codes[1][e] where it is a free hit's best entry and the hit's best exit reaches
// another piece (the bridge, scored by the weaker of the two, key n_edges + the free hit:
// after the direct ones, by hit, as in the arrays' list); the smallest code at each
// candidate's source into low_src, at its target into low_dst.
extern "C" __global__ void stitch_candidates(STITCH_PARAMS, const long long *labels,
                                             const long long *into, const long long *out,
                                             long long *direct, long long *bridge,
                                             long long *low_src, long long *low_dst) {
    FOR_EACH_THREAD(e, n_edges) {
        long long d = NO_CODE, g = NO_CODE;
        if (above(score[e], threshold_rank)) {
            const long long a = src[e], b = dst[e];
            if (is_last(a, has_out, has_in) && is_first(b, has_out, has_in) &&
                labels[a] != labels[b]) {
                d = score_code(score[e], e);
                atomicMin(&low_src[a], d);
                atomicMin(&low_dst[b], d);
            } else if (is_last(a, has_out, has_in) && is_free(b, has_out, has_in) &&
                       into[b] == score_code(score[e], e) && exit_of(b, out) >= 0) {
                const long long o = exit_of(b, out), far = dst[o];
                if (labels[a] != labels[far]) {
                    const bool o_weaker = score_rank(score[o]) < score_rank(score[e]);
                    const float weaker = o_weaker ? score[o] : score[e];
                    g = score_code(weaker, n_edges + b);
                    atomicMin(&low_src[a], g);
                    atomicMin(&low_dst[far], g);
                }
            }
        }
        direct[e] = d;
        bridge[e] = g;
    }
}

// stitch_take: the candidates that are the best at both their ends: a direct edge, or a
// bridge's two edges (take: zeros first; only a bridge's entry writes its exit's flag).
extern "C" __global__ void stitch_take(long long n_edges, const long long *src,
                                       const long long *dst, const long long *out,
                                       const long long *direct, const long long *bridge,
                                       const long long *low_src, const long long *low_dst,
                                       unsigned char *take) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long a = src[e], b = dst[e], d = direct[e], g = bridge[e];
        if (d != NO_CODE && low_src[a] == d && low_dst[b] == d) take[e] = 1;
        if (g != NO_CODE) {
            const long long o = exit_of(b, out);
            if (low_src[a] == g && low_dst[dst[o]] == g) {
                take[e] = 1;
                take[o] = 1;
            }
        }
    }
}

// Joining pieces over a layer's two hits (join_doubles): a piece's last hit B1 and another
// piece's first hit B2 are a pair where the graph holds A -> B2 (A: B1's predecessor) and
// B1 -> C (C: B2's successor), both above the threshold. piece_links, a thread per kept
// edge: each hit's predecessor and successor along the pieces (pred, succ: -1 first).
extern "C" __global__ void piece_links(long long n_kept, const long long *src,
                                       const long long *dst, long long *pred, long long *succ) {
    FOR_EACH_THREAD(e, n_kept) {
        succ[src[e]] = dst[e];
        pred[dst[e]] = src[e];
    }
}

#define DOUBLE_PARAMS                                                                        \
    long long n_edges, const long long *src, const long long *dst, const float *score,       \
        long long threshold_rank, const long long *pred, const long long *succ,              \
        const long long *labels, long long n_nodes
#define DOUBLE_ARGS n_edges, src, dst, score, threshold_rank, pred, succ, labels, n_nodes
#define NO_KEY -1LL  // an empty slot of the hash table

// The pair key (B1 x n_nodes + B2) of edge e as a diamond's second crossing B1 -> C (C's
// predecessor B2 a piece's first hit, B1 a piece's last, of another piece), else NO_KEY.
__device__ inline long long exit_key(long long e, DOUBLE_PARAMS) {
    if (!above(score[e], threshold_rank)) return NO_KEY;
    const long long b1 = src[e], b2 = pred[dst[e]];
    if (pred[b1] < 0 || succ[b1] >= 0 || b2 < 0 || pred[b2] >= 0 || labels[b1] == labels[b2])
        return NO_KEY;
    return b1 * n_nodes + b2;
}

// double_exit_count: how many edges are second crossings (*count, zero first), which sizes
// the hash table.
extern "C" __global__ void double_exit_count(DOUBLE_PARAMS, unsigned long long *count) {
    FOR_EACH_THREAD(e, n_edges) {
        if (exit_key(e, DOUBLE_ARGS) != NO_KEY) atomicAdd(count, 1ULL);
    }
}

// The first slot of a key in a table of 2^bits slots (Fibonacci hashing).
__device__ inline long long slot_of(long long key, long long bits) {
    return (long long)(((unsigned long long)key * 11400714819323198485ULL) >> (64 - bits));
}

// double_exits: each second crossing into the hash table (open addressing, linear probing;
// keys NO_KEY and edges NO_CODE first, at most half the slots taken): its pair's key, and
// the smallest edge index of that key (the arrays look up the first).
extern "C" __global__ void double_exits(DOUBLE_PARAMS, long long bits, long long *keys,
                                        long long *edges) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long key = exit_key(e, DOUBLE_ARGS);
        if (key != NO_KEY) {
            const long long mask = (1LL << bits) - 1;
            long long slot = slot_of(key, bits);
            for (;;) {
                const unsigned long long was = atomicCAS(
                    (unsigned long long *)&keys[slot], (unsigned long long)NO_KEY,
                    (unsigned long long)key);
                if ((long long)was == NO_KEY || (long long)was == key) {
                    atomicMin(&edges[slot], e);
                    break;
                }
                slot = (slot + 1) & mask;
            }
        }
    }
}

// double_codes: each edge that is a diamond's first crossing A -> B2 (A's successor B1 a
// piece's last hit, B2 another piece's first) whose pair has a second crossing in the
// table: its code (the weaker crossing's score, key the edge's index: the arrays' order of
// the pairs) in code[e] (NO_CODE for the others), the smallest code at each pair's B1 into
// low_end, at its B2 into low_start (both NO_CODE first).
extern "C" __global__ void double_codes(DOUBLE_PARAMS, long long bits, const long long *keys,
                                        const long long *edges, long long *code,
                                        long long *low_end, long long *low_start) {
    FOR_EACH_THREAD(e, n_edges) {
        long long c = NO_CODE;
        const long long a = src[e], b2 = dst[e], b1 = succ[a];
        if (above(score[e], threshold_rank) && b1 >= 0 && succ[b1] < 0 && succ[b2] >= 0 &&
            pred[b2] < 0 && labels[b1] != labels[b2]) {
            const long long key = b1 * n_nodes + b2, mask = (1LL << bits) - 1;
            long long slot = slot_of(key, bits);
            while (keys[slot] != key && keys[slot] != NO_KEY) slot = (slot + 1) & mask;
            if (keys[slot] == key) {
                const long long x = edges[slot];
                const bool x_weaker = score_rank(score[x]) < score_rank(score[e]);
                c = score_code(x_weaker ? score[x] : score[e], e);
                atomicMin(&low_end[b1], c);
                atomicMin(&low_start[b2], c);
            }
        }
        code[e] = c;
    }
}

// double_take: the pairs whose code is the smallest at both their ends, flagged at their
// first crossing (take: zeros first).
extern "C" __global__ void double_take(long long n_edges, const long long *src,
                                       const long long *dst, const long long *succ,
                                       const long long *code, const long long *low_end,
                                       const long long *low_start, unsigned char *take) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long c = code[e];
        if (c != NO_CODE && low_end[succ[src[e]]] == c && low_start[dst[e]] == c) take[e] = 1;
    }
}

// The fit's cuts (fit_cuts) as one kernel, a thread per track, for the arrays' dozen
// operations: a track of fewer than short_hits hits is dropped where a cut is on and fails,
// chi2 > max_chi2_ndf x ndf (in double: the arrays compare the float32 chi2 with their
// float64 product) or |d0| > max_d0 (in float: the arrays compare the float32 |d0| with
// the bound rounded to a float32); a NaN fails either.
extern "C" __global__ void track_cuts(long long n_tracks, const long long *sizes,
                                      const float *chi2, const int *ndf, const float *d0,
                                      long long short_hits, long long cut_chi2,
                                      double max_chi2_ndf, long long cut_d0, double max_d0,
                                      bool *keep) {
    FOR_EACH_THREAD(t, n_tracks) {
        bool ok = true;
        if (sizes[t] < short_hits) {
            if (cut_chi2) ok = (double)chi2[t] <= max_chi2_ndf * (double)ndf[t];
            const float abs_d0 = d0[t] < 0.0f ? -d0[t] : d0[t];
            if (cut_d0) ok = ok && abs_d0 <= (float)max_d0;
        }
        keep[t] = ok;
    }
}
