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
    postcard::serialize_with_flavor(value, Filled(out))
}

/// A Vec that is written with `extend_from_slice` (a memcpy): postcard's `to_extend` pushes
/// through `Extend` byte by byte, which was a tenth of a quorum queue leader's CPU for its
/// 1 KiB bodies, and its `AllocVec` cannot start from a buffer of the measured size.
struct Filled(Vec<u8>);

impl postcard::ser_flavors::Flavor for Filled {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
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
