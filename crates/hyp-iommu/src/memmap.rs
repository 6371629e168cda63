//! The physical memory map the shadow is built from.

use alloc::vec::Vec;

use crate::error::Error;

/// The tracking granule: 4 KiB pages.
pub const PAGE: u64 = 4096;

/// A physical address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub base: u64,
    /// Bytes.
    pub len: u64,
}

impl Range {
    /// Returns the range `[base, base + len)`.
    pub const fn new(base: u64, len: u64) -> Self {
        Self { base, len }
    }

    /// Returns the end (exclusive).
    pub const fn end(&self) -> u64 {
        self.base + self.len
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.base < o.end() && o.base < self.end()
    }

    fn contains(&self, o: &Range) -> bool {
        o.base >= self.base && o.end() <= self.end()
    }
}

/// RAM, MMIO and the ranges the hypervisor keeps for itself, validated:
/// page aligned, non-empty, RAM and MMIO pairwise disjoint, every
/// hypervisor range inside one RAM range. Adjacent RAM ranges are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMap {
    ram: Vec<Range>,
    mmio: Vec<Range>,
    hyp: Vec<Range>,
}

impl MemoryMap {
    /// Returns the validated map.
    ///
    /// # Errors
    ///
    /// [`Error::Unaligned`], [`Error::Empty`], [`Error::Overflow`] for a
    /// bad range; [`Error::BadMemoryMap`] for overlaps or a hypervisor range
    /// outside RAM.
    pub fn new(ram: &[Range], mmio: &[Range], hyp: &[Range]) -> Result<Self, Error> {
        for r in ram.iter().chain(mmio).chain(hyp) {
            if r.base % PAGE != 0 {
                return Err(Error::Unaligned(r.base));
            }
            if r.len % PAGE != 0 {
                return Err(Error::Unaligned(r.len));
            }
            if r.len == 0 {
                return Err(Error::Empty);
            }
            r.base.checked_add(r.len).ok_or(Error::Overflow)?;
        }
        let mut all: Vec<Range> = ram.iter().chain(mmio).copied().collect();
        all.sort_by_key(|r| r.base);
        if all.windows(2).any(|w| w[0].overlaps(&w[1])) {
            return Err(Error::BadMemoryMap("RAM and MMIO ranges overlap"));
        }
        let mut hyps: Vec<Range> = hyp.to_vec();
        hyps.sort_by_key(|r| r.base);
        if hyps.windows(2).any(|w| w[0].overlaps(&w[1])) {
            return Err(Error::BadMemoryMap("hypervisor ranges overlap"));
        }
        let mut merged: Vec<Range> = Vec::new();
        let mut sorted = ram.to_vec();
        sorted.sort_by_key(|r| r.base);
        for r in sorted {
            match merged.last_mut() {
                Some(last) if last.end() == r.base => last.len += r.len,
                _ => merged.push(r),
            }
        }
        if !hyps.iter().all(|h| merged.iter().any(|r| r.contains(h))) {
            return Err(Error::BadMemoryMap("hypervisor range outside RAM"));
        }
        let mut mmio = mmio.to_vec();
        mmio.sort_by_key(|r| r.base);
        Ok(Self {
            ram: merged,
            mmio,
            hyp: hyps,
        })
    }

    /// Returns the RAM ranges (sorted, adjacent ones merged).
    pub fn ram(&self) -> &[Range] {
        &self.ram
    }

    /// Returns the MMIO ranges (sorted).
    pub fn mmio(&self) -> &[Range] {
        &self.mmio
    }

    /// Returns the hypervisor's ranges (sorted).
    pub fn hyp(&self) -> &[Range] {
        &self.hyp
    }

    /// Returns the highest address of the map plus one.
    pub fn end(&self) -> u64 {
        self.ram
            .iter()
            .chain(&self.mmio)
            .map(Range::end)
            .max()
            .unwrap_or(0)
    }

    /// Returns the host-owned parts of RAM at boot: RAM minus the
    /// hypervisor's ranges.
    pub fn host_ram(&self) -> Vec<Range> {
        let mut out = Vec::new();
        for r in &self.ram {
            let mut at = r.base;
            for h in self.hyp.iter().filter(|h| r.contains(h)) {
                if h.base > at {
                    out.push(Range::new(at, h.base - at));
                }
                at = h.end();
            }
            if at < r.end() {
                out.push(Range::new(at, r.end() - at));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn host_ram_excludes_hypervisor_ranges_and_merges_adjacent_ram() {
        let m = MemoryMap::new(
            &[
                Range::new(0x4000_0000, 0x10_0000),
                Range::new(0x4010_0000, 0x10_0000),
            ],
            &[Range::new(0x900_0000, 0x1000)],
            &[
                Range::new(0x4000_0000, 0x1000),
                Range::new(0x4010_0000, 0x2000),
            ],
        )
        .unwrap();
        assert_eq!(m.ram(), &[Range::new(0x4000_0000, 0x20_0000)]);
        assert_eq!(
            m.host_ram(),
            vec![
                Range::new(0x4000_1000, 0xf_f000),
                Range::new(0x4010_2000, 0xf_e000)
            ]
        );
        assert_eq!(m.end(), 0x4020_0000);
    }

    #[test]
    fn bad_maps_are_refused() {
        let ram = Range::new(0x4000_0000, 0x10_0000);
        assert_eq!(
            MemoryMap::new(&[Range::new(0x4000_0800, 0x1000)], &[], &[]),
            Err(Error::Unaligned(0x4000_0800))
        );
        assert_eq!(
            MemoryMap::new(&[Range::new(0x4000_0000, 0)], &[], &[]),
            Err(Error::Empty)
        );
        assert_eq!(
            MemoryMap::new(&[ram], &[Range::new(0x400f_f000, 0x2000)], &[]),
            Err(Error::BadMemoryMap("RAM and MMIO ranges overlap"))
        );
        assert_eq!(
            MemoryMap::new(&[ram], &[], &[Range::new(0x400f_f000, 0x2000)]),
            Err(Error::BadMemoryMap("hypervisor range outside RAM"))
        );
        assert_eq!(
            MemoryMap::new(&[Range::new(!0xfff, 0x1000)], &[], &[]),
            Err(Error::Overflow)
        );
    }
}
