"""Numba @njit kernels."""
