/* CMPI: gives Swift OpenMPI's handles, which are C macros Swift cannot import.
 * Every getter is static inline; nothing here has state. */
#ifndef CMPI_SHIM_H
#define CMPI_SHIM_H
#include <mpi.h>
#include <stdint.h>

static inline MPI_Comm cmpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm cmpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype cmpi_byte(void) { return MPI_BYTE; }
static inline MPI_Request cmpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *cmpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *cmpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline MPI_Errhandler cmpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Info cmpi_info_null(void) { return MPI_INFO_NULL; }
static inline int cmpi_success(void) { return MPI_SUCCESS; }
static inline MPI_Datatype cmpi_int(void) { return MPI_INT; }
static inline MPI_Op cmpi_min(void) { return MPI_MIN; }
static inline int cmpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline int cmpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int cmpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }

/* The Fortran handle of a communicator (what the C ABI takes). */
static inline int64_t cmpi_comm_c2f(MPI_Comm comm) { return (int64_t)MPI_Comm_c2f(comm); }

/* Converts the ABI's int64_t Fortran handle to a C communicator.
 * Returns 0 and sets *out on success; 1 if the value does not fit MPI_Fint;
 * 2 if MPI knows no such handle (f2c gave NULL); 3 if it is MPI_COMM_NULL. */
static inline int cmpi_comm_from_fortran(int64_t handle, MPI_Comm *out) {
  MPI_Comm c;
  if (sizeof(MPI_Fint) == 4 && (handle < INT32_MIN || handle > INT32_MAX)) return 1;
  c = MPI_Comm_f2c((MPI_Fint)handle);
  if (c == NULL) return 2;
  if (c == MPI_COMM_NULL) return 3;
  *out = c;
  return 0;
}
#endif
