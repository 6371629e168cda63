//! AArch64 specifics: boot entry, exception vectors, barriers, cache maintenance.

pub mod mmu;

use core::arch::{asm, global_asm};

// Entry from QEMU at EL1 with the MMU and caches off. Only the boot CPU runs
// (QEMU's default is one CPU). Floating point and SIMD are enabled before any
// Rust code runs because core::fmt and memcpy may use SIMD registers.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    ldr     x0, =__stack_top
    mov     sp, x0
    mov     x0, #(3 << 20)          // CPACR_EL1.FPEN = 0b11: no FP/SIMD traps
    msr     cpacr_el1, x0
    ldr     x0, =exception_vectors
    msr     vbar_el1, x0
    isb
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    str     xzr, [x0], #8
    b       1b
2:  bl      kernel_main
3:  wfe
    b       3b
"#
);

// Sixteen 128-byte entries, 2 KiB aligned. Every entry funnels into one Rust
// handler with its index; nothing is expected to be taken (no interrupts are
// unmasked) so any exception is a test failure that ends the run.
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global exception_vectors
exception_vectors:
    .set vec_index, 0
    .rept 16
    .balign 128
    mov     x0, #vec_index
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    mrs     x4, spsr_el1
    b       exception_entry
    .set vec_index, vec_index + 1
    .endr

exception_entry:
    // A fault may come from a blown stack: switch to a small stack of its own.
    ldr     x5, =__exception_stack_top
    mov     sp, x5
    bl      handle_exception
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
    "sync (EL1t)",
    "irq (EL1t)",
    "fiq (EL1t)",
    "serror (EL1t)",
    "sync (EL1h)",
    "irq (EL1h)",
    "fiq (EL1h)",
    "serror (EL1h)",
    "sync (EL0 64)",
    "irq (EL0 64)",
    "fiq (EL0 64)",
    "serror (EL0 64)",
    "sync (EL0 32)",
    "irq (EL0 32)",
    "fiq (EL0 32)",
    "serror (EL0 32)",
];

/// Reports an unexpected exception and ends the run with a failure status.
#[unsafe(no_mangle)]
extern "C" fn handle_exception(index: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    let name = VECTOR_NAMES.get(index as usize).copied().unwrap_or("?");
    crate::println!(
        "EXCEPTION {name}: ESR={esr:#018x} (EC={:#04x} ISS={:#09x}) ELR={elr:#018x} FAR={far:#018x} SPSR={spsr:#x}",
        (esr >> 26) & 0x3f,
        esr & 0x1ff_ffff
    );
    crate::println!("RESULT: FAIL (exception)");
    crate::semihost::exit(crate::semihost::EXIT_EXCEPTION)
}

/// Full-system data synchronisation barrier.
#[inline]
pub fn dsb_sy() {
    // SAFETY: a barrier has no memory-safety effect; it only orders accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Returns the smallest data cache line size in bytes (CTR_EL0.DminLine).
pub fn dcache_line() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Which data cache maintenance to perform on a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOp {
    /// Clean to the point of coherency: the device sees what the CPU wrote.
    Clean,
    /// Invalidate: the CPU sees what the device wrote (lines must not be dirty
    /// with data that matters, so this is clean+invalidate to be safe).
    Invalidate,
}

/// Performs data cache maintenance by virtual address on `[addr, addr + len)`
/// (identity mapped, so the address is also the physical address), then a DSB.
pub fn dcache_range(op: CacheOp, addr: u64, len: u64) {
    if len == 0 {
        return;
    }
    let line = dcache_line() as u64;
    let mut a = addr & !(line - 1);
    let end = addr.saturating_add(len);
    while a < end {
        match op {
            // SAFETY: cleaning a line to PoC writes back data, it never changes
            // what any observer reads, for any address mapped in our tables.
            CacheOp::Clean => unsafe {
                asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags))
            },
            // SAFETY: clean+invalidate (rather than a bare invalidate) keeps
            // any dirty data in a shared line, so no CPU write is ever lost.
            CacheOp::Invalidate => unsafe {
                asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags))
            },
        }
        a += line;
    }
    dsb_sy();
}
