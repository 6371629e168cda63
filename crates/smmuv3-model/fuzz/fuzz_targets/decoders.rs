//! Fuzzing of the decoders that read words a device or a firmware table
//! hands over: the driver's command and event decoders and its ID register
//! probe (cross-checked against the model's own ID registers), and the
//! io-pgtable configuration checks followed by a few bounded map / unmap /
//! translate calls. None may panic; round trips and cross-checks must agree.

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use io_pgtable::env::{CleanMode, HostEnv};
use io_pgtable::{
    Config, Gather, Geometry, Granule, PageTable, Prot, Quirks, Stage, WalkCoherency,
};
use libfuzzer_sys::fuzz_target;
use smmuv3::command::Command;
use smmuv3::probe::{self, IdRegs};
use smmuv3_model::{Coherency, ModelConfig, SimMemory, SmmuModel};

/// At most this many page-table operations per input.
const MAX_PT_OPS: usize = 16;
/// At most this many pages per map/unmap call.
const MAX_PAGES: usize = 64;

#[derive(Arbitrary, Debug)]
enum PtOp {
    Map {
        iova: u64,
        paddr: u64,
        size_log2: u8,
        count: u8,
        prot: u32,
    },
    Unmap {
        iova: u64,
        size_log2: u8,
        count: u8,
    },
    Translate(u64),
    Walk(u64),
}

#[derive(Arbitrary, Debug)]
struct PtInput {
    stage2: bool,
    granule: u8,
    ias: u32,
    oas: u32,
    coherency: u8,
    quirks: u32,
    ops: Vec<PtOp>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    commands: Vec<[u64; 2]>,
    events: Vec<[u64; 4]>,
    idr: [u32; 6],
    iidr: u32,
    aidr: u32,
    /// A model configuration whose ID registers the probe must accept.
    model: (u8, u8, u8, u8, bool, bool),
    pt: PtInput,
}

fn commands(words: &[[u64; 2]]) {
    for &w in words.iter().take(32) {
        let Ok(cmd) = Command::decode(w) else {
            continue;
        };
        // A decoded command is canonical: it encodes, and decodes back to
        // itself.
        let again = cmd.encode().expect("a decoded command re-encodes");
        assert_eq!(Command::decode(again), Ok(cmd), "command round trip");
    }
}

fn events(records: &[[u64; 4]]) {
    for &raw in records.iter().take(32) {
        let ev = smmuv3::event::Event::decode(raw);
        assert_eq!(ev.raw, raw, "the driver keeps the raw record");
        // The model's and the driver's decoders agree on the record.
        if let Some(m) = smmuv3_model::Event::decode(raw) {
            assert_eq!(ev.sid, m.sid, "event SID");
            assert_eq!(ev.ssid, m.ssid, "event SSID");
        }
    }
}

fn id_registers(input: &Input) {
    let ids = IdRegs {
        idr: input.idr,
        iidr: input.iidr,
        aidr: input.aidr,
    };
    if let Ok(f) = probe::parse(&ids) {
        assert!(f.oas_bits <= 52, "OAS {}", f.oas_bits);
        assert!(f.sid_bits <= 32);
        // Not asserted: `parse` accepts IDR1.SSIDSIZE above the
        // architectural 20 (reported to the smmuv3 owner, see README.md).
        let _ = f.ssid_bits;
        assert!(f.stage1 || f.stage2, "an accepted SMMU translates");
        assert_ne!(f.pgsize_bitmap, 0, "an accepted SMMU has a granule");
    }

    // Whatever a valid model configuration advertises, the driver accepts
    // and reads back the same way.
    let (preset, sid, ssid, oas, s1, s2) = input.model;
    let base = match preset % 4 {
        0 => ModelConfig::default(),
        1 => ModelConfig::qemu_like(),
        2 => ModelConfig::mmu600(0, 2),
        _ => ModelConfig::mmu700(0, 1),
    };
    let cfg = ModelConfig {
        sid_bits: sid % 33,
        ssid_bits: ssid % 21,
        oas_bits: [32, 36, 40, 42, 44, 48, 52][usize::from(oas % 7)],
        stage1: s1 || !s2,
        stage2: s2,
        cd2l: base.cd2l && ssid % 21 != 0,
        ..base
    };
    if cfg.validate().is_err() {
        return;
    }
    let mem = Arc::new(SimMemory::new(0x8000_0000, 1 << 16, Coherency::Coherent).unwrap());
    let model = SmmuModel::new(cfg.clone(), mem).expect("validated configuration");
    let m = model.id_regs();
    let ids = IdRegs {
        idr: m.idr,
        iidr: m.iidr,
        aidr: m.aidr,
    };
    let f = probe::parse(&ids).expect("the driver accepts what the model advertises");
    assert_eq!((f.stage1, f.stage2), (cfg.stage1, cfg.stage2));
    assert_eq!(f.sid_bits, cfg.sid_bits);
    assert_eq!(f.ssid_bits, cfg.ssid_bits);
    assert_eq!(f.oas_bits, cfg.oas_bits);
}

fn page_table(input: &PtInput) {
    let granule = match input.granule % 3 {
        0 => Granule::K4,
        1 => Granule::K16,
        _ => Granule::K64,
    };
    let coherency = match input.coherency % 3 {
        0 => WalkCoherency::Coherent,
        1 => WalkCoherency::NonCoherent,
        _ => WalkCoherency::Deferred,
    };
    let cfg = Config {
        stage: if input.stage2 {
            Stage::Stage2
        } else {
            Stage::Stage1
        },
        granule,
        ias: input.ias % 80,
        oas: input.oas % 80,
        coherency,
        quirks: Quirks::from_bits_retain(input.quirks),
    };
    let geo = Geometry::new(&cfg);
    let table = PageTable::new(cfg, HostEnv::new(CleanMode::Nop));
    assert_eq!(
        geo.is_ok(),
        table.is_ok(),
        "PageTable::new agrees with Geometry::new"
    );
    let Ok(table) = table else { return };
    let mut gather = Gather::new();
    for op in input.ops.iter().take(MAX_PT_OPS) {
        match *op {
            PtOp::Map {
                iova,
                paddr,
                size_log2,
                count,
                prot,
            } => {
                let pgsize = 1u64 << (size_log2 % 64);
                let count = usize::from(count) % MAX_PAGES;
                // Huge blocks only as one page: keep the work per input small.
                let count = if pgsize > 1 << 30 {
                    count.min(1)
                } else {
                    count
                };
                let prot = Prot::from_bits_truncate(prot);
                if let Ok(n) = table.map(iova, paddr, pgsize, count, prot) {
                    assert_eq!(
                        n as u64,
                        pgsize * count as u64,
                        "a full map maps everything"
                    );
                    if n > 0 && prot.intersects(Prot::READ | Prot::WRITE) {
                        assert_eq!(table.translate(iova), Some(paddr), "mapped start");
                        let last = n as u64 - 1;
                        assert_eq!(
                            table.translate(iova + last),
                            Some(paddr + last),
                            "mapped end"
                        );
                    }
                }
            }
            PtOp::Unmap {
                iova,
                size_log2,
                count,
            } => {
                let pgsize = 1u64 << (size_log2 % 64);
                let count = usize::from(count) % MAX_PAGES;
                let count = if pgsize > 1 << 30 {
                    count.min(1)
                } else {
                    count
                };
                let r = table.unmap(iova, pgsize, count, &mut gather);
                if r.is_ok_and(|n| n > 0 && n as u64 == pgsize * count as u64) {
                    assert_eq!(table.translate(iova), None, "unmapped start");
                }
            }
            PtOp::Translate(iova) => {
                let _ = table.translate(iova);
            }
            PtOp::Walk(iova) => {
                let w = table.walk(iova);
                assert!(w.steps().len() <= 4, "a walk has at most four levels");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    commands(&input.commands);
    events(&input.events);
    id_registers(&input);
    page_table(&input.pt);
});
