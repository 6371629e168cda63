//! Instruction counts of trap-and-emulate, for callgrind (see
//! `scripts/emulation-cost.sh`):
//!
//! ```text
//! cargo build --release -p hyp-iommu --example emulation_cost
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='emulation_cost::measured*' \
//!     target/release/examples/emulation_cost <case> [count]
//! ```
//!
//! `case`:
//! * `read`: one emulated host register read (CMDQ_CONS);
//! * `write`: one emulated host register write (IRQ_CTRL);
//! * `tlbi`, `tlbi-bare`: one host TLBI_NH_VA + CMD_SYNC issued by the
//!   host's driver, through the emulation (forwarded at VMID 0) or on the
//!   bare SMMU;
//! * `e2e`, `e2e-bare`: a host 4K map, an 8-byte device write through it
//!   and the unmap (range TLBI + CMD_SYNC), through the emulation or with
//!   the same driver on the bare SMMU (stage 1, no hypervisor).
//!
//! Both sides of each pair run the same driver code on the same model,
//! coherent; the emulated side also walks the shadow stage 2 (nesting).

#[path = "../tests/common/mod.rs"]
mod common;

use common::Setup;
use common::host::{HostDomain, Trapped};
use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::command::{Command, TlbiAddr};
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

const SID: u32 = 0x10;
const IOVA: u64 = 0x4000_0000;

fn cfg() -> SmmuConfig {
    SmmuConfig {
        timeout_us: 20_000,
        ..SmmuConfig::default()
    }
}

#[inline(never)]
fn measured_read(t: &Trapped) -> u64 {
    t.emu
        .lock()
        .unwrap()
        .read(0, smmuv3::regs::CMDQ_CONS as u64, 4)
        .unwrap()
}

#[inline(never)]
fn measured_write(t: &Trapped, v: u64) {
    t.emu
        .lock()
        .unwrap()
        .write(0, smmuv3::regs::IRQ_CTRL as u64, 4, v)
        .unwrap();
}

#[inline(never)]
fn measured_issue<E: smmuv3::env::SmmuEnv>(s: &smmuv3::Smmu<E>, cmd: &Command) {
    s.issue(core::slice::from_ref(cmd), true).unwrap();
}

#[inline(never)]
fn measured_e2e<E: smmuv3::env::SmmuEnv>(
    d: &mut smmuv3::Domain<E>,
    pa: u64,
    dma: &dyn Fn() -> bool,
) {
    d.map(IOVA, pa, 4096, Prot::READ | Prot::WRITE).unwrap();
    assert!(dma());
    d.unmap(IOVA, 4096).unwrap();
}

/// One round of what the measured cases do, outside the count: the model
/// allocates its TLB's storage (megabytes by default) on the first fill,
/// which divided over the rounds counted would be charged to each.
fn warm_up<E: smmuv3::env::SmmuEnv>(
    s: &smmuv3::Smmu<E>,
    d: &mut smmuv3::Domain<E>,
    pa: u64,
    dma: &dyn Fn() -> bool,
    tlbi: &Command,
) {
    d.map(IOVA, pa, 4096, Prot::READ | Prot::WRITE).unwrap();
    assert!(dma());
    d.unmap(IOVA, 4096).unwrap();
    s.issue(core::slice::from_ref(tlbi), true).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let case = args.first().map_or("e2e", String::as_str);
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let tlbi = Command::TlbiNhVa {
        vmid: 0,
        asid: 1,
        at: TlbiAddr {
            addr: IOVA,
            leaf: true,
            ..TlbiAddr::default()
        },
    };
    let write = DmaRequest::write(SID, IOVA, 8);
    match case {
        "read" | "write" | "tlbi" | "e2e" => {
            let t = Trapped::new(Setup {
                coherency: Coherency::Coherent,
                ..Setup::default()
            });
            let host = t.host_smmu(0, cfg()).unwrap();
            let mut dom = HostDomain::new_stage1(&host, Granule::K4, 48).unwrap();
            host.attach(SID, None, &dom, AttachOptions::default())
                .unwrap();
            let pa = t.host_ram.alloc(4096).unwrap();
            let dma = || t.models[0].dma_write(&write, &[7; 8]).is_ok();
            warm_up(&host, &mut dom, pa, &dma, &tlbi);
            for i in 0..n {
                match case {
                    "read" => {
                        measured_read(&t);
                    }
                    "write" => measured_write(&t, i & 4),
                    "tlbi" => measured_issue(&host, &tlbi),
                    _ => measured_e2e(&mut dom, pa, &dma),
                }
            }
            let s = t.stats();
            println!(
                "{case}: {n} ops; host commands {} forwarded {} host syncs {} real syncs {} refused {}",
                s.commands, s.forwarded, s.host_syncs, s.real_syncs, s.refused_commands
            );
        }
        "tlbi-bare" | "e2e-bare" => {
            let sys =
                System::new(8 << 20, Coherency::Coherent, ModelConfig::default(), cfg()).unwrap();
            let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            sys.smmu
                .attach(SID, None, &dom, AttachOptions::default())
                .unwrap();
            let pa = sys.mem.alloc(4096).unwrap();
            let dma = || sys.model.dma_write(&write, &[7; 8]).is_ok();
            warm_up(&sys.smmu, &mut dom, pa, &dma, &tlbi);
            for _ in 0..n {
                if case == "tlbi-bare" {
                    measured_issue(&sys.smmu, &tlbi);
                } else {
                    measured_e2e(&mut dom, pa, &dma);
                }
            }
            println!("{case}: {n} ops");
        }
        _ => {
            eprintln!("unknown case {case}");
            std::process::exit(2);
        }
    }
}
