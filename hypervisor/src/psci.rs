//! The host's PSCI calls. SMC is trapped (HCR_EL2.TSC = 1) so that the
//! hypervisor sees SYSTEM_OFF and can report before the machine stops;
//! everything else is forwarded unchanged to QEMU's PSCI (an SMC from EL2).

use core::arch::asm;

/// PSCI SYSTEM_OFF.
const SYSTEM_OFF: u32 = 0x8400_0008;
/// PSCI SYSTEM_RESET.
const SYSTEM_RESET: u32 = 0x8400_0009;
/// PSCI CPU_ON (SMC32 and SMC64).
const CPU_ON: [u32; 2] = [0x8400_0003, 0xc400_0003];
/// PSCI return value DENIED.
const DENIED: u64 = -3i64 as u64;

/// What the caller does after a PSCI call.
pub enum Outcome {
    /// The call was handled; results are in x0..x3.
    Returned,
    /// The host turned the machine off.
    SystemOff,
    /// The host asked for a reset (the run ends too).
    SystemReset,
}

/// Handles the host's SMC with function id `regs[0]`.
pub fn handle(regs: &mut [u64; 31]) -> Outcome {
    let fid = regs[0] as u32;
    if fid == SYSTEM_OFF {
        return Outcome::SystemOff;
    }
    if fid == SYSTEM_RESET {
        return Outcome::SystemReset;
    }
    if CPU_ON.contains(&fid) {
        // A second CPU would enter the host's entry point with none of this
        // CPU's EL2 state; until per-CPU setup exists it is denied.
        crate::println!("HYP: PSCI CPU_ON for {:#x} denied (one CPU only)", regs[1]);
        regs[0] = DENIED;
        return Outcome::Returned;
    }
    let [mut x0, mut x1, mut x2, mut x3] = [regs[0], regs[1], regs[2], regs[3]];
    // SAFETY: with no EL3 QEMU implements SMC from EL2 as the PSCI/SMCCC
    // conduit: it reads x0..x7, writes results into x0..x3 and touches no
    // memory of ours; SMCCC lets it corrupt x4..x17, declared clobbered.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") x0, inout("x1") x1, inout("x2") x2, inout("x3") x3,
            inout("x4") regs[4] => _, inout("x5") regs[5] => _,
            inout("x6") regs[6] => _, inout("x7") regs[7] => _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    regs[..4].copy_from_slice(&[x0, x1, x2, x3]);
    Outcome::Returned
}
