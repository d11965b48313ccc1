//! Small helpers shared by the binary's modules.

/// 64-bit FNV-1a: a stable, dependency-free fingerprint (config hashes, cache file names).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
