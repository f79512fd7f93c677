"""CUDA kernels, NVRTC build and launchers (GPU); importing this package imports no GPU module."""
