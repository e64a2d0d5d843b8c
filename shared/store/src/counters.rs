//! The encoding of counters that `atomic_add` maintains: little-endian integers, as
//! FoundationDB's `ADD` keeps them. Every backend and the transaction wrapper read them alike.

/// Decodes a little-endian integer of up to 8 bytes (shorter values are zero-extended, longer
/// ones truncated, as FoundationDB's `ADD` treats them).
pub(crate) fn decode_i64(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    i64::from_le_bytes(buf)
}
