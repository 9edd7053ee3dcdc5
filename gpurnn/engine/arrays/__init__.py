"""Arrays: the NumPy/CuPy shim (``backend``, the one module that imports CuPy besides the
kernel loader), the cpu-strict arrays (``strict``), the 16-bit arrays of mixed precision
(``precision``), scratch buffers (``workspace``), BLAS thread control (``host_threads``)
and the checks of what users pass in (``validation``)."""
