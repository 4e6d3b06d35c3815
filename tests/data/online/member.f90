! Test member in Fortran: a 1-D field per rank streamed with the hpcore_online module.
! MPI is started by the C shim (the MPICH wheel ships no Fortran MPI bindings).
program member
  use iso_c_binding
  use hpcore_online
  implicit none
  interface
    integer(c_int) function shim_init() bind(C, name="shim_init")
      import :: c_int
    end function
    integer(c_int) function shim_rank() bind(C, name="shim_rank")
      import :: c_int
    end function
    subroutine shim_finalize() bind(C, name="shim_finalize")
    end subroutine
  end interface
  integer :: comm, ierr, t, i, rank
  real(c_double) :: u(8)
  comm = shim_init()
  rank = shim_rank()
  call hpcore_online_init("u", 8, comm, ierr)
  if (ierr /= 0) stop 1
  do t = 0, 5
    do i = 1, 8
      u(i) = sin(0.1d0 * (rank * 8 + i)) * exp(-0.1d0 * t)
    end do
    call hpcore_online_send("u", u, t, ierr)
    if (ierr /= 0) stop 2
  end do
  call hpcore_online_finalize(ierr)
  call shim_finalize()
end program
