//! EL2 entry, the EL2 exception vectors, system-register access and cache
//! maintenance.

use core::arch::{asm, global_asm};

// Entry from QEMU at EL2 (`-M virt,virtualization=on`), MMU and caches off,
// x0 = the device tree. FP/SIMD is untrapped (CPTR_EL2.TFP = 0; the other
// set bits are RES1) before any Rust code runs, because core::fmt and memcpy
// may use SIMD registers.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mov     x19, x0
    ldr     x1, =__stack_top
    mov     sp, x1
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    ldr     x1, =el2_vectors
    msr     vbar_el2, x1
    isb
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  mov     x0, x19
    bl      hyp_main
3:  wfe
    b       3b
"#
);

// The EL2 vector table. Only a synchronous exception from the host (lower
// EL, AArch64) is expected: it saves x0..x30 in a frame on the EL2 stack,
// lets `handle_host_sync` emulate or forward, restores the (possibly edited)
// frame and returns to the host. Anything else, including any exception taken
// at EL2 itself, ends the run with its syndrome printed. IRQs and FIQs are
// not routed here (HCR_EL2.IMO/FMO = 0): they go to the host directly.
global_asm!(
    r#"
    .macro unexpected idx
    .balign 128
    mov     x0, #\idx
    mrs     x1, esr_el2
    mrs     x2, elr_el2
    mrs     x3, far_el2
    mrs     x4, spsr_el2
    b       hyp_unexpected_entry
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global el2_vectors
el2_vectors:
    unexpected 0
    unexpected 1
    unexpected 2
    unexpected 3
    unexpected 4
    unexpected 5
    unexpected 6
    unexpected 7
    .balign 128
    b       host_sync_entry
    unexpected 9
    unexpected 10
    unexpected 11
    unexpected 12
    unexpected 13
    unexpected 14
    unexpected 15

host_sync_entry:
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mov     x0, sp
    bl      handle_host_sync
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #256
    eret

hyp_unexpected_entry:
    ldr     x5, =__exception_stack_top
    mov     sp, x5
    bl      hyp_unexpected
4:  wfe
    b       4b

    .section .bss.exception_stack, "aw", @nobits
    .balign 16
    .space  8192
__exception_stack_top:
"#
);

/// Names of the vector table entries, in table order.
const VECTOR_NAMES: [&str; 16] = [
    "sync (EL2t)",
    "irq (EL2t)",
    "fiq (EL2t)",
    "serror (EL2t)",
    "sync (EL2h)",
    "irq (EL2h)",
    "fiq (EL2h)",
    "serror (EL2h)",
    "sync (host, AArch64)",
    "irq (host, AArch64)",
    "fiq (host, AArch64)",
    "serror (host, AArch64)",
    "sync (host, AArch32)",
    "irq (host, AArch32)",
    "fiq (host, AArch32)",
    "serror (host, AArch32)",
];

/// Reports an exception the hypervisor does not handle and ends the run.
#[unsafe(no_mangle)]
extern "C" fn hyp_unexpected(index: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    let name = VECTOR_NAMES.get(index as usize).copied().unwrap_or("?");
    crate::println!(
        "HYP-EXCEPTION {name}: ESR={esr:#018x} (EC={:#04x}) ELR={elr:#018x} FAR={far:#018x} SPSR={spsr:#x}",
        hyp_host::esr::class(esr)
    );
    crate::stop(crate::semihost::EXIT_EXCEPTION)
}

/// Reads a system register by name.
macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading this EL2-accessible system register has no side
        // effects.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }};
}
pub(crate) use read_sysreg;

/// Returns the current exception level.
pub fn current_el() -> u64 {
    (read_sysreg!("CurrentEL") >> 2) & 3
}

/// Steps the host past the instruction that trapped (AArch64: 4 bytes).
pub fn skip_host_instruction() {
    let elr = read_sysreg!("elr_el2");
    // SAFETY: ELR_EL2 is only consumed by the `eret` that returns to the host;
    // pointing it at the next instruction is what emulating one means.
    unsafe { asm!("msr elr_el2, {}", in(reg) elr + 4, options(nomem, nostack, preserves_flags)) };
}

/// Cleans the data cache over `[addr, addr + len)` to the point of coherency,
/// so an observer with caches off (the host's early boot) sees the bytes.
pub fn clean_dcache(addr: u64, len: u64) {
    let ctr = read_sysreg!("ctr_el0");
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut a = addr & !(line - 1);
    while a < addr + len {
        // SAFETY: a clean writes dirty lines back; it changes no value any
        // observer reads, for any mapped address.
        unsafe { asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    // SAFETY: a barrier only orders memory accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Cleans and invalidates the data cache over `[addr, addr + len)` to the
/// point of coherency, so the CPU then reads what a device wrote (clean +
/// invalidate, never a bare invalidate: no dirty byte of a shared line is
/// lost).
pub fn clean_invalidate_dcache(addr: u64, len: u64) {
    let ctr = read_sysreg!("ctr_el0");
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut a = addr & !(line - 1);
    while a < addr.saturating_add(len) {
        // SAFETY: clean + invalidate writes dirty lines back first; it changes
        // no value any observer reads, for any mapped address.
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    // SAFETY: a barrier only orders memory accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Signals an event to every CPU (SEV): wakes a host CPU waiting in WFE for
/// a CMD_SYNC that asked for one.
pub fn send_event() {
    // SAFETY: the DSB makes earlier stores visible first; SEV only sets the
    // event register of the CPUs.
    unsafe { asm!("dsb ish", "sev", options(nostack, preserves_flags)) };
}
