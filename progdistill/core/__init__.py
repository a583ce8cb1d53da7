"""The lowest layer: configs, seeding, distributed training, files, optional dependencies, plugins, threads."""

import os

# Idle OpenMP threads sleep instead of spinning (set before torch is imported, which reads it once; the
# environment's own setting wins). On a shared CPU, spinning threads made runs with 2 threads 10-50x slower
# (docs/benchmarks.md); the setting changes no number. See progdistill.core.threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
