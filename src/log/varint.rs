//! LEB128 varints and zigzag signed varints, with checked decoding: a decoder
//! never reads past its input and never panics on bad bytes.

/// The most bytes a u64 varint takes.
pub const VARINT_BYTES_MAX: usize = 10;

pub fn put_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_i64(out: &mut Vec<u8>, value: i64) {
    put_u64(out, zigzag(value));
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Bytes `put_u64(value)` writes.
pub fn len_u64(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes `put_i64(value)` writes.
pub fn len_i64(value: i64) -> usize {
    len_u64(zigzag(value))
}

/// Reads bytes from a slice, failing instead of overrunning it.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

/// Why a read failed: the input ended, or a varint was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Truncated,
    VarintOverflow,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    pub fn u8(&mut self) -> Result<u8, ReadError> {
        let byte = *self.bytes.get(self.position).ok_or(ReadError::Truncated)?;
        self.position += 1;
        Ok(byte)
    }

    pub fn u64(&mut self) -> Result<u64, ReadError> {
        let mut value = 0u64;
        for i in 0..VARINT_BYTES_MAX {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7F);
            if i == VARINT_BYTES_MAX - 1 && bits > 1 {
                return Err(ReadError::VarintOverflow);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ReadError::VarintOverflow)
    }

    pub fn i64(&mut self) -> Result<i64, ReadError> {
        let raw = self.u64()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], ReadError> {
        if len > self.remaining() {
            return Err(ReadError::Truncated);
        }
        let slice = &self.bytes[self.position..self.position + len];
        self.position += len;
        Ok(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for value in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 300, -300] {
            let mut out = Vec::new();
            put_i64(&mut out, value);
            assert_eq!(Reader::new(&out).i64(), Ok(value));
        }
        for value in [0u64, 127, 128, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, value);
            assert!(out.len() <= VARINT_BYTES_MAX);
            assert_eq!(Reader::new(&out).u64(), Ok(value));
        }
    }

    proptest::proptest! {
        /// The builder sizes each record before writing it: the lengths
        /// must be exactly what the writers write.
        #[test]
        fn lengths_are_what_is_written(shift in 0u32..64, low in proptest::num::u64::ANY, signed in proptest::num::i64::ANY) {
            let value = low >> shift;
            let mut out = Vec::new();
            put_u64(&mut out, value);
            proptest::prop_assert_eq!(len_u64(value), out.len());
            out.clear();
            put_i64(&mut out, signed >> shift);
            proptest::prop_assert_eq!(len_i64(signed >> shift), out.len());
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        assert_eq!(Reader::new(&[0x80; 11]).u64(), Err(ReadError::VarintOverflow));
        assert_eq!(Reader::new(&[0x80, 0x80]).u64(), Err(ReadError::Truncated));
        let mut overflow = vec![0xFF; 9];
        overflow.push(0x02);
        assert_eq!(Reader::new(&overflow).u64(), Err(ReadError::VarintOverflow));
    }
}
