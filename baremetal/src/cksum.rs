//! POSIX `cksum` (CRC-32, polynomial 0x04C11DB7, MSB first, the length
//! appended), so the host compares what the kernel read with `cksum FILE`.

/// Builds the byte-at-a-time table at compile time.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04c1_1db7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// A running POSIX checksum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cksum {
    crc: u32,
    len: u64,
}

impl Cksum {
    fn byte(crc: u32, b: u8) -> u32 {
        (crc << 8) ^ TABLE[(((crc >> 24) as u8) ^ b) as usize]
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.crc = Self::byte(self.crc, b);
        }
        self.len += data.len() as u64;
    }

    /// Returns what `cksum` prints: the CRC and the byte count.
    pub fn finish(&self) -> (u32, u64) {
        let mut crc = self.crc;
        let mut n = self.len;
        while n != 0 {
            crc = Self::byte(crc, n as u8);
            n >>= 8;
        }
        (!crc, self.len)
    }
}
