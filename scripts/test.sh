#!/usr/bin/env bash
# Set up this machine if needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --release --no-fail-fast "$@"
