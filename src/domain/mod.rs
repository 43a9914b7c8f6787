//! Pure types and decisions of the care domain; depends on nothing else in the crate.

pub mod alert;
pub mod card;
pub mod care;
pub mod duration;
pub mod import;
pub mod provider;
pub mod region;
pub mod report;
pub mod user;

/// The partition of a key: CRC-32 (ISO-HDLC) of its bytes, modulo `n`. Stable across
/// builds, processes and machines (std's hasher promises none of that), so it can name a
/// partition in the store and on another node.
pub fn partition(key: &str, n: usize) -> usize {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    (CRC32.checksum(key.as_bytes()) as usize) % n.max(1)
}
