"""Dinoscope's GUI and command line. Views, widgets, workers and commands; no numerical logic."""

import os as _os

# numpy's OpenBLAS threads spin for ~2^28 cycles after each call. A search's one BLAS product left both of them
# spinning while the next drop decoded its photo and ran the model on the same two cores: 135 ms per search instead
# of 75 (bench/startup.py's later drops). Sleeping at once costs nothing here: the products are large and rare.
# Read when numpy loads OpenBLAS, so it is set before anything imports numpy; a user's own value wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
