//! Circular queue index arithmetic (PROD/CONS with a wrap bit), shared by
//! the command and event queues.

/// Index arithmetic of a queue of `2^log2` entries.
///
/// A pointer holds the entry index in its low `log2` bits and a wrap flag in
/// bit `log2`; the queue is empty when the pointers are equal and full when
/// only the wrap flags differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    log2: u8,
}

impl QueueIndex {
    /// Returns the arithmetic of a queue of `2^log2` entries (`log2` <= 19).
    pub const fn new(log2: u8) -> Self {
        Self { log2 }
    }

    /// Returns log2 of the number of entries.
    pub const fn log2(&self) -> u8 {
        self.log2
    }

    /// Returns the number of entries.
    pub const fn entries(&self) -> u32 {
        1 << self.log2
    }

    /// Returns the mask of the index and wrap bits of a PROD/CONS register.
    pub const fn ptr_mask(&self) -> u32 {
        (2 << self.log2) - 1
    }

    /// Returns the entry index of a pointer.
    pub const fn index(&self, ptr: u32) -> u32 {
        ptr & (self.entries() - 1)
    }

    /// Returns the pointer `n` entries after `ptr`.
    pub const fn advance(&self, ptr: u32, n: u32) -> u32 {
        ptr.wrapping_add(n) & self.ptr_mask()
    }

    /// Returns how many entries are between `cons` and `prod`.
    pub const fn used(&self, prod: u32, cons: u32) -> u32 {
        prod.wrapping_sub(cons) & self.ptr_mask()
    }

    /// Returns how many entries can be produced.
    ///
    /// Pointers no queue can have (more than full) give 0, never an
    /// underflow.
    pub const fn space(&self, prod: u32, cons: u32) -> u32 {
        self.entries().saturating_sub(self.used(prod, cons))
    }

    /// Returns whether the queue is full.
    pub const fn is_full(&self, prod: u32, cons: u32) -> bool {
        self.used(prod, cons) == self.entries()
    }

    /// Returns whether the entry at pointer `at` was consumed, given the
    /// current `cons` and a `prod` that was at or after `at + 1`.
    pub const fn consumed(&self, at: u32, prod: u32, cons: u32) -> bool {
        // Entries still pending are [cons, prod); `at` is done when it is not
        // among them.
        self.used(prod, cons) <= self.used(prod, self.advance(at, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrap_full_empty() {
        let q = QueueIndex::new(2);
        assert_eq!(q.entries(), 4);
        assert_eq!(q.ptr_mask(), 7);
        assert_eq!(q.space(0, 0), 4);
        assert!(q.is_full(4, 0));
        assert!(!q.is_full(3, 0));
        assert_eq!(q.advance(7, 1), 0);
        assert_eq!(q.index(5), 1);
        assert_eq!(q.used(1, 6), 3);
        // CONS "ahead" of PROD reads as more than full: no space, no panic.
        assert_eq!(q.used(0, 3), 5);
        assert_eq!(q.space(0, 3), 0);
        assert!(q.consumed(2, 3, 3));
        assert!(!q.consumed(2, 3, 2));
        assert!(q.consumed(7, 0, 0));
        assert!(!q.consumed(7, 0, 7));
    }

    proptest! {
        #[test]
        fn used_plus_space_is_size(log2 in 1u8..8, cons in 0u32..512, n in 0u32..256) {
            let q = QueueIndex::new(log2);
            let cons = cons & q.ptr_mask();
            let n = n % (q.entries() + 1);
            let prod = q.advance(cons, n);
            prop_assert_eq!(q.used(prod, cons), n);
            prop_assert_eq!(q.used(prod, cons) + q.space(prod, cons), q.entries());
            prop_assert_eq!(q.is_full(prod, cons), n == q.entries());
            // The last produced entry is consumed exactly when cons reaches prod.
            if n > 0 {
                let last = q.advance(prod, q.ptr_mask());
                for k in 0..=n {
                    let c = q.advance(cons, k);
                    prop_assert_eq!(q.consumed(last, prod, c), k == n);
                }
            }
        }
    }
}
