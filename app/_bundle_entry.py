"""Entry script for the PyInstaller bundle (see pyinstaller.spec).

PyInstaller wants a script path, not a `module:function`, so this file stands in for `python -m app`:
it runs `app.__main__.main()` and exits with its return code.
"""

import multiprocessing
import sys

from app.__main__ import main

if __name__ == "__main__":
    # A frozen executable has no `python -c ...` for multiprocessing's spawn/forkserver children to run;
    # freeze_support() makes the bundle act as that child when started as one. No-op otherwise.
    multiprocessing.freeze_support()
    sys.exit(main())
