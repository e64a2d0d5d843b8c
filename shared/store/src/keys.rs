//! Keys: FoundationDB's order-preserving tuple encoding, one prefix per kind of record, e.g.
//! `("oplog", tenant, component, worker, index)`. Tuples sort as their elements do, so a prefix
//! of a tuple selects a contiguous range.

pub use foundationdb_tuple::{
    Element, PackError, PackResult, TuplePack, TupleUnpack, pack, unpack,
};

/// The range of every key that starts with `prefix`, as FoundationDB's subspaces make it:
/// `[prefix ++ 0x00, prefix ++ 0xFF)`. With tuple-encoded prefixes this holds exactly the keys of
/// longer tuples that start with the prefix's elements.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut begin = Vec::with_capacity(prefix.len() + 1);
    begin.extend_from_slice(prefix);
    begin.push(0x00);
    let mut end = Vec::with_capacity(prefix.len() + 1);
    end.extend_from_slice(prefix);
    end.push(0xFF);
    (begin, end)
}

/// The first key after every key that starts with `prefix` (FoundationDB's `strinc`), or `None`
/// when `prefix` is all 0xFF bytes.
pub fn strinc(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut key = prefix.to_vec();
    while let Some(last) = key.pop() {
        if last != 0xFF {
            key.push(last + 1);
            return Some(key);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_sort_like_their_elements() {
        let a = pack(&("oplog", "t1", 9_u64));
        let b = pack(&("oplog", "t1", 10_u64));
        let c = pack(&("oplog", "t2", 0_u64));
        assert!(a < b && b < c);
        let (begin, end) = prefix_range(&pack(&("oplog", "t1")));
        assert!(begin <= a && b < end && c >= end);
        let back: (String, String, u64) = unpack(&b).expect("a packed tuple unpacks");
        assert_eq!(back, ("oplog".to_string(), "t1".to_string(), 10));
    }

    #[test]
    fn strinc_skips_trailing_ff() {
        assert_eq!(strinc(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(strinc(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(strinc(&[0xFF, 0xFF]), None);
    }
}
