//! Partitions: each store's events go to one partition, so they stay in order; different
//! partitions proceed independently, so one stuck partition cannot hold the others.

use kirana_domain::StoreId;

/// Partitions by default: enough that a poison event holds back a sixteenth of the stores,
/// few enough that positions stay a handful of rows per consumer and shard.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// The partition of a store. UUIDv7's last 8 bytes are random, so stores spread evenly.
pub fn partition_of(store: StoreId, partitions: u32) -> u32 {
    let bytes = store.uuid().into_bytes();
    let tail = u64::from_be_bytes(bytes[8..16].try_into().expect("16-byte uuid"));
    (tail % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_always_lands_in_the_same_partition_and_stores_spread() {
        let mut counts = [0u32; 16];
        for _ in 0..16_000 {
            let s = StoreId::generate();
            let p = partition_of(s, 16);
            assert_eq!(p, partition_of(s, 16));
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
