"""Running dm-tune workers on clusters: Slurm job arrays and a gRPC storage proxy.

- :mod:`dm_tune.cluster.slurm`: submit a job array of ``dm-tune worker`` tasks with plain
  ``sbatch`` (the storage URL travels in the environment, never in a file or argv), list
  and cancel a campaign's jobs.
- :mod:`dm_tune.cluster.proxy`: one process that owns the database connections (Optuna's
  gRPC storage proxy plus dm-tune's lock, progress and heartbeat calls) so that many
  workers cost a bounded number of PostgreSQL connections.

Submodules are imported on use: neither needs the other, and the proxy needs ``grpcio``.
"""

__all__ = ["proxy", "slurm"]
