//! PL011 UART output and the `print!`/`println!` macros.

use core::fmt;

use crate::layout::UART;

/// Data register.
const DR: u64 = 0x00;
/// Flag register.
const FR: u64 = 0x18;
/// FR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// Control register.
const CR: u64 = 0x30;
/// CR: UART enable, transmit enable, receive enable.
const CR_ENABLE: u32 = (1 << 0) | (1 << 8) | (1 << 9);
/// Bound on FIFO-full spins per byte, so a wedged UART cannot hang the run.
const MAX_SPINS: u32 = 1_000_000;

fn write_reg(off: u64, val: u32) {
    // SAFETY: the PL011 register frame is identity mapped as Device memory;
    // `off` is one of its register offsets.
    unsafe { core::ptr::write_volatile((UART + off) as *mut u32, val) }
}

fn read_reg(off: u64) -> u32 {
    // SAFETY: as in `write_reg`.
    unsafe { core::ptr::read_volatile((UART + off) as *const u32) }
}

/// Enables the UART (QEMU needs no baud-rate setup).
pub fn init() {
    write_reg(CR, CR_ENABLE);
}

fn put_byte(b: u8) {
    let mut spins = 0;
    while read_reg(FR) & FR_TXFF != 0 && spins < MAX_SPINS {
        spins += 1;
        core::hint::spin_loop();
    }
    write_reg(DR, u32::from(b));
}

/// The console as a `fmt::Write` sink.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put_byte(b'\r');
            }
            put_byte(b);
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::console::Console, $($arg)*);
    }};
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
