"""Entry script for the PyInstaller bundle (see pyinstaller.spec).

PyInstaller wants a script path, not a `module:function`, so this file stands in for `python -m app`:
it runs `app.__main__.main()` and exits with its return code.
"""

import multiprocessing
import os
import sys

from app.__main__ import main

if __name__ == "__main__":
    # A frozen executable has no `python -c ...` for multiprocessing's spawn/forkserver children to run;
    # freeze_support() makes the bundle act as that child when started as one. No-op otherwise.
    multiprocessing.freeze_support()
    # The windowed launcher on Windows starts without a console: stdout and stderr are None there, and the
    # first print or log line would raise. Send them nowhere instead (the GUI logs to a file).
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (lives as long as the process)
    sys.exit(main())
