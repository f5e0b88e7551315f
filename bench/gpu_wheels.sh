#!/usr/bin/env bash
# Fill bench/wheels/ with the wheels bench/gpu_check.sh installs on the CUDA machine (Python 3.12, manylinux x86_64,
# no package index there): the pins it imports that the machine lacks. Not in git (.gitignore); about 26 MB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
pins() { grep -E "^($(IFS='|'; echo "$*"))==" "$ROOT/requirements.txt"; }
mkdir -p "$ROOT/bench/wheels"
# faiss-cpu, SQLAlchemy, PyYAML (trainer --set), platformdirs; typing_extensions (SQLAlchemy's) and packaging
# (faiss-cpu's), in case the machine lacks them (torch usually brings both).
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --dest "$ROOT/bench/wheels" \
    $(pins faiss-cpu SQLAlchemy PyYAML platformdirs) typing_extensions==4.16.0 packaging==26.4
du -sh "$ROOT/bench/wheels"
