"""Native kernels: one implementation per code format and device, eager torch the reference.

==================  ==========================================================
module              content
==================  ==========================================================
``build``           compiling a ``.c`` file once per machine (a verified per-user cache)
``scans.c/.py``     CPU vector scans: INT4, Hamming (scan and top-k), dense INT8/FP16
``linear.c/.py``    CPU passes of the encoder's INT8 linear layers
``triton/``         Triton CUDA scans with the top-k fused: INT4, Hamming
==================  ==========================================================

Nothing here imports a codec: the codecs call these functions and fall back to torch when
they return ``None``.
"""
