//! The host: its CPU stage 2, the EL2 controls it runs under, the entry into
//! Linux at EL1, and the traps it takes back into EL2.

use core::arch::asm;
use core::cell::UnsafeCell;

use hyp_host::dtb::Bank;
use hyp_host::esr::{self, Syndrome};
use hyp_host::mmio::{TrapWindow, TrappedMmio};
use hyp_host::stage2::{self, Stage2, Table};

use crate::arch::read_sysreg;
use crate::{layout, psci};

/// HCR_EL2: VM (stage 2 on), TSC (trap SMC), RW (EL1 is AArch64). IMO/FMO/AMO
/// stay 0, so the host takes its own interrupts; no WFI/WFE or ID traps.
const HCR: u64 = (1 << 0) | (1 << 19) | (1 << 31);
/// SPSR_EL2 for the host's entry: EL1h with D, A, I, F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// SCTLR_EL1 with its RES1 bits, MMU and caches off (the boot protocol).
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// CNTHCTL_EL2: EL1PCTEN | EL1PCEN, the host reads the physical counter and
/// programs the physical timer without traps.
const CNTHCTL: u64 = 0b11;

/// Tables for the host's stage 2 (the root pair and the splits), in the
/// hypervisor's own memory.
const STAGE2_TABLES: usize = 16;

/// Aligned to the concatenated root's 8 KiB, as VTTBR_EL2 requires.
#[repr(C, align(8192))]
struct Tables(UnsafeCell<[Table; STAGE2_TABLES]>);

// SAFETY: built once by `build_stage2` on the single CPU before the host runs;
// afterwards only the stage-2 walker reads it.
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables(UnsafeCell::new([Table::EMPTY; STAGE2_TABLES]));

/// What the hypervisor knows while the host runs.
pub struct State {
    /// The SMMU frame, trapped and emulated by the device chosen at boot.
    pub smmu: TrapWindow<&'static mut dyn TrappedMmio>,
    /// SMCs the host made (PSCI), forwarded or answered.
    pub smcs: u64,
    /// HVCs the host made (answered "not supported").
    pub hvcs: u64,
    /// Counter value when the host was entered.
    pub entered_ticks: u64,
}

struct Global(UnsafeCell<Option<State>>);

// SAFETY: one CPU; the state is set by the boot path before the host runs
// and afterwards only touched by the trap handler, which is not reentrant
// (EL2 runs with interrupts masked and takes no exception of its own).
unsafe impl Sync for Global {}

static STATE: Global = Global(UnsafeCell::new(None));

/// Puts `device` behind the trapped SMMU frame: from now on every host
/// access to `layout::SMMU .. + SMMU_SIZE` is emulated by it.
///
/// # Safety
///
/// Only before the host runs (the trap handler must not be using the state).
pub unsafe fn install_smmu(device: &'static mut dyn TrappedMmio) {
    // SAFETY: nothing else refers to the state before the host runs
    // (contract).
    unsafe {
        *STATE.0.get() = Some(State {
            smmu: TrapWindow::new(layout::SMMU, layout::SMMU_SIZE, device),
            smcs: 0,
            hvcs: 0,
            entered_ticks: 0,
        })
    };
}

/// Returns the hypervisor's state, or `None` before [`install_smmu`].
///
/// # Safety
///
/// No other reference to it may be live (true on the single CPU between
/// traps: each trap takes it once).
pub unsafe fn state() -> Option<&'static mut State> {
    // SAFETY: exclusive by the caller's contract.
    unsafe { (*STATE.0.get()).as_mut() }
}

/// Builds the host's stage 2: `ram` as Normal memory except `hyp` (the
/// hypervisor's own memory), every other IPA as Device memory except the
/// SMMU frame, so that each host access to it traps.
///
/// Returns the VTTBR_EL2 base and how many tables it used.
pub fn build_stage2(ram: &[Bank], hyp: Bank) -> Result<(u64, usize), stage2::Stage2Error> {
    let smmu = Bank {
        base: layout::SMMU,
        size: layout::SMMU_SIZE,
    };
    // SAFETY: called once, before the host runs; nothing else refers to the
    // tables (see `Tables`).
    let tables = unsafe { &mut *TABLES.0.get() };
    let pa = tables.as_ptr() as u64;
    let mut s2 = Stage2::new(tables, pa)?;
    s2.map_host(ram, &[hyp, smmu])?;
    // The hypervisor checks its own work before trusting the host with it.
    for probe in [
        hyp.base,
        hyp.base + hyp.size - 8,
        smmu.base,
        smmu.base + 0x100a8,
    ] {
        if s2.translate(probe).is_some() {
            return Err(stage2::Stage2Error::Overlap(probe));
        }
    }
    Ok((s2.root(), s2.tables_used()))
}

/// Enters the host at `entry` (EL1h, MMU off, x0 = `dtb`, x1..x3 = 0) under
/// the stage 2 at `vttbr`.
///
/// # Safety
///
/// `vttbr` is a complete stage 2 that keeps the hypervisor's memory out of
/// reach, `entry` is a loaded arm64 Image and `dtb` its device tree, cleaned
/// to the point of coherency.
pub unsafe fn enter(entry: u64, dtb: u64, vttbr: u64) -> ! {
    let midr = read_sysreg!("midr_el1");
    let mpidr = read_sysreg!("mpidr_el1");
    // SAFETY: configures the EL1&0 regime the host runs in and leaves EL2 for
    // good; the EL2 stack is reset for the traps that come back (nothing on
    // it is live any more). The stage-2 TLB is invalidated after VTTBR is set.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "msr hcr_el2, {hcr}",
            "msr cnthctl_el2, {cnthctl}",
            "msr cntvoff_el2, xzr",
            "msr vpidr_el2, {midr}",
            "msr vmpidr_el2, {mpidr}",
            "msr hstr_el2, xzr",
            "msr sctlr_el1, {sctlr}",
            "isb",
            "tlbi vmalls12e1",
            "dsb sy",
            "isb",
            "msr elr_el2, {entry}",
            "msr spsr_el2, {spsr}",
            // Every operand is consumed above, so x1..x5 are free now.
            "ldr x5, =__stack_top",
            "mov sp, x5",
            "mov x1, xzr",
            "mov x2, xzr",
            "mov x3, xzr",
            "eret",
            vtcr = in(reg) stage2::VTCR,
            vttbr = in(reg) vttbr,
            hcr = in(reg) HCR,
            cnthctl = in(reg) CNTHCTL,
            midr = in(reg) midr,
            mpidr = in(reg) mpidr,
            sctlr = in(reg) SCTLR_EL1_MMU_OFF,
            entry = in(reg) entry,
            spsr = in(reg) SPSR_EL1H_MASKED,
            in("x0") dtb,
            options(noreturn),
        )
    }
}

/// A synchronous exception from the host, with its registers (x0..x30) saved
/// by the vector: emulates an SMMU register access, forwards a PSCI call, or
/// ends the run visibly.
#[unsafe(no_mangle)]
extern "C" fn handle_host_sync(regs: &mut [u64; 31]) {
    let esr = read_sysreg!("esr_el2");
    // SAFETY: the handler is the only user of the state while the host is
    // stopped in this trap (single CPU, not reentrant).
    let Some(st) = (unsafe { state() }) else {
        crate::println!("HYP-UNHANDLED host trap before the SMMU device was installed");
        crate::stop(crate::semihost::EXIT_EXCEPTION)
    };
    match esr::decode(esr) {
        Syndrome::DataAbort(abort) => {
            let ipa = esr::fault_ipa(read_sysreg!("hpfar_el2"), read_sysreg!("far_el2"));
            match st.smmu.emulate(&abort, ipa, regs) {
                Ok(_) => crate::arch::skip_host_instruction(),
                Err(why) => {
                    crate::println!(
                        "HYP-REFUSED {why} (ESR={esr:#x} ELR={:#x} {abort:?})",
                        read_sysreg!("elr_el2")
                    );
                    crate::stop(crate::EXIT_REFUSED)
                }
            }
        }
        Syndrome::Smc(_) => {
            st.smcs += 1;
            match psci::handle(regs) {
                psci::Outcome::Returned => crate::arch::skip_host_instruction(),
                psci::Outcome::SystemOff => {
                    crate::println!("HYP: host called PSCI SYSTEM_OFF");
                    let status = if st.smmu.stats().refused == 0 {
                        crate::semihost::EXIT_PASS
                    } else {
                        crate::EXIT_REFUSED
                    };
                    crate::stop(status)
                }
                psci::Outcome::SystemReset => {
                    crate::println!("HYP: host called PSCI SYSTEM_RESET");
                    crate::stop(crate::EXIT_RESET)
                }
            }
        }
        Syndrome::Hvc(imm) => {
            // No hypervisor calls are offered: SMCCC NOT_SUPPORTED (-1). The
            // return address already points past the HVC.
            st.hvcs += 1;
            crate::println!("HYP: host HVC #{imm:#x} x0={:#x}: not supported", regs[0]);
            regs[0] = u64::MAX;
        }
        Syndrome::Other { ec, iss } => {
            crate::println!(
                "HYP-UNHANDLED host trap EC={ec:#04x} ISS={iss:#x} ELR={:#x} FAR={:#x}",
                read_sysreg!("elr_el2"),
                read_sysreg!("far_el2")
            );
            crate::stop(crate::semihost::EXIT_EXCEPTION)
        }
    }
}
