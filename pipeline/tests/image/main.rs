//! Image path tests (one binary): decode, smart_resize, resample and patchify, checked against
//! transformers' Qwen2-VL image processor through `pipeline/tests/py/qwen2vl_reference.py`.
//! Needs python3 with transformers, torch, torchvision and Pillow (scripts/setup.sh installs them).
mod common;
mod decode;
mod parity;
mod patchify;
mod planar;
mod smart_resize;
