#!/usr/bin/env bash
# One-time, per-machine set-up. Idempotent: a second run takes a second.
#  - libtorch: torch==2.13.0 from PyPI (the version tch 0.26 expects) into the Python on PATH. That Python's
#    site-packages is the machine-wide cache every clone reuses: `.cargo/config.toml` sets
#    LIBTORCH_USE_PYTORCH=1, so plain `cargo build` / `cargo test` work with no environment variables, and
#    build.rs gives the binaries an rpath so they run without LD_LIBRARY_PATH.
#  - the Python reference oracles the tests compare against (transformers, torchvision, pyarrow, Pillow,
#    tokenizers, safetensors).
set -euo pipefail
TORCH_VERSION=2.13.0
PY=${PYTHON:-python3}

have_py_pkg() { "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
name, want = sys.argv[1], sys.argv[2]
try:
    v = m.version(name)
except m.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if (want == "*" or v == want) else 1)
PYEOF
}

if ! command -v "$PY" >/dev/null; then
  echo "setup: $PY not found; install Python 3.9+ with pip first" >&2
  exit 1
fi

if have_py_pkg torch "$TORCH_VERSION"; then
  echo "setup: torch $TORCH_VERSION already installed ($("$PY" -c 'import torch,os;print(os.path.dirname(torch.__file__))'))"
else
  echo "setup: installing torch==$TORCH_VERSION from PyPI (about 4.7 GB, once per machine)"
  "$PY" -m pip install --disable-pip-version-check -q "torch==$TORCH_VERSION"
fi

# transformers' fast (torchvision) Qwen2-VL image processor is a reference in the image tests and bench.
# torchvision 0.28.0 is the release built against torch 2.13.0; --no-deps keeps torch as installed.
if ! have_py_pkg torchvision 0.28.0; then
  echo "setup: installing torchvision==0.28.0 (no deps)"
  "$PY" -m pip install --disable-pip-version-check -q --no-deps torchvision==0.28.0
fi

missing=()
for pkg in transformers tokenizers pyarrow pillow numpy safetensors; do
  have_py_pkg "$pkg" "*" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing test reference oracles: ${missing[*]}"
  "$PY" -m pip install --disable-pip-version-check -q "${missing[@]}"
fi

# turbojpeg (the fast JPEG decoder) builds libjpeg-turbo with cmake and nasm.
if ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
  echo "setup: installing cmake and nasm (Debian packages)"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake nasm >/dev/null
fi
