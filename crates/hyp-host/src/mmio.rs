//! The trapped-MMIO seam: a host load or store on a register frame that the
//! host's stage 2 leaves unmapped, decoded from its syndrome and emulated by
//! a [`TrappedMmio`] device (the virtual SMMU, or a pass-through to the real
//! frame during bring-up).
//!
//! What cannot be emulated exactly is refused ([`Refusal`]) and counted; the
//! window never guesses.

use core::fmt;

use crate::esr::DataAbort;

/// Why an emulated device rejected one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// The device has no register of this size at this offset.
    #[error("no {size}-byte register at offset {offset:#x}")]
    NoRegister {
        /// Offset in the frame.
        offset: u64,
        /// Access size in bytes.
        size: u8,
    },
    /// The offset is not aligned to the access size.
    #[error("{size}-byte access at unaligned offset {offset:#x}")]
    Unaligned {
        /// Offset in the frame.
        offset: u64,
        /// Access size in bytes.
        size: u8,
    },
    /// The device refused the access for a reason of its own (an adapter
    /// over a device's own error type maps its errors here).
    #[error("{size}-byte access at offset {offset:#x} refused: {reason}")]
    Device {
        /// Offset in the frame.
        offset: u64,
        /// Access size in bytes.
        size: u8,
        /// The device's reason.
        reason: &'static str,
    },
}

/// A register frame whose host accesses trap to EL2 and are emulated.
///
/// This is the seam between the trap path and the device: issue 12's virtual
/// SMMU implements it (through an adapter over its own error type), and so
/// does the bring-up pass-through to the real frame.
pub trait TrappedMmio {
    /// Returns the value the host reads from the `size`-byte (1, 2, 4 or 8)
    /// register at `offset` from the frame base.
    ///
    /// # Errors
    ///
    /// [`MmioError`] when the access cannot be emulated; the host then gets
    /// no value and the access is refused.
    fn read(&mut self, offset: u64, size: u8) -> Result<u64, MmioError>;

    /// Emulates the host writing `value` (already truncated to `size` bytes)
    /// to the register at `offset`.
    ///
    /// # Errors
    ///
    /// [`MmioError`] when the access cannot be emulated (nothing changed).
    fn write(&mut self, offset: u64, size: u8, value: u64) -> Result<(), MmioError>;

    /// Writes the device's own counters to `out` (whole lines) when the run
    /// ends; a device without any writes nothing.
    ///
    /// # Errors
    ///
    /// What `out` returns.
    fn report(&mut self, out: &mut dyn fmt::Write) -> fmt::Result {
        let _ = out;
        Ok(())
    }
}

/// A device behind a mutable reference (e.g. `&'static mut dyn TrappedMmio`,
/// which lets the hypervisor pick its device at boot) is a device too.
impl<T: TrappedMmio + ?Sized> TrappedMmio for &mut T {
    fn read(&mut self, offset: u64, size: u8) -> Result<u64, MmioError> {
        (**self).read(offset, size)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> Result<(), MmioError> {
        (**self).write(offset, size, value)
    }

    fn report(&mut self, out: &mut dyn fmt::Write) -> fmt::Result {
        (**self).report(out)
    }
}

/// Why a trapped access was not emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// ESR_EL2.ISV = 0: the syndrome does not describe the access (e.g. a
    /// load/store pair or a writeback addressing mode).
    #[error("access at IPA {ipa:#x} has no valid syndrome (ISV = 0)")]
    NoSyndrome {
        /// Faulting IPA.
        ipa: u64,
    },
    /// The fault is not in the trapped frame (the host touched memory it does
    /// not own, e.g. the hypervisor's).
    #[error("access at IPA {ipa:#x} is outside the trapped frame")]
    OutsideFrame {
        /// Faulting IPA.
        ipa: u64,
    },
    /// The fault happened on the host's own stage-1 table walk.
    #[error("stage-1 table walk of the host faulted at IPA {ipa:#x}")]
    TableWalk {
        /// Faulting IPA.
        ipa: u64,
    },
    /// The device refused the access.
    #[error("at IPA {ipa:#x}: {error}")]
    Device {
        /// Faulting IPA.
        ipa: u64,
        /// What the device said.
        error: MmioError,
    },
}

/// One emulated access, as the window carried it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Offset in the frame.
    pub offset: u64,
    /// Size in bytes.
    pub size: u8,
    /// A store.
    pub write: bool,
    /// The value stored, or the value loaded as placed in the register.
    pub value: u64,
}

/// Counts of one register offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterCount {
    /// Offset in the frame.
    pub offset: u32,
    /// Emulated loads.
    pub reads: u32,
    /// Emulated stores.
    pub writes: u32,
}

/// How many distinct register offsets are counted one by one.
pub const TRACKED_REGISTERS: usize = 64;

/// What went through a trapped window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapStats {
    /// Emulated loads.
    pub reads: u64,
    /// Emulated stores.
    pub writes: u64,
    /// Accesses refused.
    pub refused: u64,
    /// The first refusal, kept for the report.
    pub first_refusal: Option<Refusal>,
    registers: [RegisterCount; TRACKED_REGISTERS],
    tracked: usize,
    /// Emulated accesses to offsets beyond the first [`TRACKED_REGISTERS`]
    /// distinct ones (counted, not itemized).
    pub untracked: u64,
}

impl Default for TrapStats {
    fn default() -> Self {
        Self::new()
    }
}

impl TrapStats {
    /// Returns empty statistics.
    pub const fn new() -> Self {
        Self {
            reads: 0,
            writes: 0,
            refused: 0,
            first_refusal: None,
            registers: [RegisterCount {
                offset: 0,
                reads: 0,
                writes: 0,
            }; TRACKED_REGISTERS],
            tracked: 0,
            untracked: 0,
        }
    }

    /// Returns the emulated accesses (loads and stores).
    pub fn trapped(&self) -> u64 {
        self.reads + self.writes
    }

    /// Returns the per-register counts, in order of first access.
    pub fn registers(&self) -> &[RegisterCount] {
        &self.registers[..self.tracked]
    }

    /// Returns the counts of the register at `offset`, if it was accessed.
    pub fn register(&self, offset: u64) -> Option<RegisterCount> {
        self.registers()
            .iter()
            .find(|r| u64::from(r.offset) == offset)
            .copied()
    }

    fn record(&mut self, offset: u64, write: bool) {
        if write {
            self.writes += 1;
        } else {
            self.reads += 1;
        }
        let slot = match self.registers[..self.tracked]
            .iter()
            .position(|r| u64::from(r.offset) == offset)
        {
            Some(i) => i,
            None if self.tracked < TRACKED_REGISTERS && offset <= u64::from(u32::MAX) => {
                self.registers[self.tracked] = RegisterCount {
                    offset: offset as u32,
                    reads: 0,
                    writes: 0,
                };
                self.tracked += 1;
                self.tracked - 1
            }
            None => {
                self.untracked += 1;
                return;
            }
        };
        let r = &mut self.registers[slot];
        if write {
            r.writes = r.writes.saturating_add(1);
        } else {
            r.reads = r.reads.saturating_add(1);
        }
    }

    fn refuse(&mut self, why: Refusal) -> Refusal {
        self.refused += 1;
        self.first_refusal.get_or_insert(why);
        why
    }
}

impl fmt::Display for TrapStats {
    /// One line: `trapped=N reads=R writes=W refused=F untracked=U regs=0x0:r2,0x20:r1w3,...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trapped={} reads={} writes={} refused={} untracked={} regs=",
            self.trapped(),
            self.reads,
            self.writes,
            self.refused,
            self.untracked
        )?;
        for (i, r) in self.registers().iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{:#x}:", r.offset)?;
            if r.reads > 0 {
                write!(f, "r{}", r.reads)?;
            }
            if r.writes > 0 {
                write!(f, "w{}", r.writes)?;
            }
        }
        Ok(())
    }
}

/// A frame of `size` bytes at IPA `base` whose host accesses trap and go to
/// `device`.
pub struct TrapWindow<D> {
    base: u64,
    size: u64,
    device: D,
    stats: TrapStats,
}

/// Returns the low `size` bytes of `value`.
fn truncate(value: u64, size: u8) -> u64 {
    if size >= 8 {
        value
    } else {
        value & ((1u64 << (u32::from(size) * 8)) - 1)
    }
}

impl<D: TrappedMmio> TrapWindow<D> {
    /// Returns a window over `[base, base + size)` emulated by `device`.
    pub const fn new(base: u64, size: u64, device: D) -> Self {
        Self {
            base,
            size,
            device,
            stats: TrapStats::new(),
        }
    }

    /// Returns the window's statistics.
    pub fn stats(&self) -> &TrapStats {
        &self.stats
    }

    /// Returns the device behind the window.
    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    /// Returns whether `ipa` lies in the window.
    pub fn contains(&self, ipa: u64) -> bool {
        ipa >= self.base && ipa - self.base < self.size
    }

    /// Emulates the data abort `abort` at `ipa` on the host's general-purpose
    /// registers `regs` (x0..x30): a load puts the device's value into the
    /// transfer register as the instruction would (zero- or sign-extended,
    /// W registers cleared above bit 31, XZR discarded); a store passes the
    /// register's low bytes. The caller then steps the host past the
    /// instruction.
    ///
    /// Returns the access carried out.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] (also counted) when the access is outside the window,
    /// has no valid syndrome, faulted on a table walk, or the device refused
    /// it; `regs` is then unchanged.
    pub fn emulate(
        &mut self,
        abort: &DataAbort,
        ipa: u64,
        regs: &mut [u64; 31],
    ) -> Result<Access, Refusal> {
        if !self.contains(ipa) {
            return Err(self.stats.refuse(Refusal::OutsideFrame { ipa }));
        }
        if abort.s1ptw {
            return Err(self.stats.refuse(Refusal::TableWalk { ipa }));
        }
        if !abort.valid {
            return Err(self.stats.refuse(Refusal::NoSyndrome { ipa }));
        }
        let offset = ipa - self.base;
        let size = abort.size;
        let reg = usize::from(abort.reg);
        if abort.write {
            let value = truncate(regs.get(reg).copied().unwrap_or(0), size);
            if let Err(error) = self.device.write(offset, size, value) {
                return Err(self.stats.refuse(Refusal::Device { ipa, error }));
            }
            self.stats.record(offset, true);
            return Ok(Access {
                offset,
                size,
                write: true,
                value,
            });
        }
        let raw = match self.device.read(offset, size) {
            Ok(v) => truncate(v, size),
            Err(error) => return Err(self.stats.refuse(Refusal::Device { ipa, error })),
        };
        let mut value = raw;
        if abort.sign_extend && size < 8 {
            let shift = 64 - u32::from(size) * 8;
            value = (((raw << shift) as i64) >> shift) as u64;
        }
        if !abort.sixty_four {
            value &= 0xffff_ffff;
        }
        if let Some(r) = regs.get_mut(reg) {
            *r = value;
        }
        self.stats.record(offset, false);
        Ok(Access {
            offset,
            size,
            write: false,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of 64-bit registers with a log of what the host did.
    struct Regs {
        words: [u64; 8],
        writes: usize,
    }

    impl TrappedMmio for Regs {
        fn read(&mut self, offset: u64, size: u8) -> Result<u64, MmioError> {
            if offset % u64::from(size) != 0 {
                return Err(MmioError::Unaligned { offset, size });
            }
            let word = self
                .words
                .get((offset / 8) as usize)
                .ok_or(MmioError::NoRegister { offset, size })?;
            Ok(word >> ((offset % 8) * 8))
        }

        fn write(&mut self, offset: u64, size: u8, value: u64) -> Result<(), MmioError> {
            if size != 8 || offset % 8 != 0 {
                return Err(MmioError::NoRegister { offset, size });
            }
            let word = self
                .words
                .get_mut((offset / 8) as usize)
                .ok_or(MmioError::NoRegister { offset, size })?;
            *word = value;
            self.writes += 1;
            Ok(())
        }
    }

    const BASE: u64 = 0x0905_0000;

    fn window() -> TrapWindow<Regs> {
        TrapWindow::new(
            BASE,
            0x40,
            Regs {
                words: [0xffff_ffff_8000_0080; 8],
                writes: 0,
            },
        )
    }

    fn abort(size: u8, reg: u8, write: bool) -> DataAbort {
        DataAbort {
            valid: true,
            size,
            sign_extend: false,
            reg,
            sixty_four: size == 8,
            write,
            s1ptw: false,
            dfsc: 7,
        }
    }

    #[test]
    fn a_load_lands_in_its_register_zero_extended() {
        let mut w = window();
        let mut regs = [0xdead; 31];
        let a = w.emulate(&abort(4, 3, false), BASE + 8, &mut regs).unwrap();
        assert_eq!(a.value, 0x8000_0080);
        assert_eq!(regs[3], 0x8000_0080);
        assert_eq!(regs[2], 0xdead);
        assert_eq!(w.stats().register(8).unwrap().reads, 1);
    }

    #[test]
    fn sign_extension_follows_the_register_width() {
        let mut w = window();
        let mut regs = [0; 31];
        let mut ab = abort(1, 1, false);
        ab.sign_extend = true;
        ab.sixty_four = true;
        // ldrsb x1: byte 0x80 becomes 0xffff_ffff_ffff_ff80.
        w.emulate(&ab, BASE, &mut regs).unwrap();
        assert_eq!(regs[1], 0xffff_ffff_ffff_ff80);
        // ldrsb w1: the same byte, cleared above bit 31.
        ab.sixty_four = false;
        w.emulate(&ab, BASE, &mut regs).unwrap();
        assert_eq!(regs[1], 0xffff_ff80);
    }

    #[test]
    fn a_store_passes_the_register_and_xzr_is_zero() {
        let mut w = window();
        let mut regs = [0; 31];
        regs[7] = 0x1234_5678_9abc_def0;
        let a = w
            .emulate(&abort(8, 7, true), BASE + 0x10, &mut regs)
            .unwrap();
        assert_eq!(a.value, 0x1234_5678_9abc_def0);
        assert_eq!(w.device().words[2], 0x1234_5678_9abc_def0);
        // str xzr: register 31 stores zero.
        w.emulate(&abort(8, 31, true), BASE + 0x10, &mut regs)
            .unwrap();
        assert_eq!(w.device().words[2], 0);
        assert_eq!(w.stats().writes, 2);
        assert_eq!(w.stats().register(0x10).unwrap().writes, 2);
    }

    #[test]
    fn refusals_are_counted_and_change_nothing() {
        let mut w = window();
        let mut regs = [5; 31];
        let mut no_isv = abort(4, 0, false);
        no_isv.valid = false;
        assert_eq!(
            w.emulate(&no_isv, BASE, &mut regs),
            Err(Refusal::NoSyndrome { ipa: BASE })
        );
        assert_eq!(
            w.emulate(&abort(4, 0, false), BASE + 0x40, &mut regs),
            Err(Refusal::OutsideFrame { ipa: BASE + 0x40 })
        );
        assert_eq!(
            w.emulate(&abort(4, 0, true), BASE + 4, &mut regs),
            Err(Refusal::Device {
                ipa: BASE + 4,
                error: MmioError::NoRegister { offset: 4, size: 4 }
            })
        );
        let mut walk = abort(8, 0, false);
        walk.s1ptw = true;
        assert!(matches!(
            w.emulate(&walk, BASE, &mut regs),
            Err(Refusal::TableWalk { .. })
        ));
        assert_eq!(regs, [5; 31]);
        assert_eq!(w.device().writes, 0);
        let s = w.stats();
        assert_eq!((s.refused, s.trapped()), (4, 0));
        assert_eq!(s.first_refusal, Some(Refusal::NoSyndrome { ipa: BASE }));
    }

    #[test]
    fn the_report_line_itemizes_registers() {
        let mut w = window();
        let mut regs = [0; 31];
        w.emulate(&abort(4, 0, false), BASE, &mut regs).unwrap();
        w.emulate(&abort(8, 0, true), BASE + 0x20, &mut regs)
            .unwrap();
        w.emulate(&abort(4, 0, false), BASE + 0x20, &mut regs)
            .unwrap();
        let mut line = String::new();
        core::fmt::write(&mut line, format_args!("{}", w.stats())).unwrap();
        assert_eq!(
            line,
            "trapped=3 reads=2 writes=1 refused=0 untracked=0 regs=0x0:r1,0x20:r1w1"
        );
    }

    #[test]
    fn a_device_chosen_at_run_time_behind_a_dyn_reference() {
        let mut regs_dev = Regs {
            words: [7; 8],
            writes: 0,
        };
        let dev: &mut dyn TrappedMmio = &mut regs_dev;
        let mut w = TrapWindow::new(BASE, 0x40, dev);
        let mut regs = [0; 31];
        regs[2] = 9;
        w.emulate(&abort(8, 2, true), BASE + 8, &mut regs).unwrap();
        w.emulate(&abort(8, 4, false), BASE + 8, &mut regs).unwrap();
        assert_eq!(regs[4], 9);
        assert_eq!(w.stats().trapped(), 2);
        assert_eq!(regs_dev.words[1], 9);
    }

    #[test]
    fn offsets_beyond_the_table_are_counted_as_untracked() {
        let mut s = TrapStats::new();
        for i in 0..(TRACKED_REGISTERS as u64 + 3) {
            s.record(i * 4, false);
        }
        assert_eq!(s.registers().len(), TRACKED_REGISTERS);
        assert_eq!(s.untracked, 3);
        assert_eq!(s.reads, TRACKED_REGISTERS as u64 + 3);
    }

    extern crate std;
    use std::string::String;
}
