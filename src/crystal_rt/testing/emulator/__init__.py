"""The CUDA kernels compiled with g++ and run on the CPU (``build``, ``kernels``), for tests without a GPU."""

__all__: list[str] = []
