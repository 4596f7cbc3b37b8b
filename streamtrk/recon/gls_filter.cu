// The helix fit's kernels (streamtrk/recon/fit.py). circle_distances: fit._distances, a
// thread per hit. circle_turns: fit._on_circle, a thread per track. hit_projections and
// hit_scattering: fit._projections and fit._scattering, a thread per hit.
// track_parameters: fit._parameters, a thread per track.
// karimaki_params and karimaki_circle: fit._karimaki and fit._stepped_circle, a thread per
// track.
// start_circle and start_line: fit._fit_circle and fit._fit_line, a thread per track.
// fit_hits: fit._fit_hits, a thread per hit. hole_counts and hole_rows: fit._holes, a thread
// per track; hole_merge: fit._merged, a thread per track.
// circle_gls_hits and line_gls_hits: the hits' columns of fit._circle_gls and fit._line_gls
// (what gls_gram reads), a thread per hit. gls_solve: fit.gls_step, a thread per track.
// gls_gram: the generalised least-squares sums (fit.gram_arrays), a thread
// per track: a Kalman filter of the scatters' random walk u along
// the track's hits (CSR order) turns the columns [J res] into innovations; divided by their
// standard deviations they are L^-1 [J res] for the hits' covariance V = L L^T, and their
// products summed over the hits are [J res]^T V^-1 [J res]. Operation by operation the NumPy
// path's, which pads the tracks to the longest and loops over the places along them.
//
// hits: per hit, n_cols doubles: the c columns [J res], the variance, the m arms a and the
// m scaled kicks (kick * b) of the scatter sets, at most two, of dim0 and dim1 arms (m =
// dim0 + dim1; dim1 0 for one set).
//
// streamtrk/recon/kernels.py puts its PRELUDE (FOR_EACH_THREAD, the host form) first.

#define GLS_MAX_M 5  // fit.GLS_MAX_STATE
#define GLS_MAX_C 4  // fit.GLS_MAX_COLUMNS
#define PHI_MAX 3.14159250259399414f  // fit.PHI_MAX: the largest float32 below pi

extern "C" __global__ void gls_gram(long long n_tracks, const long long *offsets,
                                    const double *hits, long long n_cols, long long c,
                                    long long dim0, long long dim1, double *gram) {
    const long long m = dim0 + dim1, dims[2] = {dim0, dim1};
    FOR_EACH_THREAD(t, n_tracks) {
        double cov_u[GLS_MAX_M][GLS_MAX_M] = {};  // u's covariance given the hits before
        double est[GLS_MAX_M][GLS_MAX_C] = {};    // u's estimate from the hits before
        double sums[GLS_MAX_C][GLS_MAX_C] = {};
        for (long long h = offsets[t]; h < offsets[t + 1]; ++h) {
            const double *x = hits + h * n_cols, *a = x + c + 1, *kick = x + c + 1 + m;
            double cov_a[GLS_MAX_M], innovation[GLS_MAX_C];
            for (long long i = 0; i < m; ++i) {
                cov_a[i] = 0.0;
                for (long long j = 0; j < m; ++j) cov_a[i] += cov_u[i][j] * a[j];
            }
            double s = 0.0;  // the innovation's variance
            for (long long i = 0; i < m; ++i) s += a[i] * cov_a[i];
            s += x[c];
            for (long long k = 0; k < c; ++k) {
                double seen = 0.0;
                for (long long i = 0; i < m; ++i) seen += a[i] * est[i][k];
                innovation[k] = x[k] - seen;
            }
            const double sd = sqrt(s);
            for (long long k = 0; k < c; ++k) {
                const double wk = innovation[k] / sd;
                for (long long l = 0; l < c; ++l) sums[k][l] += wk * (innovation[l] / sd);
            }
            for (long long i = 0; i < m; ++i) {
                const double gain = cov_a[i] / s;
                for (long long k = 0; k < c; ++k) est[i][k] += gain * innovation[k];
                for (long long j = 0; j < m; ++j) cov_u[i][j] -= gain * cov_a[j];
            }
            long long first = 0;
            for (long long d = 0; d < 2; ++d) {  // the scatter at this hit, one per set
                for (long long i = first; i < first + dims[d]; ++i)
                    for (long long j = first; j < first + dims[d]; ++j)
                        cov_u[i][j] += kick[i] * kick[j];
                first += dims[d];
            }
        }
        for (long long k = 0; k < c; ++k)
            for (long long l = 0; l < c; ++l) gram[(t * c + k) * c + l] = sums[k][l];
    }
}

// fit._distances of one hit (u, v about the centroid, q = u^2 + v^2) and the circle of
// Karimaki's parameters (k, dl, phi: sp, cp its sine and cosine), operation by operation:
// its signed distance, returned, and the distance's derivatives by them into d.
__device__ double circle_distance(double k, double dl, double sp, double cp, double u,
                                  double v, double q, double d[3]) {
    const double across = u * sp - v * cp, along = u * cp + v * sp;
    const double p = k * q / 2 + (1 + k * dl) * across + dl + k * dl * dl / 2;
    const double root = 1 + 2 * k * p;  // numpy.maximum(root, 0): NaN stays NaN
    const double eps = 2 * p / (1 + sqrt(root < 0.0 ? 0.0 : root));
    const double den = 1 + k * eps;
    d[0] = (q / 2 + dl * across + (dl * dl - eps * eps) / 2) / den;
    d[1] = (1 + k * dl) * along / den;
    d[2] = (1 + k * dl + k * across) / den;
    return eps;
}

// Per hit h (of track tid[h]; u, v about the point the parameters are about), its signed
// distance to the track's circle of Karimaki's parameters (kappa, phi, delta) and the
// distance's derivatives by them (fit._distances): out is 4 rows of n_hits (eps, d/dkappa,
// d/dphi, d/ddelta).
extern "C" __global__ void circle_distances(long long n_hits, const long long *tid,
                                            const double *kappa, const double *phi,
                                            const double *delta, const double *u,
                                            const double *v, double *out) {
    FOR_EACH_THREAD(h, n_hits) {
        const long long t = tid[h];
        double d[3];
        out[h] = circle_distance(kappa[t], delta[t], sin(phi[t]), cos(phi[t]), u[h], v[h],
                                 u[h] * u[h] + v[h] * v[h], d);
        for (int k = 0; k < 3; ++k) out[(k + 1) * n_hits + h] = d[k];
    }
}

// fit._wrapped: angle in [-pi, pi).
__device__ double wrapped(double angle) {
    return numpy_mod(angle + PI, 2 * PI) - PI;
}

// Per track t (hits offsets[t] to offsets[t + 1], ordered along it) on its circle of centre
// (xc, yc), as fit._on_circle: per track the sense h of rotation (the sign of the hits'
// turns from one to the next, each within half a turn, summed; -1 clockwise) and the
// perigee's angle theta_p seen from the centre; per hit its turn from the perigee along
// the track and its offset (dx, dy) from the centre. per_hit is 3 rows of n_hits (turn, dx,
// dy), per_track 2 rows of n_tracks (h, theta_p).
extern "C" __global__ void circle_turns(long long n_tracks, const long long *offsets,
                                        const double *xc, const double *yc, const double *hx,
                                        const double *hy, double *per_hit,
                                        double *per_track) {
    const long long n_hits = offsets[n_tracks];
    FOR_EACH_THREAD(t, n_tracks) {
        const long long lo = offsets[t], hi = offsets[t + 1];
        double total = 0.0, last = 0.0;
        for (long long j = lo; j < hi; ++j) {
            const double dx = hx[j] - xc[t], dy = hy[j] - yc[t], angle = atan2(dy, dx);
            per_hit[j] = angle;  // the turn's row holds the angle until the turn is known
            per_hit[n_hits + j] = dx;
            per_hit[2 * n_hits + j] = dy;
            if (j > lo) total += wrapped(angle - last);
            last = angle;
        }
        const double h = total < 0 ? -1.0 : 1.0, theta_p = atan2(-yc[t], -xc[t]);
        per_track[t] = h;
        per_track[n_tracks + t] = theta_p;
        double along = 0.0, first = 0.0;
        for (long long j = lo; j < hi; ++j) {
            const double angle = per_hit[j];
            if (j == lo)
                first = wrapped(h * (angle - theta_p));
            else
                along += wrapped(angle - last);
            per_hit[j] = first + h * along;
            last = angle;
        }
    }
}

// Per hit, as fit._projections: its arc length s from the perigee, the circle normal's
// azimuthal part n_phi, its variance across the circle and the weight of its z for the
// starting line. out is 4 rows of n_hits (s, n_phi, var_c, w_z).
extern "C" __global__ void hit_projections(long long n_hits, const long long *tid,
                                           const double *radius, const double *turn,
                                           const double *dx, const double *dy,
                                           const double *hx, const double *hy,
                                           const double *hz, const double *res_a,
                                           const double *res_b, const bool *barrel,
                                           double min_cos2, double *out) {
    FOR_EACH_THREAD(h, n_hits) {
        const double r = hypot(hx[h], hy[h]), rho = hypot(dx[h], dy[h]);
        const double n_r = (dx[h] * hx[h] + dy[h] * hy[h]) / (rho * r);
        const double n_phi = (dx[h] * hy[h] - dy[h] * hx[h]) / (rho * r);
        const double across = res_b[h] * res_b[h] * (n_r * n_r);
        const double var_c =
            res_a[h] * res_a[h] * numpy_max(n_phi * n_phi, min_cos2) + (barrel[h] ? 0.0 : across);
        const double t = res_b[h] * hz[h] / r;
        const double var_z = barrel[h] ? res_b[h] * res_b[h] : t * t;
        out[h] = radius[tid[h]] * turn[h];
        out[n_hits + h] = n_phi;
        out[2 * n_hits + h] = var_c;
        out[3 * n_hits + h] = 1 / var_z;
    }
}

// Per hit, as fit._scattering (its track's tan(lambda), cosh(eta) and momentum p): the
// variance of its z about the line, the multiple-scattering angle at its layer (Highland,
// as streamtrk.detector.highland, for x0 radiation lengths over the cosine of incidence),
// and its path length from the perigee. out is 3 rows of n_hits (var_z, theta, path).
extern "C" __global__ void hit_scattering(long long n_hits, const long long *tid,
                                          const double *tan_l, const double *cosh,
                                          const double *p, const double *n_phi,
                                          const double *s, const double *res_b,
                                          const double *x0, const bool *barrel,
                                          double min_cos, double pion_mass2, double *out) {
    FOR_EACH_THREAD(h, n_hits) {
        const long long k = tid[h];
        const double z = res_b[h] * tan_l[k] * n_phi[h];
        const double var_z = barrel[h] ? res_b[h] * res_b[h] : z * z + 1e-12;
        const double cos_inc = (barrel[h] ? fabs(n_phi[h]) : fabs(tan_l[k])) / cosh[k];
        const double t = numpy_max(x0[h] / numpy_max(cos_inc, min_cos), 1e-12);
        const double beta = p[k] / sqrt(p[k] * p[k] + pion_mass2);
        const double log_term = numpy_max(1 + 0.038 * log(t / (beta * beta)), 0.0);
        out[h] = var_z;
        out[n_hits + h] = 0.0136 / (beta * p[k]) * sqrt(t) * log_term;
        out[2 * n_hits + h] = s[h] * cosh[k];
    }
}

// Per track, as fit._parameters: the reported parameters of the fit's results (the circle
// after its step: radius, centre, sense h, perigee angle theta_p from the centre; the line
// before its step step_z; the chi-squares; the circle's 3 x 3 and the line's 2 x 2
// covariances), rounded as numpy.ndarray.astype rounds; chi2 at least 0 and phi within
// +-PHI_MAX, as there. floats: 15 rows of n_tracks in the order of fit.PARAMETER_ROWS;
// ints: 2 rows (charge, ndf).
extern "C" __global__ void track_parameters(
    long long n_tracks, const double *radius, const double *xc, const double *yc,
    const double *h, const double *theta_p, const double *tan_l0, const double *z0_0,
    const double *step_z, const double *chi2_c, const double *chi2_z, const double *cov_c,
    const double *cov_z, const long long *sizes, double sign_b, double pt_per_mm,
    float *floats, int *ints) {
    FOR_EACH_THREAD(t, n_tracks) {
        const double tan_l = tan_l0[t] + step_z[2 * t], z0 = z0_0[t] + step_z[2 * t + 1];
        const double *c = cov_c + 9 * t, *cz = cov_z + 4 * t;
        const double s_kappa = sqrt(c[0]), s_phi = sqrt(c[4]), s_d0 = sqrt(c[8]);
        const double cosh = sqrt(1 + tan_l * tan_l);
        const double chi2 = numpy_max(chi2_c[t] + chi2_z[t], 0.0);
        const double row[15] = {
            isfinite(chi2) ? pt_per_mm * radius[t] : nan(""),
            asinh(tan_l),
            wrapped(theta_p[t] + h[t] * PI / 2),
            -h[t] * (radius[t] - hypot(xc[t], yc[t])),
            z0,
            chi2,
            sqrt(c[0]) / pt_per_mm,
            sqrt(cz[0]) / cosh,
            s_phi,
            s_d0,
            sqrt(cz[3]),
            -sign_b * (c[1] / (s_kappa * s_phi)),
            -sign_b * (c[2] / (s_kappa * s_d0)),
            c[5] / (s_phi * s_d0),
            cz[1] / sqrt(cz[0] * cz[3]),
        };
        for (int k = 0; k < 15; ++k) floats[k * n_tracks + t] = (float)row[k];
        const float phi = floats[2 * n_tracks + t];  // float32's nearest to pi is above it
        floats[2 * n_tracks + t] = phi > PHI_MAX ? PHI_MAX : (phi < -PHI_MAX ? -PHI_MAX : phi);
        const long long ndf = 2 * sizes[t] - 5;
        ints[t] = (int)(-h[t] * sign_b);
        ints[n_tracks + t] = (int)(ndf < 1 ? 1 : ndf);
    }
}

// fit._karimaki: Karimaki's (kappa, phi, delta) about the origin of the circle of centre
// (cx, cy) and radius, run in the sense h, into out.
__device__ void karimaki(double cx, double cy, double radius, double h, double out[3]) {
    out[0] = h / radius;
    out[1] = atan2(-h * cx, h * cy);
    out[2] = h * (hypot(cx, cy) - radius);
}

// fit._circle: the circle (centre relative to the point the parameters are about, radius)
// of Karimaki's (kappa, phi, delta), kappa at least 1e-10 in size, into out.
__device__ void karimaki_to_circle(double kappa, double phi, double delta, double out[3]) {
    const double k = (kappa < 0 ? -1.0 : 1.0) * numpy_max(fabs(kappa), 1e-10);
    const double arm = delta + 1 / k;
    out[0] = -arm * sin(phi);
    out[1] = arm * cos(phi);
    out[2] = 1 / fabs(k);
}

// karimaki for each track, into three rows of out.
extern "C" __global__ void karimaki_params(long long n_tracks, const double *cx,
                                           const double *cy, const double *radius,
                                           const double *h, double *out) {
    FOR_EACH_THREAD(t, n_tracks) {
        double params[3];
        karimaki(cx[t], cy[t], radius[t], h[t], params);
        for (int k = 0; k < 3; ++k) out[k * n_tracks + t] = params[k];
    }
}

// fit._stepped_circle: karimaki_to_circle for each track after its step (a row of three),
// into three rows of out.
extern "C" __global__ void karimaki_circle(long long n_tracks, const double *kappa,
                                           const double *phi, const double *delta,
                                           const double *step, double *out) {
    FOR_EACH_THREAD(t, n_tracks) {
        const double *st = step + 3 * t;
        double circle[3];
        karimaki_to_circle(kappa[t] + st[0], phi[t] + st[1], delta[t] + st[2], circle);
        for (int k = 0; k < 3; ++k) out[k * n_tracks + t] = circle[k];
    }
}

#define SMALL_N 3  // the largest system solved in a thread: the circle's 3 parameters

// Solves a x = b in place for the n x n matrix a (n <= SMALL_N) and k right-hand sides, the
// columns of b (k <= SMALL_N): x into b, a overwritten. Gaussian elimination with partial
// pivoting (the first largest pivot), the multipliers by the pivot's reciprocal, then back
// substitution: LAPACK's getrf and getrs (numpy.linalg.solve and inv) but for rounding; a
// singular a gives infinities or NaNs.
__device__ void solve_small(double a[SMALL_N][SMALL_N], double b[SMALL_N][SMALL_N], int n,
                            int k) {
    for (int c = 0; c < n; ++c) {
        int p = c;
        for (int i = c + 1; i < n; ++i)
            if (fabs(a[i][c]) > fabs(a[p][c])) p = i;
        for (int j = 0; j < SMALL_N; ++j) {
            double swap = a[c][j];
            a[c][j] = a[p][j];
            a[p][j] = swap;
            swap = b[c][j];
            b[c][j] = b[p][j];
            b[p][j] = swap;
        }
        const double inverse = 1 / a[c][c];
        for (int i = c + 1; i < n; ++i) {
            const double l = a[i][c] * inverse;
            for (int j = c + 1; j < n; ++j) a[i][j] -= l * a[c][j];
            for (int j = 0; j < k; ++j) b[i][j] -= l * b[c][j];
        }
    }
    for (int j = 0; j < k; ++j) {
        for (int i = n - 1; i >= 0; --i) {
            double sum = b[i][j];
            for (int m = i + 1; m < n; ++m) sum -= a[i][m] * b[m][j];
            b[i][j] = sum / a[i][i];
        }
    }
}

// x = (a + g I)^-1 b for a 3 x 3 matrix a (solve_small).
__device__ void guarded_solve3(const double a[3][3], double g, const double b[3],
                               double x[3]) {
    double m[SMALL_N][SMALL_N] = {}, r[SMALL_N][SMALL_N] = {};
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) m[i][j] = i == j ? a[i][j] + g : a[i][j];
        r[i][0] = b[i];
    }
    solve_small(m, r, 3, 1);
    for (int i = 0; i < 3; ++i) x[i] = r[i][0];
}

// fit._normal_sums of one hit, added: the weighted normal equations' terms (w J_i) J_j and
// (w J_i) res of its three columns.
__device__ void add_normal3(const double col[3], double res, double w, double a[3][3],
                            double b[3]) {
    for (int i = 0; i < 3; ++i) {
        const double wi = w * col[i];
        for (int j = i; j < 3; ++j) a[i][j] += wi * col[j];
        b[i] += wi * res;
    }
    a[1][0] = a[0][1];
    a[2][0] = a[0][2];
    a[2][1] = a[1][2];
}

// fit._fit_circle, a thread per track t (hits offsets[t] to offsets[t + 1], in order; x, y
// as float64 of the float32 positions, w their weights): the weighted centroid, the Kasa
// circle about it (its normal equations, guarded by 1e-12 of the weights' sum), the
// straight line along the chord from the first to the last hit (float32, as the hits),
// the one of smaller weighted squared distances, a Gauss-Newton step from it, each sum over
// the track's hits in their order. out: three rows of n_tracks (xc, yc, R).
extern "C" __global__ void start_circle(long long n_tracks, const long long *offsets,
                                        const double *x, const double *y, const double *w,
                                        double *out) {
    FOR_EACH_THREAD(t, n_tracks) {
        const long long lo = offsets[t], hi = offsets[t + 1];
        double ws = 0.0, wx = 0.0, wy = 0.0;
        for (long long h = lo; h < hi; ++h) {
            ws += w[h];
            wx += w[h] * x[h];
            wy += w[h] * y[h];
        }
        const double mx = wx / ws, my = wy / ws, guard = 1e-12 * ws;
        double a[3][3] = {}, b[3] = {}, kasa_fit[3];
        for (long long h = lo; h < hi; ++h) {  // Kasa: x^2 + y^2 + D x + E y + F = 0
            const double u = x[h] - mx, v = y[h] - my, col[3] = {u, v, 1.0};
            add_normal3(col, u * u + v * v, w[h], a, b);
        }
        for (int i = 0; i < 3; ++i) b[i] = -b[i];
        guarded_solve3(a, guard, b, kasa_fit);
        const double d = kasa_fit[0], e = kasa_fit[1], f = kasa_fit[2];
        const double radius = sqrt(numpy_max(d * d / 4 + e * e / 4 - f, 1e-12));
        const bool hits = hi > lo;  // an empty track's chord is none
        const float chord_x = hits ? (float)x[hi - 1] - (float)x[lo] : 0.0f;
        const float chord_y = hits ? (float)y[hi - 1] - (float)y[lo] : 0.0f;
        const double h = (double)chord_x * e - (double)chord_y * d > 0 ? -1.0 : 1.0;
        double start[2][3], spread[2] = {0.0, 0.0}, dist[3];
        karimaki(-d / 2, -e / 2, radius, h, start[0]);
        start[1][0] = 0.0;
        start[1][1] = (double)atan2f(chord_y, chord_x);
        start[1][2] = 0.0;
        for (int s = 0; s < 2; ++s) {
            const double sp = sin(start[s][1]), cp = cos(start[s][1]);
            for (long long j = lo; j < hi; ++j) {
                const double u = x[j] - mx, v = y[j] - my;
                const double eps = circle_distance(start[s][0], start[s][2], sp, cp, u, v,
                                                   u * u + v * v, dist);
                spread[s] += w[j] * (eps * eps);
            }
        }
        const double *p = spread[0] <= spread[1] ? start[0] : start[1];  // not Kasa's NaN
        const double sp = sin(p[1]), cp = cos(p[1]);
        double jtj[3][3] = {}, jtr[3] = {}, step[3], circle[3];
        for (long long j = lo; j < hi; ++j) {
            const double u = x[j] - mx, v = y[j] - my;
            const double eps = circle_distance(p[0], p[2], sp, cp, u, v, u * u + v * v, dist);
            add_normal3(dist, eps, w[j], jtj, jtr);
        }
        for (int i = 0; i < 3; ++i) jtr[i] = -jtr[i];
        guarded_solve3(jtj, guard, jtr, step);
        const bool finite = isfinite(step[0]) && isfinite(step[1]) && isfinite(step[2]);
        for (int i = 0; i < 3; ++i) step[i] = finite ? step[i] : 0.0;
        karimaki_to_circle(p[0] + step[0], p[1] + step[1], p[2] + step[2], circle);
        out[t] = mx + circle[0];
        out[n_tracks + t] = my + circle[1];
        out[2 * n_tracks + t] = circle[2];
    }
}

// fit._fit_line, a thread per track t (hits offsets[t] to offsets[t + 1]): the weighted
// least-squares line z = z0 + tan_l s, sums over the hits in their order, and the track's
// cosh(eta) and momentum p (pt_per_mm times its circle's radius times cosh, at least 0.01
// GeV). out: four rows of n_tracks (tan_l, z0, cosh, p).
extern "C" __global__ void start_line(long long n_tracks, const long long *offsets,
                                      const double *radius, const double *s, const double *z,
                                      const double *w, double pt_per_mm, double *out) {
    FOR_EACH_THREAD(t, n_tracks) {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, z1 = 0.0, sz = 0.0;
        for (long long h = offsets[t]; h < offsets[t + 1]; ++h) {
            const double ws = w[h] * s[h];
            s0 += w[h] * 1.0;
            s1 += w[h] * 1.0 * s[h];
            s2 += ws * s[h];
            z1 += w[h] * 1.0 * z[h];
            sz += ws * z[h];
        }
        const double den0 = s0 * s2 - s1 * s1;
        const double den = fabs(den0) > 1e-30 ? den0 : 1e-30;
        const double tan_l = (s0 * sz - s1 * z1) / den, cosh = sqrt(1 + tan_l * tan_l);
        out[t] = tan_l;
        out[n_tracks + t] = (z1 - tan_l * s1) / s0;
        out[2 * n_tracks + t] = cosh;
        out[3 * n_tracks + t] = numpy_max(pt_per_mm * radius[t] * cosh, 0.01);
    }
}

// fit._fit_hits, a thread per hit h of the tracks (hit_index[h] in the batch): its
// position, and its layer's (layer[hit]) res_a, res_b and x0 from table (four rows of
// n_layers: res_a, res_b, x0, 1.0 for a barrel), the weight 1 / res_a^2. out: seven rows
// of n_hits (x, y, z, res_a, res_b, x0, weight); barrel: whether its layer is one.
extern "C" __global__ void fit_hits(long long n_hits, const long long *hit_index,
                                    const double *x, const double *y, const double *z,
                                    const long long *layer, const double *table,
                                    long long n_layers, double *out, bool *barrel) {
    FOR_EACH_THREAD(h, n_hits) {
        const long long i = hit_index[h], l = layer[i];
        const double res_a = table[l];
        const double row[7] = {x[i], y[i], z[i], res_a, table[n_layers + l],
                               table[2 * n_layers + l], 1 / (res_a * res_a)};
        for (int k = 0; k < 7; ++k) out[k * n_hits + h] = row[k];
        barrel[h] = table[3 * n_layers + l] != 0.0;
    }
}

// fit._circle_gls's columns, per hit a row of 15 (gls_gram's hits: c = 4, dims 2 and 3):
// the distances' derivatives jac0, jac1, jac2 and eps, the variance var, the arms of the two
// scatter sets (turned: R sin t, cos t; bent: s^2 / 2, s, 1) and their kicks times b
// (theta cosh: cos t, -R sin t; theta |tan_l| / R: 1, -s, s^2 / 2), t the hit's turn.
extern "C" __global__ void circle_gls_hits(long long n_hits, const long long *tid,
                                           const double *jac0, const double *jac1,
                                           const double *jac2, const double *eps,
                                           const double *var, const double *s,
                                           const double *turn, const double *theta,
                                           const double *radius, const double *cosh,
                                           const double *tan_l, double *hits) {
    FOR_EACH_THREAD(h, n_hits) {
        const long long t = tid[h];
        const double big_r = radius[t], sin_t = sin(turn[h]), cos_t = cos(turn[h]);
        const double half_s2 = s[h] * s[h] / 2, r_sin = big_r * sin_t;
        const double turned = theta[h] * cosh[t], bent = theta[h] * fabs(tan_l[t]) / big_r;
        const double row[15] = {
            jac0[h], jac1[h], jac2[h], eps[h], var[h],
            r_sin, cos_t, half_s2, s[h], 1.0,
            turned * cos_t, turned * (-big_r * sin_t), bent * 1.0, bent * -s[h], bent * half_s2,
        };
        for (int k = 0; k < 15; ++k) hits[15 * h + k] = row[k];
    }
}

// fit._line_gls's columns, per hit a row of 8 (c = 3, one set of 2 arms): s = R t, 1, the
// residual z0 + tan_l s - z, the variance var, the arms (path, 1) and the kick theta cosh
// times (1, -path), t the hit's turn.
extern "C" __global__ void line_gls_hits(long long n_hits, const long long *tid,
                                         const double *turn, const double *hz,
                                         const double *var, const double *path,
                                         const double *theta, const double *radius,
                                         const double *z0, const double *tan_l,
                                         const double *cosh, double *hits) {
    FOR_EACH_THREAD(h, n_hits) {
        const long long t = tid[h];
        const double s = radius[t] * turn[h], kick = theta[h] * cosh[t];
        const double row[8] = {
            s, 1.0, z0[t] + tan_l[t] * s - hz[h], var[h], path[h], 1.0, kick * 1.0,
            kick * -path[h],
        };
        for (int k = 0; k < 8; ++k) hits[8 * h + k] = row[k];
    }
}

// fit.gls_step, a thread per track (its gram c x c: the normal matrix in the first n rows
// and columns, grad the last column, rr the corner): the normal matrix guarded by 1e-12 of
// each diagonal entry (of 1 where that is not above 0) and inverted (solve_small) into cov
// (n x n), the step -cov grad (0 where any part is not finite) into step (n) and the
// chi-square rr + 2 step.grad + step.(normal step) into chi2.
extern "C" __global__ void gls_solve(long long n_tracks, const double *gram, long long c,
                                     long long n, double *cov, double *step, double *chi2) {
    FOR_EACH_THREAD(t, n_tracks) {
        const double *g = gram + t * c * c;
        double m[SMALL_N][SMALL_N] = {}, v[SMALL_N][SMALL_N] = {}, st[SMALL_N];
        for (long long i = 0; i < n; ++i) {
            for (long long j = 0; j < n; ++j) {
                const double scale = g[j * c + j] > 0 ? g[j * c + j] : 1.0;
                m[i][j] = g[i * c + j] + 1e-12 * (i == j ? 1.0 : 0.0) * scale;
            }
            v[i][i] = 1.0;
        }
        solve_small(m, v, (int)n, (int)n);
        bool finite = true;
        for (long long i = 0; i < n; ++i) {
            double sum = v[i][0] * g[n];
            for (long long k = 1; k < n; ++k) sum += v[i][k] * g[k * c + n];
            st[i] = -sum;
            finite = finite && isfinite(st[i]);
        }
        double along = 0.0, curved = 0.0;
        for (long long i = 0; i < n; ++i) {
            if (!finite) st[i] = 0.0;
        }
        for (long long i = 0; i < n; ++i) {
            double normal_step = g[i * c] * st[0];
            for (long long k = 1; k < n; ++k) normal_step += g[i * c + k] * st[k];
            along = i ? along + st[i] * g[i * c + n] : st[i] * g[i * c + n];
            curved = i ? curved + st[i] * normal_step : st[i] * normal_step;
            step[t * n + i] = st[i];
            for (long long k = 0; k < n; ++k) cov[(t * n + i) * n + k] = v[i][k];
        }
        chi2[t] = g[n * c + n] + 2 * along + curved;
    }
}

// fit._holes of track t (a thread per track), operation by operation: whether its starting
// helix (xc, yc, radius, h, theta_p; tan_l, z0) crosses layer l (geometry: six rows of
// n_layers: 1.0 for a barrel, r, z, half_length, r_min, r_max) after its perigee and before
// its last hit (turn[offsets[t + 1] - 1]) where none of its hits (hit_layer) is, and at
// which turn (*turn_l).
__device__ bool track_hole(long long t, long long l, const long long *offsets,
                           const double *turn, const long long *hit_layer, const double *xc,
                           const double *yc, const double *radius, const double *tan_l,
                           const double *z0, const double *geometry, long long n_layers,
                           double *turn_l) {
    const double *g = geometry;
    const double r = g[n_layers + l], z = g[2 * n_layers + l];
    const double half_length = g[3 * n_layers + l], r_min = g[4 * n_layers + l];
    const double r_max = g[5 * n_layers + l];
    const double c2 = xc[t] * xc[t] + yc[t] * yc[t], big_r = radius[t];
    const double twice_rc = 2 * big_r * sqrt(c2);
    bool on;
    double at;
    if (g[l] != 0.0) {  // a barrel: r^2 = c^2 + R^2 - 2 R c cos(turn)
        const double cos_b = (c2 + big_r * big_r - r * r) / (twice_rc > 0 ? twice_rc : 1.0);
        at = acos(numpy_min(numpy_max(cos_b, -1.0), 1.0));  // numpy.clip: NaN stays NaN
        on = fabs(cos_b) <= 1 && twice_rc > 0 && fabs(z0[t] + tan_l[t] * big_r * at) <= half_length;
    } else {  // a disk: z = z0 + tan_l R turn
        const double rise = tan_l[t] * big_r;
        at = (z - z0[t]) / (rise != 0 ? rise : 1.0);
        const double r2_d = c2 + big_r * big_r - twice_rc * cos(at);
        on = rise != 0 && r_min * r_min <= r2_d && r2_d <= r_max * r_max;
    }
    const long long end = offsets[t + 1];
    if (end == offsets[t] || !(on && at > 0 && at < turn[end - 1])) return false;
    for (long long k = offsets[t]; k < end; ++k) {
        if (hit_layer[k] == l) return false;
    }
    *turn_l = at;
    return true;
}

// fit._holes, a thread per track: its holes' count.
extern "C" __global__ void hole_counts(long long n_tracks, const long long *offsets,
                                       const double *turn, const long long *hit_layer,
                                       const double *xc, const double *yc,
                                       const double *radius, const double *h,
                                       const double *theta_p, const double *tan_l,
                                       const double *z0, const double *geometry,
                                       long long n_layers, long long *counts) {
    FOR_EACH_THREAD(t, n_tracks) {
        long long n = 0;
        double at;
        for (long long l = 0; l < n_layers; ++l) {
            n += track_hole(t, l, offsets, turn, hit_layer, xc, yc, radius, tan_l, z0, geometry,
                            n_layers, &at);
        }
        counts[t] = n;
    }
}

// fit._holes, a thread per track: its holes from starts[t] on, in layer order (their track,
// layer, and in out four doubles a hole: its turn and position on the helix).
extern "C" __global__ void hole_rows(long long n_tracks, const long long *offsets,
                                     const double *turn, const long long *hit_layer,
                                     const double *xc, const double *yc, const double *radius,
                                     const double *h, const double *theta_p,
                                     const double *tan_l, const double *z0,
                                     const double *geometry, long long n_layers,
                                     const long long *starts, long long *track,
                                     long long *layer, double *out) {
    FOR_EACH_THREAD(t, n_tracks) {  // out: per hole, its turn, x, y, z
        long long k = starts[t];
        double at;
        for (long long l = 0; l < n_layers; ++l) {
            if (!track_hole(t, l, offsets, turn, hit_layer, xc, yc, radius, tan_l, z0, geometry,
                            n_layers, &at))
                continue;
            const double angle = theta_p[t] + h[t] * at;
            track[k] = t;
            layer[k] = l;
            out[k * 4] = at;
            out[k * 4 + 1] = xc[t] + radius[t] * cos(angle);
            out[k * 4 + 2] = yc[t] + radius[t] * sin(angle);
            out[k * 4 + 3] = z0[t] + tan_l[t] * radius[t] * at;
            ++k;
        }
    }
}

// fit._merged, a thread per track: its hits (offsets; x, y, z, res_a, res_b, x0, barrel,
// turn) and its holes (from new_offsets[t] - offsets[t] on: turn, x, y, z, layer; the
// layer's res_a, res_b, x0 and barrel from table, four rows of n_layers) as rows from
// new_offsets[t] on: a track without holes its hits in order, one with holes all by turn,
// ties in the order hits then holes (NumPy's stable lexsort). out: six rows of n_rows (x,
// y, z, res_a, res_b, x0); barrel, row_track and hole per row.
extern "C" __global__ void hole_merge(long long n_tracks, const long long *offsets,
                                      const long long *new_offsets, const double *hx,
                                      const double *hy, const double *hz,
                                      const double *res_a, const double *res_b,
                                      const double *x0, const bool *barrel,
                                      const double *turn, const double *hole_turn,
                                      const double *hole_x, const double *hole_y,
                                      const double *hole_z, const long long *hole_layer,
                                      const double *table, long long n_layers,
                                      long long n_rows, double *out, bool *row_barrel,
                                      long long *row_track, bool *row_hole) {
    FOR_EACH_THREAD(t, n_tracks) {
        const long long first = offsets[t], n_hits = offsets[t + 1] - first;
        const long long holes = new_offsets[t] - first;  // this track's first hole
        const long long n = new_offsets[t + 1] - new_offsets[t], n_holes = n - n_hits;
        for (long long i = 0; i < n; ++i) {
            const bool is_hole = i >= n_hits;
            const double key = is_hole ? hole_turn[holes + i - n_hits] : turn[first + i];
            long long rank = i;
            if (n_holes) {  // the stable sort's place: keys below, and equal ones before
                rank = 0;
                for (long long j = 0; j < n; ++j) {
                    const double other = j >= n_hits ? hole_turn[holes + j - n_hits]
                                                     : turn[first + j];
                    rank += other < key || (other == key && j < i);
                }
            }
            const long long row = new_offsets[t] + rank;
            if (is_hole) {
                const long long k = holes + i - n_hits, l = hole_layer[k];
                out[row] = hole_x[k];
                out[n_rows + row] = hole_y[k];
                out[2 * n_rows + row] = hole_z[k];
                out[3 * n_rows + row] = table[l];
                out[4 * n_rows + row] = table[n_layers + l];
                out[5 * n_rows + row] = table[2 * n_layers + l];
                row_barrel[row] = table[3 * n_layers + l] > 0;
            } else {
                const long long h = first + i;
                out[row] = hx[h];
                out[n_rows + row] = hy[h];
                out[2 * n_rows + row] = hz[h];
                out[3 * n_rows + row] = res_a[h];
                out[4 * n_rows + row] = res_b[h];
                out[5 * n_rows + row] = x0[h];
                row_barrel[row] = barrel[h];
            }
            row_track[row] = t;
            row_hole[row] = is_hole;
        }
    }
}
