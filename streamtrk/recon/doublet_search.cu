// The candidate search of graph construction (streamtrk/recon/graph.py) as kernels.
// hit_cells, a thread per hit: whether it is on its layer and its grid cells. A thread per
// (inner hit, layer pair) query: doublet_queries gives each query its windows
// (prepare_search's queries: z0 reach, bins, phi bins), doublet_candidates counts its
// candidates (the slots of its phi window in each of its bins [b_lo, b_hi] of the outer
// layer: for the work budget, before any is searched). Then a thread per candidate, the
// candidates numbered in query, bin, slot order (a query's hundred candidates no longer
// hold up the warp of its neighbours' few): doublet_flags marks the edges, doublet_fill
// writes them from the flags' prefix sum, in the same order: the NumPy path's. The cuts
// and the features are those of CandidateSearch.run, operation by operation in double
// precision (compile with --fmad=false: no fused multiply-adds, so every decision is
// NumPy's).
//
// streamtrk/recon/kernels.py puts its PRELUDE (FOR_EACH_THREAD, the host form) first.

#define PHI_CAP 3.1415926535897927  // graph.PHI_CAP: the double just under numpy.pi

#define SEARCH_PARAMS                                                                       \
    long long n_queries, const long long *qi, const double *ri, const double *zi,           \
        const long long *row0, const long long *b_lo, const long long *b_hi,                \
        const long long *p_lo, const long long *p_hi, const double *reach,                  \
        const double *centre, const long long *cell_start, const long long *hit_of,         \
        const double *r_sorted, const double *phi_sorted, const double *z_sorted,           \
        const double *r, const double *eta0, const double *sigma, const double *sigma_z,    \
        const double *sigma_r, long long nphi, double slope, double phi_tolerance,          \
        double z0_max, double z0_sigmas, double z0_lever_max, double z0_limit, double deta_max

#define SEARCH_ARGS                                                                         \
    n_queries, qi, ri, zi, row0, b_lo, b_hi, p_lo, p_hi, reach, centre, cell_start, hit_of, \
        r_sorted, phi_sorted, z_sorted, r, eta0, sigma, sigma_z, sigma_r, nphi, slope,      \
        phi_tolerance, z0_max, z0_sigmas, z0_lever_max, z0_limit, deta_max

// Whether slot pos is an edge of query q (the cuts of CandidateSearch.run); when FILL, its
// hits and features written as edge k.
template <bool FILL>
__device__ bool edge(long long q, long long pos, SEARCH_PARAMS, long long k, long long *ei,
                     long long *ej, float *features) {
    const long long i = qi[q];
    const double r_i = ri[q], z_i = zi[q];
    const double dr = r_sorted[pos] - r_i;
    if (!(dr > 0)) return false;
    const double dphi = phi_sorted[pos] - centre[q];
    if (!(fabs(dphi) <= fmin(slope * dr + phi_tolerance, PHI_CAP))) return false;
    const double dz = z_sorted[pos] - z_i;
    const double z0 = z_i - r_i * dz / dr;
    if (!(fabs(z0) <= reach[q])) return false;
    const long long j = hit_of[pos];
    const double deta = asinh(dz / dr) - eta0[j];
    const double a = sigma_z[i] * r[j] / dr, c = sigma_z[j] * r[i] / dr;
    const double d = sigma_r[i] * dz * r[j] / (dr * dr);
    const double e = sigma_r[j] * dz * r[i] / (dr * dr);
    const double error = sqrt(a * a + c * c + d * d + e * e);
    const double sig = fmin(error, z0_lever_max * fmax(sigma[i], sigma[j]));
    const double z0_cut = fmin(z0_max + z0_sigmas * sig, z0_limit);
    if (!(fabs(z0) <= z0_cut && fabs(deta) <= deta_max)) return false;
    if (FILL) {
        ei[k] = i;
        ej[k] = j;
        float *f = features + 6 * k;
        f[0] = (float)(dr / 100.0);
        f[1] = (float)(dphi / 0.01);
        f[2] = (float)(dz / 100.0);
        f[3] = (float)(deta / 0.1);
        f[4] = (float)((dphi / dr) / slope);
        f[5] = (float)(z0 / z0_limit);
    }
    return true;
}

// Candidate t's query (the one whose candidates, numbered from cand_start[q], end past t)
// into *q, and its slot: the candidates of a query are its bins' slots, bin after bin.
__device__ long long slot_of(long long t, const long long *cand_start, SEARCH_PARAMS,
                             long long *q) {
    long long lo = 0, hi = n_queries - 1;
    while (lo < hi) {
        const long long mid = lo + (hi - lo) / 2;
        if (cand_start[mid + 1] > t) hi = mid;
        else lo = mid + 1;
    }
    *q = lo;
    long long k = t - cand_start[lo];
    for (long long b = b_lo[lo]; b <= b_hi[lo]; ++b) {
        const long long row = (row0[lo] + b) * (2 * nphi);
        const long long first = cell_start[row + p_lo[lo]];
        const long long n = cell_start[row + p_hi[lo] + 1] - first;
        if (k < n) return first + k;
        k -= n;
    }
    return -1;  // t past the last candidate: none
}

extern "C" __global__ void doublet_candidates(SEARCH_PARAMS, long long *counts) {
    FOR_EACH_THREAD(q, n_queries) {
        long long n = 0;
        for (long long b = b_lo[q]; b <= b_hi[q]; ++b) {
            const long long row = (row0[q] + b) * (2 * nphi);
            n += cell_start[row + p_hi[q] + 1] - cell_start[row + p_lo[q]];
        }
        counts[q] = n;
    }
}

// Per candidate t, 1 where it is an edge (cand_start: each query's first candidate, then
// their total).
extern "C" __global__ void doublet_flags(long long n_candidates, const long long *cand_start,
                                         SEARCH_PARAMS, unsigned char *flags) {
    FOR_EACH_THREAD(t, n_candidates) {
        long long q;
        const long long pos = slot_of(t, cand_start, SEARCH_ARGS, &q);
        flags[t] = pos >= 0 && edge<false>(q, pos, SEARCH_ARGS, 0, 0, 0, 0);
    }
}

// The edges, candidate t's (where flagged) as edge edge_start[t] (the edges of the
// candidates before it).
extern "C" __global__ void doublet_fill(long long n_candidates, const long long *cand_start,
                                        SEARCH_PARAMS, const unsigned char *flags,
                                        const long long *edge_start, long long *ei, long long *ej,
                                        float *features) {
    FOR_EACH_THREAD(t, n_candidates) {
        if (flags[t]) {
            long long q;
            const long long pos = slot_of(t, cand_start, SEARCH_ARGS, &q);
            if (pos >= 0) edge<true>(q, pos, SEARCH_ARGS, edge_start[t], ei, ej, features);
        }
    }
}

// A coordinate's bin on layer lay, as graph._bin_of: clipped to [0, nb - 1].
__device__ long long bin_of(double u, const double *u_min, const double *u_max, long long lay,
                            long long nb) {
    const double frac = (u - u_min[lay]) / (u_max[lay] - u_min[lay]);
    return (long long)numpy_min(numpy_max(floor(frac * nb), 0.0), (double)(nb - 1));
}

// Per hit on its layer's surface, its queries (the hit, an outer layer): one per layer pair
// of its layer (pair_start[lay] to pair_start[lay + 1], their outer layers in pair_outer)
// whose outer layer holds a hit of the hit's event, in the grid (its layer_cells cells from
// cell_start, (event, layer) on, are not empty). Their number, or with FILL, the queries
// written from query k on.
template <bool FILL>
__device__ long long hit_queries(long long h, const bool *on, const long long *event,
                                 const long long *lay0, const long long *cell_start,
                                 const long long *pair_start, const long long *pair_outer,
                                 long long n_layers, long long layer_cells, long long k,
                                 long long *qi, long long *outer) {
    if (!on[h]) return 0;
    const long long lay = lay0[h], rows = event[h] * n_layers;
    long long n = 0;
    for (long long p = pair_start[lay]; p < pair_start[lay + 1]; ++p) {
        const long long o = pair_outer[p], first = (rows + o) * layer_cells;
        if (cell_start[first + layer_cells] > cell_start[first]) {
            if (FILL) {
                qi[k + n] = h;
                outer[k + n] = o;
            }
            ++n;
        }
    }
    return n;
}

#define QUERY_PARAMS                                                                        \
    long long n_hits, const bool *on, const long long *event, const long long *lay0,       \
        const long long *cell_start, const long long *pair_start,                           \
        const long long *pair_outer, long long n_layers, long long layer_cells

// Per hit, how many queries it makes (graph.query_pairs).
extern "C" __global__ void query_counts(QUERY_PARAMS, long long *counts) {
    FOR_EACH_THREAD(h, n_hits) {
        counts[h] = hit_queries<false>(h, on, event, lay0, cell_start, pair_start, pair_outer,
                                       n_layers, layer_cells, 0, 0, 0);
    }
}

// Per hit, its queries, from query_start[h] (the queries of the hits before it) on.
extern "C" __global__ void query_fill(QUERY_PARAMS, const long long *query_start, long long *qi,
                                      long long *outer) {
    FOR_EACH_THREAD(h, n_hits) {
        hit_queries<true>(h, on, event, lay0, cell_start, pair_start, pair_outer, n_layers,
                          layer_cells, query_start[h], qi, outer);
    }
}

// Per query (inner hit qi, outer layer), as prepare_search's queries after the queries of
// layers without a hit are dropped, operation by operation: its z0 reach, its outer
// layer's range of z (barrel) or r (disk) on lines from the hit to |z0| <= reach
// (graph._barrel_range, graph._disk_range) and their bins, the phi window's half-width and
// phi bins (moved up by n_phi, and its centre by 2 pi, when it would start below 0), its
// grid row, and b_hi b_lo - 1 where its bins hold no hit. floats: 4 rows of n_queries (ri,
// zi, reach, centre); ints: 5 rows (row0, b_lo, b_hi, p_lo, p_hi). Tables per layer:
// barrel, r, z, u_min, u_max, sigma_z, sigma.
extern "C" __global__ void doublet_queries(
    long long n_queries, const long long *qi, const long long *outer, const double *r,
    const double *z, const long long *lay0, const long long *event, const double *phi_p,
    const long long *cell_start, const bool *t_barrel, const double *t_r, const double *t_z,
    const double *t_u_min, const double *t_u_max, const double *t_sigma_z,
    const double *t_sigma, long long n_layers, long long nb, long long nphi, double m,
    double z0_lever_max, double z0_max, double z0_sigmas, double z0_limit, double slope,
    double phi_tolerance, double to_bin, double two_pi, double *floats, long long *ints) {
    FOR_EACH_THREAD(q, n_queries) {
        const long long i = qi[q], o = outer[q], inner = lay0[i];
        const bool ob = t_barrel[o];
        const double ri = r[i], zi = z[i], r_out = t_r[o], r_near = r_out - m;
        const double dr_b = numpy_max(r_near - ri, 1.0);
        const double sig =
            ob && t_barrel[inner]
                ? hypot(t_sigma_z[inner] * r_near / dr_b, t_sigma_z[o] * ri / dr_b)
                : z0_lever_max * numpy_max(t_sigma[inner], t_sigma[o]);
        const double reach = numpy_min(z0_max + z0_sigmas * sig, z0_limit);
        // graph._barrel_range: the barrel's z range at r_out -+ m; _disk_range: the disk's r range.
        double lo = 0.0, hi = 0.0;
        for (int k = 0; k < 2; ++k) {
            const double s = (k == 0 ? r_out - m : r_out + m) / ri;
            const double za = -reach + (zi + reach) * s, zb = reach + (zi - reach) * s;
            lo = k == 0 ? numpy_min(za, zb) : numpy_min(lo, numpy_min(za, zb));
            hi = k == 0 ? numpy_max(za, zb) : numpy_max(hi, numpy_max(za, zb));
        }
        const bool far = fabs(zi) > reach;
        const double den_a = far ? zi + reach : 1.0, den_b = far ? zi - reach : 1.0;
        const double ra = ri * (t_z[o] + reach) / den_a, rb = ri * (t_z[o] - reach) / den_b;
        const double r_lo = (far ? numpy_max(numpy_min(ra, rb), ri) : ri) - m;
        const double r_hi = (far ? numpy_min(numpy_max(ra, rb), t_u_max[o]) : t_u_max[o]) + m;
        const double u_lo = (ob ? lo : r_lo) - 1.0, u_hi = (ob ? hi : r_hi) + 1.0;
        const double dr_max = (ob ? r_out + m : u_hi) - ri;
        const double w = numpy_min(slope * numpy_max(dr_max, 0.0) + phi_tolerance, PHI_CAP);
        const long long b_lo = bin_of(u_lo, t_u_min, t_u_max, o, nb);
        long long b_hi = bin_of(u_hi, t_u_min, t_u_max, o, nb);
        const long long row0 = (event[i] * n_layers + o) * nb;
        const long long first = (row0 + b_lo) * (2 * nphi), last = (row0 + b_hi + 1) * (2 * nphi);
        if (!(cell_start[last] - cell_start[first] > 0)) b_hi = b_lo - 1;
        long long p_lo = (long long)floor((phi_p[i] - w) * to_bin);
        long long p_hi = (long long)floor((phi_p[i] + w) * to_bin);
        const bool low = p_lo < 0;
        p_lo += low ? nphi : 0;
        p_hi += low ? nphi : 0;
        if (p_hi > 2 * nphi - 1) p_hi = 2 * nphi - 1;
        floats[q] = ri;
        floats[n_queries + q] = zi;
        floats[2 * n_queries + q] = reach;
        floats[3 * n_queries + q] = phi_p[i] + (low ? two_pi : 0.0);
        ints[q] = row0;
        ints[n_queries + q] = b_lo;
        ints[2 * n_queries + q] = b_hi;
        ints[3 * n_queries + q] = p_lo;
        ints[4 * n_queries + q] = p_hi;
    }
}

// Per hit (r, z, phi + pi, event, layer or -1), as graph.hit_cells: whether it is on its
// layer's surface (within near of it, its u within near of the layer's range, r at least
// min_r), its two grid cells (event, layer, u bin, phi bin; the copy at phi + 2 pi n_phi
// bins on), n_cells where it is not on, into cell[h] and cell[n_hits + h], and its layer
// (0 where unknown).
extern "C" __global__ void hit_cells(long long n_hits, const double *r, const double *z,
                                     const double *phi_p, const long long *event,
                                     const long long *layer, const bool *t_barrel,
                                     const double *t_r, const double *t_z,
                                     const double *t_u_min, const double *t_u_max,
                                     long long n_layers, long long nb, long long nphi,
                                     long long n_cells, double near, double min_r,
                                     double to_bin, bool *on, long long *cell,
                                     long long *lay0) {
    FOR_EACH_THREAD(h, n_hits) {
        const long long lay = layer[h] >= 0 ? layer[h] : 0;
        const bool barrel = t_barrel[lay];
        const double u = barrel ? z[h] : r[h];
        const double off = fabs(barrel ? r[h] - t_r[lay] : z[h] - t_z[lay]);
        const bool ok = layer[h] >= 0 && off <= near && u >= t_u_min[lay] - near &&
                        u <= t_u_max[lay] + near && r[h] >= min_r;
        long long first = n_cells, second = n_cells;
        if (ok) {
            const long long p = (long long)(phi_p[h] * to_bin);
            const long long pbin = p < nphi - 1 ? p : nphi - 1;
            const long long row =
                ((event[h] * n_layers + lay) * nb + bin_of(u, t_u_min, t_u_max, lay, nb)) *
                (2 * nphi);
            first = row + pbin;
            second = row + pbin + nphi;
        }
        on[h] = ok;
        cell[h] = first;
        cell[n_hits + h] = second;
        lay0[h] = lay;
    }
}
