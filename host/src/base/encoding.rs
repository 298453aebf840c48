//! Postcard, the encoding of the peer protocol and of the Raft logs, written into a buffer of
//! the measured size. A batch of message bodies grown by doubling was copied several times
//! over, and the large fresh allocations it churned had the kernel zeroing pages: on a quorum
//! queue's follower that was the largest item of the profile.

use serde::Serialize;

/// `prefix`, then `value` in postcard.
pub fn to_vec<T: Serialize + ?Sized>(prefix: &[u8], value: &T) -> postcard::Result<Vec<u8>> {
    let size = postcard::serialize_with_flavor::<T, _, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )?;
    let mut out = Vec::with_capacity(prefix.len() + size);
    out.extend_from_slice(prefix);
    postcard::to_extend(value, out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_prefix_then_the_same_bytes_as_postcard_and_no_spare_room() {
        let value = (7u32, "seven".to_string(), vec![1u8; 300]);
        let out = super::to_vec(&[0xab], &value).unwrap();
        assert_eq!(out[0], 0xab);
        assert_eq!(&out[1..], &postcard::to_allocvec(&value).unwrap()[..]);
        assert_eq!(out.capacity(), out.len());
    }
}
