//! CPU-time comparison of io-pgtable and aarch64-paging (4K granule), and a
//! memset of the same PTE bytes, robust on a shared machine: it reads this
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, x86-64 Linux), so time
//! spent preempted by other processes is not counted (elsewhere it falls
//! back to the wall clock).
//!
//! Both crates unmap to zero descriptors, as their users do (checked once
//! per workload before measuring; see `benches/peer/mod.rs`).
//!
//! `cargo run --release -p io-pgtable --example cputime`

#[path = "../benches/peer/mod.rs"]
mod peer;

use std::hint::black_box;
use std::time::Instant;

use io_pgtable::env::{CleanMode, Counting, HostEnv};
use io_pgtable::{Config, Gather, Granule, PageTable, Prot, WalkCoherency};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const BASE: u64 = 0x40_0000_0000 + M2;
const PA: u64 = 0x80_0000_0000 + M2;
const PROT: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
/// Returns this thread's CPU time in ns.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpu_ns(_start: Instant) -> u128 {
    const CLOCK_GETTIME: usize = 228;
    const CLOCK_THREAD_CPUTIME_ID: usize = 3;
    let mut ts = [0i64; 2];
    let ret: isize;
    // SAFETY: the clock_gettime system call writes one `struct timespec`
    // (two i64 on x86-64) to the pointer, which points at `ts`; the syscall
    // instruction clobbers rcx and r11 only.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") CLOCK_GETTIME as isize => ret,
            in("rdi") CLOCK_THREAD_CPUTIME_ID,
            in("rsi") ts.as_mut_ptr(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    assert_eq!(ret, 0, "clock_gettime failed");
    ts[0] as u128 * 1_000_000_000 + ts[1] as u128
}

/// Returns the wall-clock ns since `start` (no thread CPU clock here).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn cpu_ns(start: Instant) -> u128 {
    start.elapsed().as_nanos()
}

struct Clock(Instant);

impl Clock {
    fn now(&self) -> u128 {
        cpu_ns(self.0)
    }
}

/// Runs `op` then `undo` `n` times; returns the CPU ns of `op` alone when
/// `per_op` (one clock read per call, for long operations) or of the pair.
/// Best of 5 runs of `measure_once`.
fn measure(c: &Clock, n: u32, per_op: bool, mut op: impl FnMut(), mut undo: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| measure_once(c, n, per_op, &mut op, &mut undo))
        .fold(f64::INFINITY, f64::min)
}

fn measure_once(
    c: &Clock,
    n: u32,
    per_op: bool,
    mut op: impl FnMut(),
    mut undo: impl FnMut(),
) -> f64 {
    let mut total = 0u128;
    if per_op {
        for _ in 0..n {
            let t = c.now();
            op();
            total += c.now() - t;
            undo();
        }
    } else {
        let t = c.now();
        for _ in 0..n {
            op();
            undo();
        }
        total = c.now() - t;
    }
    total as f64 / f64::from(n)
}

fn ours(coherency: WalkCoherency, clean: CleanMode) -> PageTable<HostEnv> {
    let cfg = Config::stage1(Granule::K4, 48, 48).with_coherency(coherency);
    PageTable::new(cfg, HostEnv::new(clean)).unwrap()
}

fn main() {
    let c = Clock(Instant::now());
    let loads: [(&str, u64, u64, u32); 5] = [
        ("1x4K", K4, 1, 100_000),
        ("256x4K", K4, 256, 5_000),
        ("256x2M", M2, 256, 5_000),
        ("1G-as-4K", K4, G1 / K4, 20),
        ("1G-as-2M", M2, G1 / M2, 5_000),
    ];
    let modes = [
        ("coherent", WalkCoherency::Coherent, CleanMode::Nop),
        (
            "noncoherent-clflush",
            WalkCoherency::NonCoherent,
            CleanMode::Flush,
        ),
        (
            "deferred-clflush",
            WalkCoherency::Deferred,
            CleanMode::Flush,
        ),
    ];
    println!("CPU ns per operation (on-CPU time of this thread)");
    println!(
        "{:<10} {:<22} {:>12} {:>12} {:>12}",
        "load", "who", "map", "unmap", "map+unmap"
    );
    for (name, pgsize, count, n) in loads {
        let size = pgsize * count;
        let long = size == G1 && pgsize == K4;
        let mut first_pair = None;
        for (mode, coh, clean) in modes {
            let pt = ours(coh, clean);
            let map = || {
                pt.map(black_box(BASE), PA, pgsize, count as usize, PROT)
                    .unwrap();
                pt.sync_map(BASE, size).unwrap();
            };
            let unmap = || {
                let mut g = Gather::new();
                pt.unmap(black_box(BASE), pgsize, count as usize, &mut g)
                    .unwrap();
                black_box(g);
            };
            map();
            unmap();
            assert_eq!(pt.walk(BASE).steps().last().map(|s| s.desc), Some(0));
            let pair = measure(&c, n, false, map, unmap);
            let (m, u) = if long {
                (
                    measure(&c, n, true, map, unmap),
                    measure(&c, n, true, unmap, map),
                )
            } else {
                (f64::NAN, f64::NAN)
            };
            first_pair.get_or_insert(pair);
            println!(
                "{name:<10} {:<22} {m:>12.0} {u:>12.0} {pair:>12.0}",
                format!("io-pgtable/{mode}")
            );
        }
        let mut t = peer::table();
        let region = peer::region(BASE, size);
        let t = std::cell::RefCell::new(&mut t);
        let map = || peer::map(&mut t.borrow_mut(), black_box(&region), pgsize);
        let unmap = || peer::unmap(&mut t.borrow_mut(), black_box(&region), pgsize);
        map();
        unmap();
        peer::assert_unmapped(&t.borrow(), &region);
        let n_theirs = if long { n.min(20) } else { n / 4 };
        let pair = measure(&c, n_theirs, false, map, unmap);
        let (m, u) = if long {
            (
                measure(&c, n_theirs, true, map, unmap),
                measure(&c, n_theirs, true, unmap, map),
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        println!(
            "{name:<10} {:<22} {m:>12.0} {u:>12.0} {pair:>12.0}",
            "aarch64-paging"
        );
        let mut buf = vec![0u64; count as usize];
        let memset = measure(
            &c,
            n,
            false,
            || {
                // SAFETY: `buf` holds exactly `count` u64s.
                unsafe { std::ptr::write_bytes(black_box(buf.as_mut_ptr()), 0x5a, count as usize) };
                black_box(&buf);
            },
            || {},
        );
        println!("{name:<10} {:<22} {memset:>12.0}", "memset-pte-bytes");
        if let Some(ours) = first_pair {
            println!(
                "{name:<10} ratio aarch64-paging/io-pgtable (pair, coherent) = {:.1}",
                pair / ours
            );
        }
    }
    batched_single_pages(&c);
}

/// The seed-002 case: many single-page maps, then one sync. Deferred mode
/// cleans each dirty line once instead of once per page.
fn batched_single_pages(c: &Clock) {
    println!();
    println!("256 separate 4K maps + one sync_map, then one 256x4K unmap");
    println!(
        "{:<22} {:>12} {:>14} {:>14}",
        "mode", "CPU ns", "clean calls", "lines cleaned"
    );
    for (mode, coh) in [
        ("noncoherent-clflush", WalkCoherency::NonCoherent),
        ("deferred-clflush", WalkCoherency::Deferred),
    ] {
        let env = Counting::new(HostEnv::new(CleanMode::Flush));
        let cfg = Config::stage1(Granule::K4, 48, 48).with_coherency(coh);
        let pt = PageTable::new(cfg, &env).unwrap();
        let map = || {
            for k in 0..256 {
                let va = BASE + k * K4;
                pt.map(black_box(va), PA + k * K4, K4, 1, PROT).unwrap();
            }
            pt.sync_map(BASE, 256 * K4).unwrap();
        };
        let unmap = || {
            let mut g = Gather::new();
            pt.unmap(BASE, K4, 256, &mut g).unwrap();
        };
        map();
        unmap();
        env.reset_activity();
        map();
        let s = env.stats();
        unmap();
        let ns = measure(c, 2_000, false, map, unmap);
        println!(
            "{mode:<22} {ns:>12.0} {:>14} {:>14}",
            s.clean_calls, s.lines_cleaned
        );
    }
}
