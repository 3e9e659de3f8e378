"""MPI on JobSet: hostfiles, the launcher and worker roles, the ssh-free agent, mpi4py helpers (docs/mpi.md)."""
