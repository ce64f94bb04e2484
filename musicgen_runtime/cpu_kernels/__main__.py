"""`python -m musicgen_runtime.cpu_kernels`: build the kernel library (make setup runs it)."""

from . import build

print(build())
