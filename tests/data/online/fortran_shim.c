/* MPI start/stop for the Fortran test member (no Fortran MPI bindings in the MPICH wheel). */
#include <mpi.h>
#include <stddef.h>

int shim_init(void) { MPI_Init(NULL, NULL); return (int)MPI_Comm_c2f(MPI_COMM_WORLD); }
int shim_rank(void) { int r; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
void shim_finalize(void) { MPI_Finalize(); }
