"""normlab's fused CPU kernels in C++ (``*.cpp``), built by :mod:`normlab.kernels.cpu.build`."""
