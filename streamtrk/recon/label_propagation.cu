// Min-label propagation with pointer jumping (streamtrk/recon/tracks.py, _propagate) as two
// kernels an iteration, where the array path launches eight: propagate_labels, a thread
// per edge, gives each end the smaller label of the two (read from the iteration's labels,
// written by atomic minimum into their copy); jump_labels, a thread per node, replaces a
// node's label by its label's label's label, in place. Every label stays a node of its own
// component and no larger than the node (so the fixed point, each component labelled by
// its smallest node, is the array path's), whatever order the threads run in.
//
// streamtrk/recon/kernels.py puts its PRELUDE (FOR_EACH_THREAD, the host form) first.

#ifdef STREAMTRK_HOST
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
