"""Scale-out: whole Switches in worker processes (Dask or local processes): sweeps of what-ifs, and
one capture sharded over several processes (replay --workers)."""
