//! The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst):
//! where the kernel must sit and how much memory it claims.

/// Header field offsets and constants.
pub mod layout {
    /// `text_offset`: image load offset from a 2 MiB-aligned base (u64 LE).
    pub const TEXT_OFFSET: usize = 8;
    /// `image_size`: effective image size, including BSS (u64 LE).
    pub const IMAGE_SIZE: usize = 16;
    /// `flags` (u64 LE).
    pub const FLAGS: usize = 24;
    /// `magic`: "ARM\x64" (u32 LE).
    pub const MAGIC: usize = 56;
    /// The magic value.
    pub const MAGIC_VALUE: u32 = 0x644d_5241;
    /// Header length in bytes.
    pub const HEADER_LEN: usize = 64;
    /// flags bit 0: the kernel is big-endian.
    pub const FLAG_BIG_ENDIAN: u64 = 1 << 0;
    /// The base alignment of the load address.
    pub const BASE_ALIGN: u64 = 2 << 20;
    /// `text_offset` of kernels older than 3.17 whose `image_size` is 0.
    pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
}

use layout::*;

/// Why an `Image` cannot be booted where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Fewer bytes than a header.
    #[error("image shorter than its 64-byte header")]
    Short,
    /// No "ARM\x64" magic at byte 56 (not an uncompressed arm64 Image).
    #[error("no arm64 Image magic (found {0:#010x})")]
    BadMagic(u32),
    /// A big-endian kernel (this hypervisor runs little-endian hosts).
    #[error("big-endian kernel")]
    BigEndian,
    /// The image does not sit at a 2 MiB-aligned base plus `text_offset`.
    #[error("image at {addr:#x} is not 2 MiB-aligned + text_offset {text_offset:#x}")]
    Misplaced {
        /// Where the image is.
        addr: u64,
        /// What the header asks for.
        text_offset: u64,
    },
}

/// The fields of the header the boot needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from the 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes from the load address the kernel uses (image and BSS).
    pub image_size: u64,
    /// The header's flags.
    pub flags: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl ImageHeader {
    /// Returns the header at the start of `bytes`.
    ///
    /// # Errors
    ///
    /// [`ImageError::Short`], [`ImageError::BadMagic`] or
    /// [`ImageError::BigEndian`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::Short);
        }
        let magic = u32::from_le_bytes([
            bytes[MAGIC],
            bytes[MAGIC + 1],
            bytes[MAGIC + 2],
            bytes[MAGIC + 3],
        ]);
        if magic != MAGIC_VALUE {
            return Err(ImageError::BadMagic(magic));
        }
        let mut h = Self {
            text_offset: le64(bytes, TEXT_OFFSET),
            image_size: le64(bytes, IMAGE_SIZE),
            flags: le64(bytes, FLAGS),
        };
        if h.image_size == 0 {
            // Before 3.17 the header carried no size and the offset was fixed.
            h.text_offset = LEGACY_TEXT_OFFSET;
        }
        if h.flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian);
        }
        Ok(h)
    }

    /// Checks that an image at `addr` is where the boot protocol wants it.
    ///
    /// Returns the entry point (the image's first byte).
    ///
    /// # Errors
    ///
    /// [`ImageError::Misplaced`] when `addr` is not a 2 MiB-aligned base plus
    /// `text_offset`.
    pub fn entry(&self, addr: u64) -> Result<u64, ImageError> {
        if addr % BASE_ALIGN != self.text_offset % BASE_ALIGN || addr < self.text_offset {
            return Err(ImageError::Misplaced {
                addr,
                text_offset: self.text_offset,
            });
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&0x1400_0000u32.to_le_bytes()); // code0: b .
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn a_modern_header() {
        let h = ImageHeader::parse(&header(0, 0x2e5_0000, 0xa)).unwrap();
        assert_eq!((h.text_offset, h.image_size, h.flags), (0, 0x2e5_0000, 0xa));
        assert_eq!(h.entry(0x4020_0000), Ok(0x4020_0000));
        assert_eq!(
            h.entry(0x4010_0000),
            Err(ImageError::Misplaced {
                addr: 0x4010_0000,
                text_offset: 0
            })
        );
    }

    #[test]
    fn legacy_and_bad_headers() {
        let h = ImageHeader::parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!(h.text_offset, 0x8_0000);
        assert_eq!(h.entry(0x4008_0000), Ok(0x4008_0000));
        assert_eq!(ImageHeader::parse(&[0; 10]), Err(ImageError::Short));
        let mut bad = header(0, 1, 0);
        bad[56] = b'X';
        assert!(matches!(
            ImageHeader::parse(&bad),
            Err(ImageError::BadMagic(_))
        ));
        assert_eq!(
            ImageHeader::parse(&header(0, 1, 1)),
            Err(ImageError::BigEndian)
        );
    }

    #[test]
    fn field_offsets_match_booting_rst() {
        assert_eq!((TEXT_OFFSET, IMAGE_SIZE, FLAGS, MAGIC), (8, 16, 24, 56));
        assert_eq!(&MAGIC_VALUE.to_le_bytes(), b"ARM\x64");
    }
}
