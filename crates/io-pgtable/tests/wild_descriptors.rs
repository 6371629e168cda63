//! Descriptors that point outside simulated memory.
//!
//! Safe code can store any value into simulated memory, a table descriptor
//! naming a table that does not exist included, and the page table then
//! follows it. That must stay a translation fault, never undefined
//! behaviour: `SimEnv::phys_to_cpu` hands out a pointer into a zeroed
//! scratch area for every address outside the memory. Before that fix these
//! tests crashed the test binary (a walk through a dangling pointer), which
//! is why they live in their own binary.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{BASE, memory, table};
use io_pgtable::env::{SimEnv, TableMemory};
use io_pgtable::{Config, Gather, Granule, PageTable, Prot};
use sim_memory::SimMemory;

const MEM_SIZE: u64 = 1 << 20;
const TABLE_BIT: u64 = 0b11;

/// Table addresses outside `[BASE, BASE + MEM_SIZE)`, each aligned to the
/// largest granule so every granule's descriptor can hold it.
const WILD: [u64; 4] = [0, BASE - 0x1_0000, BASE + MEM_SIZE, 0xffff_ffff_0000];

fn configs() -> Vec<Config> {
    let mut v = Vec::new();
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        v.push(Config::stage1(g, 48, 48));
        v.push(Config::stage2(g, 40, 48));
    }
    v
}

/// Returns the span of one root entry.
fn root_span(pt: &PageTable<SimEnv>) -> u64 {
    let g = pt.geometry();
    1 << g.level_shift[g.start_level]
}

/// Points root entry 0 (IOVA 0 onwards) at `wild` as a next-level table.
fn plant(mem: &SimMemory, pt: &PageTable<SimEnv>, wild: u64) {
    mem.cpu_write_u64(pt.root_phys(), wild | TABLE_BIT).unwrap();
}

#[test]
fn translate_through_a_table_outside_memory_is_a_fault() {
    for cfg in configs() {
        for wild in WILD {
            let mem = memory(true, MEM_SIZE);
            let pt = table(cfg, &mem);
            plant(&mem, &pt, wild);
            let what = format!("{:?} {:?} table at {wild:#x}", cfg.stage, cfg.granule);
            let (span, pg) = (root_span(&pt), cfg.granule.size());
            for iova in [0, pg, span / 2, span - pg] {
                assert_eq!(pt.translate(iova), None, "{what}, iova {iova:#x}");
            }
            let walk = pt.walk(0);
            let steps = walk.steps();
            assert_eq!(steps.len(), 2, "{what}: root, then the wild table");
            assert_eq!(steps[0].desc, wild | TABLE_BIT, "{what}");
            assert_eq!(steps[1].desc, 0, "{what}: the wild table reads as empty");
            assert_eq!(mem.phys_of(steps[1].desc_phys as *const u8), None);
        }
    }
}

#[test]
fn unmap_through_a_table_outside_memory_unmaps_nothing() {
    for cfg in configs() {
        let mem = memory(true, MEM_SIZE);
        let pt = table(cfg, &mem);
        let buf = mem.alloc(0x1_0000).unwrap();
        let pg = cfg.granule.size();
        // A real mapping beside the wild entry must survive.
        let far = root_span(&pt);
        pt.map(far, buf, pg, 1, Prot::READ | Prot::WRITE).unwrap();
        plant(&mem, &pt, BASE + MEM_SIZE);
        let before = mem.bytes_allocated();
        let mut gather = Gather::new();
        let unmapped = match pt.unmap_range(0, far, &mut gather) {
            Ok(n) => n,
            Err(p) => p.done,
        };
        assert_eq!(unmapped, 0, "{:?} {:?}", cfg.stage, cfg.granule);
        assert!(gather.is_empty());
        assert_eq!(mem.bytes_allocated(), before);
        assert_eq!(pt.translate(far), Some(buf));
    }
}

#[test]
fn phys_to_cpu_outside_memory_is_a_zeroed_window_owned_by_the_env() {
    let mem = memory(false, MEM_SIZE);
    let env = SimEnv::new(mem.clone());
    for wild in WILD {
        let p = env.phys_to_cpu(wild);
        assert_eq!(
            mem.phys_of(p.as_ptr()),
            None,
            "{wild:#x} must not alias memory"
        );
        assert_eq!(p.as_ptr() as usize % 8, 0);
        // The contract of SimEnv: valid for the rest of the 1 MiB window.
        for i in 0..(16 * 0x1_0000 - (wild % (16 * 0x1_0000))) as usize / 8 {
            // SAFETY: SimEnv documents the pointer as valid, 8-aligned and
            // atomically accessed up to the end of its 1 MiB window.
            let w = unsafe { AtomicU64::from_ptr(p.as_ptr().cast::<u64>().add(i)) };
            assert_eq!(w.load(Ordering::Relaxed), 0, "{wild:#x} word {i}");
        }
    }
    // In-range addresses still get the memory itself.
    let pa = mem.alloc(4096).unwrap();
    assert_eq!(env.phys_to_cpu(pa).as_ptr(), mem.cpu_ptr(pa).unwrap());
    assert_eq!(
        env.phys_to_cpu(BASE + MEM_SIZE - 8).as_ptr(),
        mem.cpu_ptr(BASE + MEM_SIZE - 8).unwrap()
    );
}
