// Edge pruning (streamtrk/recon/prune.py) as kernels. edge_geometry, a thread per edge:
// what the cuts read (prune.edge_geometry) and whether the edge is within its layer pair's
// doublet windows. The triplet search, one thread per inner edge a, over the outer edges b
// of its theta window (prepared by triplet_candidates): triplet_flags marks has_out[a] and
// has_in[b] for every compatible triplet (a, b); quadruplet_ends marks keep[b] when a has a
// compatible inner neighbour and keep[a] when b has a compatible outer one. The cuts are
// those of compatible_triplets, operation by operation in float32 against the float64
// windows (compile with --fmad=false). Threads only ever write 1, so concurrent writes to
// one flag agree.
//
// streamtrk/recon/kernels.py puts its PRELUDE (FOR_EACH_THREAD, the host form) first.

#define TRIPLET_PARAMS                                                                       \
    long long n_queries, const long long *a_ids, const long long *lo, const long long *hi,   \
        const long long *b_ids, const long long *pair, const long long *lay_j,               \
        const float *theta, const float *k2, const float *dx, const float *dy, const float *c, \
        const double *w_th, const double *w_dk, const double *w_k, long long n_layers

#define TRIPLET_ARGS pair, lay_j, theta, k2, dx, dy, c, w_th, w_dk, w_k, n_layers

// Whether inner edge a and outer edge b (sharing a hit) form a compatible triplet.
__device__ bool compatible(long long a, long long b, const long long *pair,
                           const long long *lay_j, const float *theta, const float *k2,
                           const float *dx, const float *dy, const float *c, const double *w_th,
                           const double *w_dk, const double *w_k, long long n_layers) {
    const long long tr = pair[a] * n_layers + lay_j[b];
    const float dtheta = theta[b] - theta[a];
    const float dk2 = k2[b] - k2[a];
    if (!(fabsf(dtheta) <= w_th[tr] && fabsf(dk2) <= w_dk[tr])) return false;
    const float sx = dx[a] + dx[b], sy = dy[a] + dy[b];
    const float kappa =
        2.0f * (dx[a] * dy[b] - dy[a] * dx[b]) / (c[a] * c[b] * sqrtf(sx * sx + sy * sy));
    return fabsf(kappa) <= w_k[tr];
}

extern "C" __global__ void triplet_flags(TRIPLET_PARAMS, unsigned char *has_in,
                                         unsigned char *has_out) {
    FOR_EACH_THREAD(q, n_queries) {
        const long long a = a_ids[q];
        bool any = false;
        for (long long p = lo[q]; p < hi[q]; ++p) {
            const long long b = b_ids[p];
            if (compatible(a, b, TRIPLET_ARGS)) {
                has_in[b] = 1;
                any = true;
            }
        }
        if (any) has_out[a] = 1;
    }
}

extern "C" __global__ void quadruplet_ends(TRIPLET_PARAMS, const unsigned char *has_in,
                                           const unsigned char *has_out, unsigned char *keep) {
    FOR_EACH_THREAD(q, n_queries) {
        const long long a = a_ids[q];
        bool a_kept = false;
        for (long long p = lo[q]; p < hi[q]; ++p) {
            const long long b = b_ids[p];
            if (compatible(a, b, TRIPLET_ARGS)) {
                if (has_in[a]) keep[b] = 1;
                if (has_out[b]) a_kept = true;
            }
        }
        if (a_kept) keep[a] = 1;
    }
}

// Per edge (hits ei, ej; per hit x, y, z, r and folded layer lay): prune.edge_geometry's
// quantities, operation by operation in float32, and usable: |k2| and |z0| within the
// pair's windows (float64 tables k2_max, z0_max).
extern "C" __global__ void edge_geometry(long long n_edges, const long long *ei,
                                         const long long *ej, const float *x, const float *y,
                                         const float *z, const float *r, const long long *lay,
                                         long long n_layers, const double *k2_max,
                                         const double *z0_max, long long *pair, long long *lay_j,
                                         float *theta, float *k2, float *z0, float *dx,
                                         float *dy, float *c, bool *usable) {
    FOR_EACH_THREAD(e, n_edges) {
        const long long i = ei[e], j = ej[e];
        const float xi = x[i], xj = x[j], yi = y[i], yj = y[j];
        const float ri = r[i], rj = r[j], zi = z[i], zj = z[j];
        const float ddx = xj - xi, ddy = yj - yi, dz = zj - zi, dr = rj - ri;
        const float cc = sqrtf(ddx * ddx + ddy * ddy);
        const long long p = lay[i] * n_layers + lay[j];
        const float kk = 2.0f * (xi * yj - yi * xj) / (ri * rj * cc);
        const float zz = zi - ri * dz / dr;
        pair[e] = p;
        lay_j[e] = lay[j];
        theta[e] = atan2f(dr, dz);
        k2[e] = kk;
        z0[e] = zz;
        dx[e] = ddx;
        dy[e] = ddy;
        c[e] = cc;
        usable[e] = fabsf(kk) <= k2_max[p] && fabsf(zz) <= z0_max[p];
    }
}
