//! CPU-time measurements of the DMA layer, robust on a shared machine: it
//! reads each thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, x86-64 Linux),
//! so time spent preempted is not counted (elsewhere: the wall clock).
//!
//! `cargo run --release -p dma-mapping --example dma_cputime` prints every
//! figure of BENCHMARKS.md; `-- OP` measures only OP; `-- OP ITERS
//! [THREADS]` runs one operation ITERS times on each of THREADS threads
//! (default 1) and nothing else, for `valgrind --tool=callgrind`
//! instruction counts (see BENCHMARKS.md). OP is one of the names printed.
//!
//! For the operations two CPUs can share (`iova_*`, `layer_*`) one run
//! measures 1 and 2 threads side by side and prints two ratios of 2-thread
//! over 1-thread throughput: from the threads' CPU time (what contention
//! costs each call) and from the wall clock (ops per second, which a
//! loaded machine lowers), with how much the two threads really overlapped.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../benches/host.rs"]
mod host;
#[path = "../benches/ops/mod.rs"]
mod ops;

use std::sync::{Arc, Barrier};
use std::time::Instant;

use ops::{Op, ops};

/// Returns this thread's CPU time in ns.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpu_ns() -> u128 {
    const CLOCK_GETTIME: usize = 228;
    const CLOCK_THREAD_CPUTIME_ID: usize = 3;
    let mut ts = [0i64; 2];
    let ret: isize;
    // SAFETY: clock_gettime writes one `struct timespec` (two i64 on
    // x86-64) to the pointer, which points at `ts`; the syscall
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

/// Returns the wall-clock ns since the first call (no thread CPU clock).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn cpu_ns() -> u128 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos()
}

/// One timed phase of `threads` threads running `op` at once.
struct Phase {
    /// CPU ns per call (the median of the threads' own CPU times).
    cpu_per_call: f64,
    /// Calls per second of all threads together, by the wall clock.
    wall_ops_per_s: f64,
    /// How many threads really ran at once: their summed CPU time over the
    /// wall time (2.0 = two threads on two cores all along).
    together: f64,
}

/// Runs `iters` calls of `op` on each of `threads` threads at once.
fn measure(op: &Op, threads: usize, iters: u64) -> Phase {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                host::set_cpu(t);
                common::set_cpu(t);
                for _ in 0..iters / 10 {
                    op(t);
                }
                barrier.wait();
                let start = cpu_ns();
                for _ in 0..iters {
                    op(t);
                }
                cpu_ns() - start
            })
        })
        .collect();
    barrier.wait();
    let wall = Instant::now();
    let cpu: Vec<u128> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let wall = wall.elapsed().as_nanos().max(1) as f64;
    let mut per: Vec<f64> = cpu.iter().map(|&c| c as f64 / iters as f64).collect();
    per.sort_by(f64::total_cmp);
    Phase {
        cpu_per_call: per[per.len() / 2],
        wall_ops_per_s: (threads as u64 * iters) as f64 * 1e9 / wall,
        together: cpu.iter().sum::<u128>() as f64 / wall,
    }
}

/// Runs `iters` calls on each of `threads` threads, untimed (callgrind).
fn just_run(op: &Op, threads: usize, iters: u64) {
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let op = op.clone();
            std::thread::spawn(move || {
                host::set_cpu(t);
                common::set_cpu(t);
                for _ in 0..iters {
                    op(t);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ops = ops();
    let find = |name: &str| {
        &ops.iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("unknown OP {name}"))
            .1
    };
    if args.len() >= 2 {
        let iters: u64 = args[1].parse().expect("ITERS");
        let threads: usize = args.get(2).map_or(1, |t| t.parse().expect("THREADS"));
        just_run(find(&args[0]), threads, iters);
        return;
    }
    let wall = Instant::now();
    println!(
        "{:<20} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8} {:>8}",
        "op", "1t cpu ns", "2t cpu ns", "cpu 2/1", "1t Mop/s", "2t Mop/s", "wall 2/1", "together"
    );
    for (name, op) in &ops {
        if args.first().is_some_and(|only| only != name) {
            continue;
        }
        let iters = if name.starts_with("iommu") || name.starts_with("map_sg") {
            20_000
        } else {
            2_000_000
        };
        let iters = if *name == "iova_vm_allocator" {
            2_000
        } else {
            iters
        };
        let shareable = name.starts_with("iova") || name.starts_with("layer");
        if !shareable {
            // Best of 5 runs, against preemption and frequency noise.
            let one = (0..5)
                .map(|_| measure(op, 1, iters).cpu_per_call)
                .fold(f64::MAX, f64::min);
            println!("{name:<20} {one:>10.1}");
            continue;
        }
        // 1 and 2 threads alternate, 5 rounds, so both see the same load;
        // each side keeps its best round (for 2 threads: the one where
        // the threads overlapped most, so contention shows).
        let mut one: Option<Phase> = None;
        let mut two: Option<Phase> = None;
        for _ in 0..5 {
            let a = measure(op, 1, iters);
            if one.as_ref().is_none_or(|o| a.cpu_per_call < o.cpu_per_call) {
                one = Some(a);
            }
            let b = measure(op, 2, iters);
            if two.as_ref().is_none_or(|t| b.together > t.together) {
                two = Some(b);
            }
        }
        let (one, two) = (one.unwrap(), two.unwrap());
        println!(
            "{name:<20} {:>10.1} {:>10.1} {:>7.2}x {:>10.2} {:>10.2} {:>7.2}x {:>8.2}",
            one.cpu_per_call,
            two.cpu_per_call,
            2.0 * one.cpu_per_call / two.cpu_per_call,
            one.wall_ops_per_s / 1e6,
            two.wall_ops_per_s / 1e6,
            two.wall_ops_per_s / one.wall_ops_per_s,
            two.together
        );
    }
    eprintln!("(wall time {:.1} s)", wall.elapsed().as_secs_f64());
}
