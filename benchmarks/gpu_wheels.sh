#!/usr/bin/env bash
# Wheels for what the GPU machine lacks, into the git-ignored .whl/ (gpu_suite.sh installs them
# there with --no-index --no-deps). Run it here, where PyPI is reachable; then carry .whl/.
#
#   bash benchmarks/gpu_wheels.sh
#
# The GPU machine: CPython 3.12, manylinux x86-64, no registry. Of deepspeed's requirements
# (einops hjson msgpack ninja numpy packaging psutil py-cpuinfo pydantic torch tqdm), its image
# lacks hjson and pydantic, and of pydantic's, pydantic-core, annotated-types and
# typing-inspection (the device tool's KINDS.md package list, read 2026-11-17). gpu_suite.sh
# imports deepspeed there first and says which module is missing if this list is out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
MISSING="hjson pydantic pydantic_core annotated_types typing_inspection"  # wheel names: '-' as '_'
LIMIT=$((64 * 1024 * 1024))  # what travels to the machine, the working tree included
DS_VERSION=$($PY -c "from importlib.metadata import version; print(version('deepspeed'))")  # the version the tests ran with
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# PyPI has deepspeed as a source archive only: build it as a pure-Python wheel (its C++/CUDA ops,
# unused here, would be JIT-built on first use)
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" "deepspeed==$DS_VERSION"
# the missing requirements, resolved together for CPython 3.12 on manylinux x86-64
$PY -m pip download -q --only-binary=:all: --implementation cp --python-version 3.12 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp/deps" "pydantic>=2" hjson

mkdir -p "$DEST"
rm -f "$DEST"/deepspeed-*.whl
for name in $MISSING; do rm -f "$DEST/$name"-*.whl; done
cp "$tmp"/deepspeed-*.whl "$DEST/"
for name in $MISSING; do
  found=$(find "$tmp/deps" -maxdepth 1 -name "$name-*.whl" | head -1)
  [ -n "$found" ] || { echo "gpu_wheels.sh: pip resolved no wheel for $name" >&2; exit 1; }
  cp "$found" "$DEST/"
done
total=$(cat "$DEST"/*.whl | wc -c)
ls -l "$DEST"
echo "gpu_wheels.sh: $(ls "$DEST"/*.whl | wc -l) wheels, $((total / 1024)) KiB in $DEST (limit $((LIMIT / 1048576)) MiB)"
[ "$total" -lt "$LIMIT" ] || { echo "gpu_wheels.sh: the wheels exceed what can travel" >&2; exit 1; }
