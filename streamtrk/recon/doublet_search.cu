// The candidate search of graph construction (streamtrk/recon/graph.py) as kernels, one
// thread per (inner hit, layer pair) query: doublet_candidates counts each query's
// candidates (the slots of its bins, for the work budget, before any is searched),
// doublet_count its edges, doublet_fill writes them from the exclusive prefix sum of the
// counts. A query visits its
// bins [b_lo, b_hi] of the outer layer and, in each, the slots of its phi window; the cuts
// and the features are those of CandidateSearch.run, operation by operation in double
// precision (compile with --fmad=false: no fused multiply-adds, so every decision is
// NumPy's). Edges come out in query, bin, slot order, the NumPy path's order.
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

#define SEARCH_ARGS                                                                          \
    qi, ri, zi, row0, b_lo, b_hi, p_lo, p_hi, reach, centre, cell_start, hit_of, r_sorted,  \
        phi_sorted, z_sorted, r, eta0, sigma, sigma_z, sigma_r, nphi, slope, phi_tolerance, \
        z0_max, z0_sigmas, z0_lever_max, z0_limit, deta_max

// Edges of query q: counted (FILL false) or written from out_start on (FILL true).
template <bool FILL>
__device__ long long search(long long q, SEARCH_PARAMS, long long out_start, long long *ei,
                            long long *ej, float *features) {
    const long long i = qi[q];
    const double r_i = ri[q], z_i = zi[q];
    long long n = 0;
    for (long long b = b_lo[q]; b <= b_hi[q]; ++b) {
        const long long row = (row0[q] + b) * (2 * nphi);
        const long long end = cell_start[row + p_hi[q] + 1];
        for (long long pos = cell_start[row + p_lo[q]]; pos < end; ++pos) {
            const double dr = r_sorted[pos] - r_i;
            if (!(dr > 0)) continue;
            const double dphi = phi_sorted[pos] - centre[q];
            if (!(fabs(dphi) <= fmin(slope * dr + phi_tolerance, PHI_CAP))) continue;
            const double dz = z_sorted[pos] - z_i;
            const double z0 = z_i - r_i * dz / dr;
            if (!(fabs(z0) <= reach[q])) continue;
            const long long j = hit_of[pos];
            const double deta = asinh(dz / dr) - eta0[j];
            const double a = sigma_z[i] * r[j] / dr, c = sigma_z[j] * r[i] / dr;
            const double d = sigma_r[i] * dz * r[j] / (dr * dr);
            const double e = sigma_r[j] * dz * r[i] / (dr * dr);
            const double error = sqrt(a * a + c * c + d * d + e * e);
            const double sig = fmin(error, z0_lever_max * fmax(sigma[i], sigma[j]));
            const double z0_cut = fmin(z0_max + z0_sigmas * sig, z0_limit);
            if (!(fabs(z0) <= z0_cut && fabs(deta) <= deta_max)) continue;
            if (FILL) {
                const long long k = out_start + n;
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
            ++n;
        }
    }
    return n;
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

extern "C" __global__ void doublet_count(SEARCH_PARAMS, long long *counts) {
    FOR_EACH_THREAD(q, n_queries) {
        counts[q] = search<false>(q, n_queries, SEARCH_ARGS, 0, 0, 0, 0);
    }
}

extern "C" __global__ void doublet_fill(SEARCH_PARAMS, const long long *start, long long *ei,
                                        long long *ej, float *features) {
    FOR_EACH_THREAD(q, n_queries) {
        search<true>(q, n_queries, SEARCH_ARGS, start[q], ei, ej, features);
    }
}
