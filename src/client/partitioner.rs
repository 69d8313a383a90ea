//! Choosing a partition for a keyed message: the same key always lands in the
//! same partition (for a fixed partition count), so its messages stay ordered.

/// CRC32C of the key, modulo the partition count: stable across processes,
/// versions and platforms, and fast.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    crc32c::crc32c(key) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(partition_for_key(b"user-42", 12), partition_for_key(b"user-42", 12));
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[partition_for_key(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "uneven spread: {counts:?}");
    }
}
