//! Scatter-gather mapping on a non-coherent walker, with deferred sync.
//!
//! Shows what io-pgtable asks of the platform for a realistic DMA mapping:
//! how many tables it allocates, how many leaf descriptors it writes, and
//! how many cache lines it cleans compared with the lines that really were
//! dirty (the minimum).

use std::fmt;
use std::sync::Arc;

use io_pgtable::env::{Counting, SimEnv};
use io_pgtable::{Config, Granule, PageTable, Prot, WalkCoherency};
use sim_memory::{Coherency, SimMemory};

/// Descriptor bits the walker ignores (software use).
const SW_BITS: u64 = 0xf << 55;

/// Physical base of the simulated RAM.
const RAM_BASE: u64 = 0x8000_0000;
/// Size of the simulated RAM.
const RAM_SIZE: u64 = 64 << 20;

/// One scatter-gather segment: physical address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical address of the buffer.
    pub phys: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What mapping a scatter-gather list cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgtableReport {
    /// Segments mapped.
    pub segments: usize,
    /// Bytes mapped.
    pub bytes: u64,
    /// Leaf descriptors written, by page size (size, count), ascending.
    pub leaves: Vec<(u64, u64)>,
    /// Tables allocated (including the start-level table).
    pub tables: u64,
    /// Bytes of table memory.
    pub table_bytes: u64,
    /// Cache lines holding CPU stores the walker could not see before sync.
    pub dirty_lines_before_sync: u64,
    /// Cache-clean calls made while mapping (new tables, table descriptors).
    pub clean_calls_map: u64,
    /// Cache-clean calls made by `sync_map`.
    pub clean_calls_sync: u64,
    /// Cache lines cleaned by `sync_map`.
    pub lines_cleaned_sync: u64,
    /// Lines cleaned that were already clean (wasted work), whole run.
    pub redundant_lines: u64,
    /// Descriptors the device reads that differ from the CPU's after sync
    /// (must be 0).
    pub device_mismatches: u64,
    /// Dirty lines left after sync (must be 0).
    pub dirty_lines_after_sync: u64,
}

impl fmt::Display for PgtableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  mapped {} segments, {} KiB",
            self.segments,
            self.bytes >> 10
        )?;
        let leaves: Vec<String> = self
            .leaves
            .iter()
            .map(|(size, n)| format!("{n} x {}", human(*size)))
            .collect();
        writeln!(f, "  leaf PTE writes: {}", leaves.join(", "))?;
        writeln!(
            f,
            "  tables allocated: {} ({} bytes)",
            self.tables, self.table_bytes
        )?;
        writeln!(
            f,
            "  cache-line cleans: {} calls while mapping (new tables + table descriptors)",
            self.clean_calls_map
        )?;
        writeln!(
            f,
            "  deferred sync_map: {} lines cleaned in {} calls; {} lines held dirty leaves; \
             {} already clean (shared with a table descriptor cleaned in map)",
            self.lines_cleaned_sync,
            self.clean_calls_sync,
            self.dirty_lines_before_sync - self.dirty_lines_after_sync,
            self.redundant_lines
        )?;
        write!(
            f,
            "  device view after sync: {} mismatching descriptors; {} lines differ \
             only in software-ignored bits",
            self.device_mismatches, self.dirty_lines_after_sync
        )
    }
}

/// Returns a human-readable size ("4K", "2M", "1G").
pub fn human(size: u64) -> String {
    match size {
        s if s >= 1 << 40 && s % (1 << 40) == 0 => format!("{}T", s >> 40),
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{}G", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}M", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}K", s >> 10),
        s => format!("{s}B"),
    }
}

/// Returns a deterministic scatter-gather list inside the simulated RAM:
/// a mix of single pages, page runs and one 2 MiB-aligned chunk large
/// enough for a block mapping.
pub fn sample_sg_list() -> Vec<Segment> {
    let mut v = Vec::new();
    let mut pa = RAM_BASE + (8 << 20);
    for i in 0..48u64 {
        let len = match i % 6 {
            0 => 4096,
            1 => 3 * 4096,
            2 => 16 * 4096,
            3 => 4096,
            4 => 64 * 4096,
            _ => 2 * 4096,
        };
        v.push(Segment { phys: pa, len });
        // Leave holes so segments are not physically contiguous.
        pa += len + 4096;
    }
    v.push(Segment {
        phys: RAM_BASE + (32 << 20),
        len: (2 << 20) + 8 * 4096,
    });
    v
}

/// Maps `sg` back to back from `iova_base` on a non-coherent walker in
/// deferred mode, syncs, and checks what the device sees.
///
/// # Errors
///
/// Returns a message when building the table, mapping or syncing fails.
pub fn run(sg: &[Segment], iova_base: u64) -> Result<PgtableReport, String> {
    let mem = Arc::new(
        SimMemory::new(RAM_BASE, RAM_SIZE, Coherency::NonCoherent).map_err(|e| e.to_string())?,
    );
    let env = Counting::new(SimEnv::new(mem.clone()));
    let cfg = Config::stage1(Granule::K4, 48, 40).with_coherency(WalkCoherency::Deferred);
    let pt = PageTable::new(cfg, env).map_err(|e| e.to_string())?;
    let prot = Prot::READ | Prot::WRITE | Prot::CACHE;

    // The start-level table was cleaned at creation; count from here.
    let clean_before = mem.cache_stats();
    let mut iova = iova_base;
    let mut spans = Vec::with_capacity(sg.len());
    for seg in sg {
        // Keep the IOVA congruent with the physical address modulo 2 MiB so
        // large aligned chunks can use blocks, as a DMA layer would.
        let want = seg.phys & ((2 << 20) - 1);
        iova = (iova & !((2 << 20) - 1))
            + want
            + if iova & ((2 << 20) - 1) > want {
                2 << 20
            } else {
                0
            };
        pt.map_range(iova, seg.phys, seg.len, prot)
            .map_err(|p| format!("map {iova:#x}: {} after {} bytes", p.error, p.done))?;
        spans.push((iova, seg.len));
        iova += seg.len;
    }
    let after_map = mem.cache_stats();
    let dirty_before = mem.all_dirty_lines();
    // One sync over the whole IOVA span, as a DMA layer does after mapping
    // a scatter-gather list: lines shared by neighbouring segments are then
    // cleaned once, not once per segment.
    let (first, last) = (spans[0].0, spans[spans.len() - 1]);
    pt.sync_map(first, last.0 + last.1 - first)
        .map_err(|e| e.to_string())?;
    let after_sync = mem.cache_stats();

    let mut leaves = std::collections::BTreeMap::<u64, u64>::new();
    let mut mismatches = 0;
    for &(va, len) in &spans {
        let mut off = 0;
        while off < len {
            let walk = pt.walk(va + off);
            let steps = walk.steps();
            let Some(last) = steps.last() else {
                return Err(format!("no walk for {:#x}", va + off));
            };
            for s in steps {
                // Bits 55..58 are ignored by the walker; io-pgtable marks a
                // table descriptor "cleaned" there after cleaning it.
                let dev = mem.dev_read_u64(s.desc_phys).map(|d| d & !SW_BITS);
                if dev != Ok(s.desc & !SW_BITS) {
                    mismatches += 1;
                }
            }
            let size = 1u64 << pt.geometry().level_shift[last.level as usize];
            *leaves.entry(size).or_default() += 1;
            off += size - ((va + off) & (size - 1));
        }
    }
    let stats = pt.env().stats();
    Ok(PgtableReport {
        segments: sg.len(),
        bytes: sg.iter().map(|s| s.len).sum(),
        leaves: leaves.into_iter().collect(),
        tables: stats.allocs,
        table_bytes: stats.bytes_live,
        dirty_lines_before_sync: dirty_before,
        clean_calls_map: after_map.clean_calls - clean_before.clean_calls,
        clean_calls_sync: after_sync.clean_calls - after_map.clean_calls,
        lines_cleaned_sync: after_sync.lines_cleaned - after_map.lines_cleaned,
        redundant_lines: after_sync.redundant_lines,
        device_mismatches: mismatches,
        dirty_lines_after_sync: mem.all_dirty_lines(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_sync_cleans_each_dirty_line_once_and_device_agrees() {
        let sg = sample_sg_list();
        let r = run(&sg, 0x1_0000_0000).unwrap();
        assert_eq!(r.segments, sg.len());
        assert_eq!(r.device_mismatches, 0);
        // Every line holding leaves was cleaned; a line counts as redundant
        // only when a table-descriptor clean in map already covered it (the
        // leaf shares a line with a table descriptor).
        assert!(r.lines_cleaned_sync >= r.dirty_lines_before_sync - r.dirty_lines_after_sync);
        assert!(r.redundant_lines <= r.clean_calls_map, "{r}");
        assert!(r.dirty_lines_after_sync <= r.tables, "{r}");
        // One 2M block for the big aligned chunk; the rest are 4K pages.
        let blocks = r.leaves.iter().find(|(s, _)| *s == 2 << 20).map(|l| l.1);
        assert_eq!(blocks, Some(1));
        let pages: u64 = r
            .leaves
            .iter()
            .filter(|(s, _)| *s == 4096)
            .map(|l| l.1)
            .sum();
        assert_eq!(pages * 4096 + (2 << 20), r.bytes);
    }
}
