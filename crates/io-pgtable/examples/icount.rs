//! Runs one operation N times, for instruction counting under
//! `valgrind --tool=callgrind --toggle-collect='icount::measured_*'`
//! (`scripts/icount.sh`): only the `measured_*` functions are counted, so
//! setup and the untimed half of a case (the map before an unmap) are not.
//!
//! ```sh
//! cargo run --release -p io-pgtable --features std --example icount -- map_unmap_4k 1000
//! ```

use std::hint::black_box;

use io_pgtable::env::HostEnv;
use io_pgtable::{Config, Gather, Granule, PageTable, Prot};

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
const M2: u64 = 2 << 20;

type Pt = PageTable<HostEnv>;

/// One 4K map and its unmap, as a driver calls them (the pair is counted).
#[inline(never)]
fn measured_map_unmap_4k(pt: &Pt, iova: u64) {
    let mut g = Gather::new();
    black_box(pt.map(iova, 0x8000_0000, 4096, 1, RW)).unwrap();
    black_box(pt.unmap(iova, 4096, 1, &mut g)).unwrap();
    black_box(g);
}

/// The unmap of 256 x 2M blocks (the map before it is not counted).
#[inline(never)]
fn measured_unmap_256x2m(pt: &Pt, iova: u64) {
    let mut g = Gather::new();
    black_box(pt.unmap(iova, M2, 256, &mut g)).unwrap();
    black_box(g);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let pt = PageTable::new(Config::stage1(Granule::K4, 48, 48), HostEnv::default()).unwrap();
    // Warm: the table paths of both cases exist before the loop.
    pt.map(0x40_0000, 0, 4096, 1, RW).unwrap();
    pt.map(0x4000_0000 + 511 * M2, 0, M2, 1, RW).unwrap();
    match case.as_str() {
        "map_unmap_4k" => {
            for _ in 0..n {
                measured_map_unmap_4k(&pt, black_box(0x20_0000));
            }
        }
        "unmap_256x2m" => {
            for _ in 0..n {
                black_box(pt.map(0x4000_0000, 0, M2, 256, RW)).unwrap();
                measured_unmap_256x2m(&pt, black_box(0x4000_0000));
            }
        }
        other => {
            eprintln!("unknown case {other:?}: map_unmap_4k | unmap_256x2m");
            std::process::exit(2);
        }
    }
}
