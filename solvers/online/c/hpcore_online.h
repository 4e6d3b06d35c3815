/* hpcore online training: the C client (three calls), same protocol as solvers/online/client.py.
 *
 * Build a member with the client (one line, mpicc of the MPI that runs the trainer):
 *     mpicc -O2 -I solvers/online/c my_solver.c solvers/online/c/hpcore_online.c -o my_solver
 * (`python -m solvers.online cflags` prints it with absolute paths.)
 *
 * The trainer starts the member with HPCORE_ONLINE_SERVER, _MEMBER, _ATTEMPT, _PARAMS,
 * _ROUTING and _TIMEOUT_S in the environment (see solvers/online/client.py).
 *
 *   hpcore_online_init(field_name, local_size, comm)  collective on comm; once per field;
 *                                                     the first call connects to the trainer
 *   hpcore_online_send(field_name, values, time_step) this rank's local_size doubles; waits
 *                                                     while the trainer has no credit for it
 *   hpcore_online_finalize()                          collective; after the last send
 *
 * Each returns 0 on success; on an error it prints the reason (with the rank) to stderr
 * and returns a non-zero code. A trainer that stops answering for HPCORE_ONLINE_TIMEOUT_S
 * seconds makes send abort the member (MPI_Abort), so a member never hangs.
 */
#ifndef HPCORE_ONLINE_H
#define HPCORE_ONLINE_H

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

int hpcore_online_init(const char *field_name, int local_size, MPI_Comm comm);
int hpcore_online_send(const char *field_name, const double *values, int time_step);
int hpcore_online_finalize(void);

/* For the Fortran module (MPI communicator as a Fortran handle). */
int hpcore_online_init_f(const char *field_name, int local_size, MPI_Fint comm);

#ifdef __cplusplus
}
#endif

#endif
