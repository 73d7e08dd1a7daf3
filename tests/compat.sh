#!/usr/bin/env bash
# make test-compat: the whole suite under the GPU image's versions (torch 2.11.0, torchvision
# 0.26.0, Triton 3.6.0), beside the pins that `make test` uses (torch 2.14.1, Triton 3.8).
#
#   make test-compat                 # ARGS="-k ws" etc. pass on to pytest
#
# It works in .compat/ (git-ignored; COMPAT_DIR overrides): a venv made once with those versions
# (PyPI's torch 2.11.0 is its CUDA build, which brings Triton 3.6.0: about 4 GB the first time),
# and a copy of the working tree (tracked and new files), built there: torch 2.11 and 2.14 need
# their own builds of fastnofrost._C, which an editable install keeps in the source folder.
#
# NumPy is held below 2.4 in this lane only: Triton 3.6's interpreter (which runs the Triton
# kernels on CPU in the tests) calls int() on 1-element arrays, which NumPy 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"), in every loop whose bound is a
# kernel argument. Triton 3.8 has the fix, and a GPU never runs the interpreter, so the kernels
# keep their loops (a runtime bound: no recompile per row length) and the pin stays here.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${COMPAT_DIR:-.compat}
PYTHON=${PYTHON:-python3}
PINS=(torch==2.11.0 torchvision==0.26.0 triton==3.6.0 "numpy<2.4")
START=$SECONDS

mkdir -p "$DIR"
ABS=$(cd "$DIR" && pwd)  # not realpath: that would follow the venv's python link out of the venv
CONSTRAINTS=$ABS/constraints.txt
printf '%s\n' "${PINS[@]}" > "$CONSTRAINTS"
VPY=$ABS/venv/bin/python
if [ ! -f "$DIR/venv/.pins" ] || [ "$(cat "$DIR/venv/.pins")" != "${PINS[*]}" ]; then
  rm -rf "$DIR/venv"
  echo "== compat: a venv with ${PINS[*]} (the first time downloads torch's CUDA build, about 4 GB)"
  "$PYTHON" -m venv "$DIR/venv"
  "$VPY" -m pip install -q --upgrade pip setuptools wheel
  "$VPY" -m pip install -q -c "$CONSTRAINTS" "${PINS[@]}" cmake ninja
  echo "${PINS[*]}" > "$DIR/venv/.pins"
fi

echo "== compat: copying the working tree to $DIR/src"
rm -rf "$DIR/src"
mkdir -p "$DIR/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$DIR/src"
cd "$DIR/src"
"$VPY" -m pip install -q -c "$CONSTRAINTS" --no-build-isolation -e '.[dev]'
"$VPY" -m pip install -q --no-deps torchattacks  # as the Makefile: its metadata pins another torch
"$VPY" -c "import numpy, torch, torchvision, triton, fastnofrost; print('compat: torch', torch.__version__, \
'torchvision', torchvision.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
status=0
"$VPY" -m pytest -q tests "$@" || status=$?
echo "== compat: finished in $(( SECONDS - START )) s with status $status"
exit $status
