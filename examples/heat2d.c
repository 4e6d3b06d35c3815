/* A small MPI heat solver (2-D, explicit, rows split over ranks) that streams its field to an
 * online trainer with the three calls of hpcore_online.h and nothing else.
 *
 *   u_t = kappa (u_xx + u_yy) on the unit square, u = 0 on the boundary,
 *   u(x, y, 0) = amp * sin(pi x) sin(pi y) + amp * kappa * sin(2 pi x) sin(3 pi y)
 *
 * Build:  mpicc -O2 -I solvers/online/c examples/heat2d.c solvers/online/c/hpcore_online.c -o heat2d -lm
 * Run as a member (the trainer sets the HPCORE_ONLINE_* environment and substitutes {p0} {p1}):
 *         command = ["./heat2d", "16", "10", "{p0}", "{p1}"]   (n, output steps, kappa, amp)
 * Alone (prints a checksum, no trainer): HPCORE_ONLINE_OFF=1 mpiexec -n 2 ./heat2d 16 10 0.5 1.0
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hpcore_online.h"

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int n = argc > 1 ? atoi(argv[1]) : 16;
    int steps = argc > 2 ? atoi(argv[2]) : 10;
    double kappa = argc > 3 ? atof(argv[3]) : 0.5;
    double amp = argc > 4 ? atof(argv[4]) : 1.0;
    int online = getenv("HPCORE_ONLINE_OFF") == NULL;
    const double pi = 3.14159265358979323846;

    /* rows [lo, hi) of the n x n interior grid, one ghost row above and below */
    int base = n / size, extra = n % size;
    int lo = rank * base + (rank < extra ? rank : extra);
    int rows = base + (rank < extra ? 1 : 0);
    double h = 1.0 / (n + 1), dt = 0.2 * h * h / kappa;
    int substeps = (int)ceil(0.002 / dt);
    double *u = calloc((size_t)(rows + 2) * n, sizeof *u), *v = calloc((size_t)(rows + 2) * n, sizeof *v);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < n; ++j) {
            double x = (lo + i + 1) * h, y = (j + 1) * h;
            u[(i + 1) * n + j] = amp * sin(pi * x) * sin(pi * y) + amp * kappa * sin(2 * pi * x) * sin(3 * pi * y);
        }
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL, down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;

    /* each call returns non-zero after printing why (every rank of comm agrees for init) */
    if (online && hpcore_online_init("u", rows * n, MPI_COMM_WORLD)) MPI_Abort(MPI_COMM_WORLD, 2);
    for (int t = 0; t < steps; ++t) {
        for (int s = 0; s < substeps; ++s) {
            MPI_Sendrecv(u + n, n, MPI_DOUBLE, up, 0, u + (size_t)(rows + 1) * n, n, MPI_DOUBLE, down, 0,
                         MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Sendrecv(u + (size_t)rows * n, n, MPI_DOUBLE, down, 1, u, n, MPI_DOUBLE, up, 1, MPI_COMM_WORLD,
                         MPI_STATUS_IGNORE);
            for (int i = 1; i <= rows; ++i)
                for (int j = 0; j < n; ++j) {
                    double c = u[i * n + j];
                    double l = j > 0 ? u[i * n + j - 1] : 0.0, r = j < n - 1 ? u[i * n + j + 1] : 0.0;
                    v[i * n + j] = c + kappa * dt / (h * h) * (u[(i - 1) * n + j] + u[(i + 1) * n + j] + l + r - 4 * c);
                }
            double *w = u; u = v; v = w;  /* ghost rows of the new u are refreshed next substep */
        }
        if (online && hpcore_online_send("u", u + n, t)) MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (online && hpcore_online_finalize()) MPI_Abort(MPI_COMM_WORLD, 2);
    double local = 0, total;
    for (int i = 1; i <= rows; ++i) for (int j = 0; j < n; ++j) local += u[i * n + j];
    MPI_Reduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0 && !online) printf("heat2d: n=%d steps=%d sum=%.12e\n", n, steps, total);
    free(u); free(v);
    MPI_Finalize();
    return 0;
}
