//! Arm semihosting (QEMU `-semihosting`): the exit status of the run.

use core::arch::asm;

/// All scenarios passed.
pub const EXIT_PASS: u32 = 0;
/// At least one scenario failed.
pub const EXIT_FAIL: u32 = 1;
/// An unexpected exception ended the run.
pub const EXIT_EXCEPTION: u32 = 3;
/// A Rust panic ended the run.
pub const EXIT_PANIC: u32 = 4;

/// SYS_EXIT operation number.
const SYS_EXIT: u64 = 0x18;
/// ADP_Stopped_ApplicationExit: "the application exited", with a status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Ends the QEMU run; QEMU's own exit status becomes `status`.
pub fn exit(status: u32) -> ! {
    // The AArch64 SYS_EXIT parameter block: reason, then the exit status.
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: `hlt #0xf000` is the semihosting trap; QEMU reads the two words
    // at x1 and terminates. The block outlives the call.
    unsafe {
        asm!(
            "hlt #0xf000",
            in("x0") SYS_EXIT,
            in("x1") block.as_ptr(),
            options(nostack),
        );
    }
    // Only reached without -semihosting: make the hang visible, not silent.
    crate::println!("semihosting exit returned: run QEMU with -semihosting");
    loop {
        core::hint::spin_loop();
    }
}

/// SYS_GET_CMDLINE operation number.
const SYS_GET_CMDLINE: u64 = 0x15;

/// Reads the semihosting command line (QEMU: the `arg=` values of
/// `-semihosting-config`, joined by spaces) into `buf`.
///
/// Returns the command line, or `None` when semihosting gives none.
pub fn cmdline(buf: &mut [u8]) -> Option<&str> {
    let mut block = [buf.as_mut_ptr() as u64, buf.len() as u64];
    let ret: u64;
    // SAFETY: the semihosting call writes at most `block[1]` bytes into `buf`
    // and updates `block[1]` with the length; both outlive the call.
    unsafe {
        asm!(
            "hlt #0xf000",
            inout("x0") SYS_GET_CMDLINE => ret,
            in("x1") block.as_mut_ptr(),
            options(nostack),
        );
    }
    if ret != 0 {
        return None;
    }
    let len = (block[1] as usize).min(buf.len());
    core::str::from_utf8(&buf[..len])
        .ok()
        .map(|s| s.trim_end_matches('\0'))
}
