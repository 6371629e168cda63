//! One operation, repeated, for instruction counting under callgrind
//! (`scripts/callgrind.sh` runs every case and prints instructions per
//! operation).
//!
//! `callgrind_ops <who> <load> <op> <iterations>`
//!
//! * `who`: `io-pgtable` (coherent, no cache maintenance) or `aarch64-paging`;
//! * `load`: `1x4K`, `256x4K`, `256x2M` or `1G-as-4K`;
//! * `op`: `map`, `unmap` or `pair` (map then unmap).
//!
//! Only the measured operation runs inside `measured`, which callgrind is
//! told to count (`--toggle-collect`); the undo step (an unmap after a
//! measured map, a map before a measured unmap) and the setup are not
//! counted. Both crates unmap to zero descriptors (checked before counting).

#[path = "../benches/peer/mod.rs"]
mod peer;

use std::hint::black_box;

use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{El1And0, MemoryRegion};
use io_pgtable::env::{CleanMode, HostEnv};
use io_pgtable::{Config, Gather, Granule, PageTable, Prot};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// 2M-aligned, not 1G-aligned (as in the criterion bench).
const BASE: u64 = 0x40_0000_0000 + M2;
const PA: u64 = 0x80_0000_0000 + M2;
const PROT: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Map,
    Unmap,
    Pair,
}

/// One side of the comparison.
trait Subject {
    fn map(&mut self);
    fn unmap(&mut self);
    /// Panics unless the range is unmapped down to zero descriptors.
    fn check_unmapped(&self);
}

struct Ours {
    pt: PageTable<HostEnv>,
    pgsize: u64,
    count: u64,
}

impl Subject for Ours {
    fn map(&mut self) {
        self.pt
            .map(black_box(BASE), PA, self.pgsize, self.count as usize, PROT)
            .unwrap();
    }

    fn unmap(&mut self) {
        let mut g = Gather::new();
        self.pt
            .unmap(black_box(BASE), self.pgsize, self.count as usize, &mut g)
            .unwrap();
        black_box(g);
    }

    fn check_unmapped(&self) {
        let last = self.pt.walk(BASE).steps().last().map(|s| s.desc);
        assert_eq!(last, Some(0), "io-pgtable left a non-zero descriptor");
        assert_eq!(self.pt.translate(BASE + self.pgsize * self.count - 1), None);
    }
}

struct Theirs {
    t: IdMap<El1And0>,
    region: MemoryRegion,
    pgsize: u64,
}

impl Subject for Theirs {
    fn map(&mut self) {
        peer::map(&mut self.t, black_box(&self.region), self.pgsize);
    }

    fn unmap(&mut self) {
        peer::unmap(&mut self.t, black_box(&self.region), self.pgsize);
    }

    fn check_unmapped(&self) {
        peer::assert_unmapped(&self.t, &self.region);
    }
}

/// The counted region: exactly one operation.
#[inline(never)]
fn measured(s: &mut dyn Subject, op: Op) {
    match op {
        Op::Map => s.map(),
        Op::Unmap => s.unmap(),
        Op::Pair => {
            s.map();
            s.unmap();
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: callgrind_ops <io-pgtable|aarch64-paging> <1x4K|256x4K|256x2M|1G-as-4K> <map|unmap|pair> <iterations>"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [who, load, op, iters] = args.as_slice() else {
        usage()
    };
    let (pgsize, count) = match load.as_str() {
        "1x4K" => (K4, 1),
        "256x4K" => (K4, 256),
        "256x2M" => (M2, 256),
        "1G-as-4K" => (K4, G1 / K4),
        _ => usage(),
    };
    let op = match op.as_str() {
        "map" => Op::Map,
        "unmap" => Op::Unmap,
        "pair" => Op::Pair,
        _ => usage(),
    };
    let iters: u32 = iters.parse().unwrap_or_else(|_| usage());
    let mut subject: Box<dyn Subject> = match who.as_str() {
        "io-pgtable" => Box::new(Ours {
            pt: PageTable::new(
                Config::stage1(Granule::K4, 48, 48),
                HostEnv::new(CleanMode::Nop),
            )
            .unwrap(),
            pgsize,
            count,
        }),
        "aarch64-paging" => Box::new(Theirs {
            t: peer::table(),
            region: peer::region(BASE, pgsize * count),
            pgsize,
        }),
        _ => usage(),
    };
    // Warm up into the steady state, and prove the unmap is complete.
    subject.map();
    subject.unmap();
    subject.check_unmapped();
    for _ in 0..iters {
        if op == Op::Unmap {
            subject.map();
        }
        measured(subject.as_mut(), op);
        if op == Op::Map {
            subject.unmap();
        }
    }
    subject.check_unmapped();
}
