//! Maps a scatter-gather list for a non-coherent SMMU walker in deferred
//! mode, syncs it, checks what the walker would see, and prints what it
//! took: leaf PTEs written, cache lines cleaned, tables allocated.
//!
//! `cargo run -p io-pgtable --features sim --example sg_map`

use std::sync::Arc;

use io_pgtable::env::SimEnv;
use io_pgtable::{Config, Gather, Granule, PageTable, Prot, WalkCoherency};
use sim_memory::{Coherency, SimMemory};

/// A scatter-gather list: (physical address, length), mapped back to back.
const SG: [(u64, u64); 5] = [
    (0x8_0000_3000, 0x1000),
    (0x8_0020_0000, 0x40_0000),
    (0x8_1000_0000, 0x3000),
    (0x8_2000_0000, 0x20_0000),
    (0x8_3000_5000, 0x1_b000),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mem = Arc::new(SimMemory::new(
        0x4000_0000,
        16 << 20,
        Coherency::NonCoherent,
    )?);
    let cfg = Config::stage1(Granule::K4, 48, 48).with_coherency(WalkCoherency::Deferred);
    let pt = PageTable::new(cfg, SimEnv::new(mem.clone()))?;
    let prot = Prot::READ | Prot::WRITE | Prot::CACHE;
    let base = 0x10_0000_0000u64;
    let mut iova = base;
    for (pa, len) in SG {
        // Keep each segment congruent with its physical address so blocks
        // can be used where both are aligned.
        iova = iova.next_multiple_of(0x20_0000) + (pa & 0x1f_ffff);
        let n = pt.map_range(iova, pa, len, prot)?;
        println!("map   iova {iova:#014x} -> pa {pa:#014x} len {len:#9x}: {n:#x} bytes");
        pt.sync_map(iova, len)?;
        // Count the leaves that now map the segment.
        let mut leaves = 0;
        let mut va = iova;
        while va < iova + len {
            let step = pt.walk(va).steps().last().copied().ok_or("empty walk")?;
            let size = 1u64 << pt.geometry().level_shift[usize::from(step.level)];
            assert_eq!(pt.translate(va), Some(pa + (va - iova)));
            leaves += 1;
            va = (va & !(size - 1)) + size;
        }
        println!("      {leaves} leaf PTEs");
        iova += len;
    }
    let stats = mem.cache_stats();
    println!(
        "cache: {} clean calls, {} lines cleaned, {} redundant; {} lines still dirty",
        stats.clean_calls,
        stats.lines_cleaned,
        stats.redundant_lines,
        mem.all_dirty_lines()
    );
    println!(
        "tables: {} blocks, {} bytes of table memory",
        mem.blocks_allocated(),
        mem.bytes_allocated()
    );
    let mut g = Gather::new();
    let n = pt.unmap_range(base + 0x3000, 0x1000, &mut g)?;
    println!(
        "unmap {n:#x} bytes; gather {:#x}+{:#x} (page size {:#x}) for the TLB",
        g.start(),
        g.len(),
        g.pgsize()
    );
    Ok(())
}
