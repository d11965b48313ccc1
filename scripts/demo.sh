#!/usr/bin/env bash
# Set up this machine if needed, then run the main job on built-in default data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin comp
exec target/release/comp train "$@"
