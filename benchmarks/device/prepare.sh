#!/usr/bin/env bash
# Wheels that a GPU machine without network access needs beside what its Python already holds
# (torch, numpy, scipy, pandas, scikit-learn, matplotlib, click, pluggy, rich, safetensors, pytest,
# hypothesis): this package built for that machine's CPython, the unet3d plugin, and the rest of
# the dependencies, all into .whl/ (ignored by git), which `check.sh` installs there.
#
#   PYTHON=/path/to/python3.12 bash benchmarks/device/prepare.sh
#
# Needs maturin and a Rust toolchain. PYTHON is a CPython of the GPU machine's minor version (3.12
# by default); maturin builds the Rust extension for it. The folder holds about 22 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3.12}
VERSION=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
rm -rf .whl && mkdir .whl
maturin build --release --quiet -i "$PYTHON" -o .whl
python3 -m pip wheel --quiet --no-deps -w .whl ./plugins/cryoet-forge-unet3d
# the runtime dependencies the device image lacks, and the test extras the GPU tests read
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
  "mrcfile>=1.5,<2" "starfile>=0.5,<0.6" "gemmi>=0.6.5,<0.8" "tomli-w>=1.0,<2" "prdc==0.2" "faiss-cpu>=1.8,<2"
ls .whl
du -sh .whl
