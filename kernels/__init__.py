"""Hand-written compute kernels: Numba-JIT loops (numba/) and CUDA C sources (cuda/)."""
