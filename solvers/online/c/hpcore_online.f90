! hpcore online training: the Fortran client, bound to the C client with iso_c_binding.
! Build (after the C file):  mpicc -c -I solvers/online/c solvers/online/c/hpcore_online.c
!                            gfortran -c solvers/online/c/hpcore_online.f90
!   then link your program with hpcore_online.o hpcore_online_f.o and the MPI library.
! Calls: call hpcore_online_init(name, local_size, comm, ierr)   (comm: an MPI Fortran handle)
!        call hpcore_online_send(name, values, time_step, ierr)  (values: real(c_double) array)
!        call hpcore_online_finalize(ierr)
module hpcore_online
  use iso_c_binding
  implicit none
  private
  public :: hpcore_online_init, hpcore_online_send, hpcore_online_finalize

  interface
    integer(c_int) function c_init(name, local_size, comm) bind(C, name="hpcore_online_init_f")
      import :: c_int, c_char
      character(kind=c_char), dimension(*), intent(in) :: name
      integer(c_int), value :: local_size
      integer(c_int), value :: comm
    end function
    integer(c_int) function c_send(name, values, time_step) bind(C, name="hpcore_online_send")
      import :: c_int, c_char, c_double
      character(kind=c_char), dimension(*), intent(in) :: name
      real(c_double), dimension(*), intent(in) :: values
      integer(c_int), value :: time_step
    end function
    integer(c_int) function c_finalize() bind(C, name="hpcore_online_finalize")
      import :: c_int
    end function
  end interface

contains

  subroutine hpcore_online_init(name, local_size, comm, ierr)
    character(len=*), intent(in) :: name
    integer, intent(in) :: local_size, comm
    integer, intent(out) :: ierr
    ierr = c_init(trim(name) // c_null_char, int(local_size, c_int), int(comm, c_int))
  end subroutine

  subroutine hpcore_online_send(name, values, time_step, ierr)
    character(len=*), intent(in) :: name
    real(c_double), dimension(*), intent(in) :: values
    integer, intent(in) :: time_step
    integer, intent(out) :: ierr
    ierr = c_send(trim(name) // c_null_char, values, int(time_step, c_int))
  end subroutine

  subroutine hpcore_online_finalize(ierr)
    integer, intent(out) :: ierr
    ierr = c_finalize()
  end subroutine

end module hpcore_online
