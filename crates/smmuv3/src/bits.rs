//! Bit-field helpers shared by the register and descriptor layouts.

/// An inclusive bit range `[hi:lo]` inside a 64-bit word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Lowest bit of the field.
    pub lo: u32,
    /// Highest bit of the field (inclusive).
    pub hi: u32,
}

impl Field {
    /// Returns the field covering bits `hi` down to `lo`.
    pub const fn new(hi: u32, lo: u32) -> Self {
        assert!(hi >= lo && hi < 64);
        Self { lo, hi }
    }

    /// Returns a one-bit field.
    pub const fn bit(b: u32) -> Self {
        Self::new(b, b)
    }

    /// Returns the field's mask in place.
    pub const fn mask(self) -> u64 {
        let width = self.hi - self.lo + 1;
        let ones = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        ones << self.lo
    }

    /// Returns the field's value in `word`.
    pub const fn get(self, word: u64) -> u64 {
        (word & self.mask()) >> self.lo
    }

    /// Returns `word` with the field replaced by `val` (truncated to the field width).
    pub const fn set(self, word: u64, val: u64) -> u64 {
        (word & !self.mask()) | ((val << self.lo) & self.mask())
    }

    /// Returns `val` placed in the field (truncated to the field width).
    pub const fn make(self, val: u64) -> u64 {
        (val << self.lo) & self.mask()
    }

    /// Returns whether `val` fits in the field without truncation.
    pub const fn fits(self, val: u64) -> bool {
        let width = self.hi - self.lo + 1;
        width == 64 || val >> width == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_roundtrip() {
        let f = Field::new(51, 6);
        assert_eq!(f.mask(), 0x000f_ffff_ffff_ffc0);
        assert_eq!(f.get(f.make(0x1234)), 0x1234);
        assert_eq!(Field::new(63, 0).mask(), u64::MAX);
        assert_eq!(Field::bit(31).set(0, 1), 1 << 31);
        assert!(Field::new(4, 0).fits(31));
        assert!(!Field::new(4, 0).fits(32));
    }
}
