//! comp-model integration tests: one test binary (libtorch makes linking expensive).
//! Parity tests call `tests/py/reference.py` (transformers) to build tiny random reference models.
mod attention;
mod checkpoint;
mod common;
mod forward;
mod losses;
mod parity;
