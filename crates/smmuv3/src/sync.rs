//! A minimal spin lock, so the driver stays `no_std` and can be shared
//! between the host and the TLB hooks io-pgtable calls.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set spin lock.
///
/// Critical sections in the driver are short and never wait on the device
/// with a lock held for longer than a bounded poll.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one guard at a time (acquire/release on
// `locked`), so `&SpinLock<T>` only gives exclusive access to `T`; sending
// `T` between threads is then all that is required.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: owning the lock owns the `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// Returns an unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Returns a guard giving exclusive access, spinning until it is free.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return SpinGuard { lock: self };
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Returns the value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }

    /// Returns a mutable reference (no locking needed with `&mut self`).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

/// Exclusive access to a [`SpinLock`]'s value; unlocks on drop.
///
/// Shared between threads only when `T` is `Sync`: a `&SpinGuard` hands
/// out `&T`, so a guard of a `Send`-only value (a `Cell`) shared by two
/// threads would let both mutate it at once.
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// let lock = smmuv3::sync::SpinLock::new(core::cell::Cell::new(0u8));
/// shared(&lock.lock());
/// ```
///
/// ```
/// fn shared<T: Sync + Send>(_: &T) {}
/// let lock = smmuv3::sync::SpinLock::new(0u8);
/// shared(&lock.lock());
/// ```
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

// SAFETY: `&SpinGuard` gives only `&T` (Deref), so sharing the guard is
// sharing `&T`, which needs `T: Sync`. This explicit impl replaces the
// automatic one, which followed `&SpinLock<T>` and so only needed
// `T: Send`.
unsafe impl<T: Sync> Sync for SpinGuard<'_, T> {}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by us, so no
        // other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow
        // through this guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_gives_exclusive_access() {
        let l = SpinLock::new(1);
        {
            let mut g = l.lock();
            *g += 1;
            assert!(l.locked.load(Ordering::Relaxed));
        }
        assert!(!l.locked.load(Ordering::Relaxed));
        assert_eq!(*l.lock(), 2);
        assert_eq!(l.into_inner(), 2);
    }
}
