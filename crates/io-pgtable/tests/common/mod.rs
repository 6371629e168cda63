//! Test support: an independent device-side table walker over the device
//! view of simulated memory, a reference model of mappings, and helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use io_pgtable::env::SimEnv;
use io_pgtable::{Config, PageTable, Regs, WalkCoherency};
use sim_memory::{Coherency, POISON, SimMemory};

/// Where simulated table memory starts (below 4 GiB, so any oas fits).
pub const BASE: u64 = 0x1000_0000;

/// Returns simulated memory of `size` bytes, non-coherent unless `coherent`.
pub fn memory(coherent: bool, size: u64) -> Arc<SimMemory> {
    let c = if coherent {
        Coherency::Coherent
    } else {
        Coherency::NonCoherent
    };
    Arc::new(SimMemory::new(BASE, size, c).unwrap())
}

/// Returns simulated memory matching a walk coherency mode.
pub fn memory_for(mode: WalkCoherency, size: u64) -> Arc<SimMemory> {
    memory(mode == WalkCoherency::Coherent, size)
}

/// Returns a table over `mem`.
pub fn table(cfg: Config, mem: &Arc<SimMemory>) -> PageTable<SimEnv> {
    PageTable::new(cfg, SimEnv::new(mem.clone())).unwrap()
}

/// Walks `iova` as a non-coherent SMMU would: only through the device view,
/// deriving everything from the register values the driver would program.
///
/// Returns the output address, `Ok(None)` for a translation fault, or an
/// error when the walker read poisoned (never cleaned) or malformed memory.
pub fn dev_walk(mem: &SimMemory, regs: &Regs, iova: u64) -> Result<Option<u64>, String> {
    let (root, t0sz, tg0, ps, start) = match *regs {
        Regs::Stage1(r) => (r.ttbr, r.t0sz, r.tg0, r.ips, None),
        Regs::Stage2(r) => (r.vttbr, r.t0sz, r.tg0, r.ps, Some(r.sl0)),
    };
    let shift: u32 = match tg0 {
        0 => 12,
        1 => 16,
        2 => 14,
        _ => return Err(format!("bad TG0 {tg0}")),
    };
    let bpl = shift - 3;
    let ias = 64 - u32::from(t0sz);
    let lshift = |level: u32| shift + bpl * (3 - level);
    let start_level = match start {
        None => 4 - (ias - shift).div_ceil(bpl),
        Some(sl0) if shift == 12 => 2 - u32::from(sl0),
        Some(sl0) => 3 - u32::from(sl0),
    };
    let pa52 = ps == 6;
    let va = iova & ((1u64 << ias) - 1);
    let mut table = root;
    for level in start_level..=3 {
        let s = lshift(level);
        let bits = if level == start_level { ias - s } else { bpl };
        let idx = (va >> s) & ((1u64 << bits) - 1);
        let d = mem
            .dev_read_u64(table + 8 * idx)
            .map_err(|e| format!("walk read: {e}"))?;
        if d == POISON {
            return Err(format!(
                "level {level}: read uncleaned memory at {:#x}",
                table + 8 * idx
            ));
        }
        if d & 1 == 0 {
            return Ok(None);
        }
        let mut addr = d & 0x0000_ffff_ffff_ffff & !((1u64 << shift) - 1);
        if pa52 {
            addr |= ((d >> 12) & 0xf) << 48;
        }
        if level < 3 && d & 2 != 0 {
            table = addr;
            continue;
        }
        if level == 3 && d & 2 == 0 {
            return Err("reserved level-3 descriptor".into());
        }
        return Ok(Some(addr | (va & ((1u64 << s) - 1))));
    }
    Err("walked past level 3".into())
}

/// Asserts that the device walker and `translate` agree on `iova`.
pub fn assert_agree(pt: &PageTable<SimEnv>, iova: u64) {
    let mem = pt.env().mem();
    let dev = dev_walk(mem, &pt.regs(), iova);
    assert_eq!(
        dev,
        Ok(pt.translate(iova)),
        "device walker disagrees with translate at {iova:#x} ({:?})",
        pt.config()
    );
}

/// Reference model: disjoint mapped intervals `start -> (end, phys)`.
#[derive(Clone, Debug, Default)]
pub struct Model {
    m: BTreeMap<u64, (u64, u64)>,
}

impl Model {
    /// Returns whether any byte of `[lo, hi)` is mapped.
    pub fn any_mapped(&self, lo: u64, hi: u64) -> bool {
        if let Some((_, &(end, _))) = self.m.range(..=lo).next_back() {
            if end > lo {
                return true;
            }
        }
        self.m.range(lo..hi).next().is_some()
    }

    /// Records `[lo, hi)` -> `pa`.
    pub fn insert(&mut self, lo: u64, hi: u64, pa: u64) {
        self.m.insert(lo, (hi, pa));
    }

    /// Removes `[lo, hi)`, splitting intervals.
    pub fn remove(&mut self, lo: u64, hi: u64) {
        let keys: Vec<u64> = self
            .m
            .range(..hi)
            .filter(|(_, (end, _))| *end > lo)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let (end, pa) = self.m.remove(&k).unwrap();
            if k < lo {
                self.m.insert(k, (lo, pa));
            }
            if end > hi {
                self.m.insert(hi, (end, pa + (hi - k)));
            }
        }
    }

    /// Returns where `va` maps to.
    pub fn lookup(&self, va: u64) -> Option<u64> {
        let (&k, &(end, pa)) = self.m.range(..=va).next_back()?;
        (va < end).then(|| pa + (va - k))
    }

    /// Returns the mapped intervals.
    pub fn intervals(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.m.iter().map(|(&k, &(e, p))| (k, e, p))
    }

    /// Applies a map of `count` pages as `PageTable::map` must: entry by
    /// entry, stopping at the first one already (partly) mapped. Returns
    /// (bytes, whether it stopped on a conflict).
    pub fn map(&mut self, iova: u64, pa: u64, pgsize: u64, count: u64) -> (u64, bool) {
        for j in 0..count {
            let lo = iova + j * pgsize;
            if self.any_mapped(lo, lo + pgsize) {
                return (j * pgsize, true);
            }
            self.insert(lo, lo + pgsize, pa + j * pgsize);
        }
        (count * pgsize, false)
    }

    /// Applies an unmap as `PageTable::unmap` must: entry by entry, stopping
    /// at the first entry with nothing mapped. Returns the bytes.
    pub fn unmap(&mut self, iova: u64, pgsize: u64, count: u64) -> u64 {
        for j in 0..count {
            let lo = iova + j * pgsize;
            if !self.any_mapped(lo, lo + pgsize) {
                return j * pgsize;
            }
            self.remove(lo, lo + pgsize);
        }
        count * pgsize
    }
}
