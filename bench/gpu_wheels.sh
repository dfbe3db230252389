#!/bin/sh
# Fetch, here, the wheels that bench/gpu_check.py needs on a lent GPU machine beyond its image (which has torch,
# transformers, peft and accelerate, but other versions, and no datasets or bitsandbytes): the versions this
# project's .venv runs, for CPython 3.12 on x86-64 Linux, into .whl/ (ignored by git; ~59 MB, under the device
# tool's 64 MiB). Then see bench/gpu_check.py's docstring for the one call that installs and runs them.
set -e
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-.venv/bin/python}
versions=$($PY - <<'PYEOF'
import importlib.metadata as md
print(" ".join(f"{p}=={md.version(p)}" for p in
               ("transformers", "peft", "accelerate", "datasets", "dill", "multiprocess", "bitsandbytes")))
PYEOF
)
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl $versions
du -sh .whl
