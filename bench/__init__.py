"""Benchmarks of the endpoint and the batch transform against the physical limit and peers.

Run with `python -m bench.run` (see bench/README.md). Benchmarks are not tests: nothing here
fails on a figure; the figures and the targets they are compared with go to bench/RESULTS.md.
"""

from service.blas import pin_kernels

pin_kernels()  # the kernels the service runs (service.blas), chosen before numpy loads
