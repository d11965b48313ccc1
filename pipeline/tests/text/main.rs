//! The text path and packing: tokenizer, template, labels, word prior, bucketing and packing.
//!
//! The Python checks need python3 with the `tokenizers` and `safetensors` packages (`COMP_PYTHON`
//! overrides the interpreter).
mod mixes;
mod packing;
mod tokenizer;
mod word_prior;

use std::path::Path;
use std::process::Command;

/// Captions in the style of the demo data, varied enough to train a small BPE.
pub fn demo_captions() -> Vec<String> {
    let subjects = [
        "a red square",
        "two blue circles",
        "a green triangle",
        "an orange star",
        "three small dots",
    ];
    let places = [
        "on a white background",
        "in the top left corner",
        "near the centre",
        "over a striped field",
    ];
    let extras = [
        "",
        " with a thin black outline",
        ", slightly rotated",
        " and a shadow",
    ];
    let mut out = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for (j, p) in places.iter().enumerate() {
            for (k, e) in extras.iter().enumerate() {
                let cap = format!("{s} {p}{e}.");
                out.push(if (i + j + k) % 3 == 0 {
                    capitalise(&cap)
                } else {
                    cap
                });
            }
        }
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Run a Python snippet with `args`; returns stdout. Panics with stderr on failure.
pub fn python(script: &str, args: &[&Path]) -> String {
    let py = std::env::var("COMP_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
