"""Triton kernels for the ``cuda`` backend.

Importing this package does not import triton: the kernel modules do, and only ``ops.py`` (loaded
by the runner when the device is CUDA) and the tests import them. On CPU the kernels run under
``TRITON_INTERPRET=1`` (tests only), which must be set before the kernel modules are imported.
"""
