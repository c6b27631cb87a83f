//! A hash that stays the same across runs, builds and Rust releases (std's hashers may
//! change), for names and values the plugin derives and must derive again identically:
//! retired link names, the host shim's MAC, a node's first pick in an address range.

use std::hash::Hasher;

/// FNV-1a, 64 bits, of `bytes`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_fnv_1a_64() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
