//! The costliest register accesses a hostile guest can build, timed (a
//! measurement, not a test: the doorbell case takes minutes):
//! `cargo run --release -p smmuv3-model --example guest_worst_case -- <doorbell|ste-fetch>`.
//!
//! `doorbell`: a TLB holding entries under `TAGS` (default 140,000) ASIDs
//! and a full queue (2^19 - 1) of TLBI_NH_ASID, each scanning every tag
//! chain; the doorbell and the polls of CMDQ_CONS that finish it, with
//! the longest single access. `ste-fetch`: an STE with CONT = 15 whose
//! span holds one different STE, fetched (and refused) on every DMA.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::H;
use common::guest::{cons, queue_tlbis, tlb_of_many_tags};
use smmuv3_model::regs;
use smmuv3_model::{Coherency, DmaRequest, ModelConfig};

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("doorbell") => worst_doorbell(),
        Some("ste-fetch") => worst_ste_fetch(),
        _ => {
            eprintln!("usage: guest_worst_case <doorbell|ste-fetch>");
            std::process::exit(2);
        }
    }
}

fn worst_doorbell() {
    let tags = std::env::var("TAGS").map_or(140_000u32, |v| v.parse().unwrap());
    let t = Instant::now();
    let mut r = tlb_of_many_tags(19, tags);
    eprintln!("fill {tags} tags: {:?}", t.elapsed());
    let n = (1u32 << 19) - 1;
    let prod = queue_tlbis(&mut r, n);
    let t = Instant::now();
    r.h.smmu.write32(regs::CMDQ_PROD, prod);
    let mut worst = t.elapsed();
    let mut accesses = 1u32;
    loop {
        let a = Instant::now();
        let c = cons(&r);
        worst = worst.max(a.elapsed());
        accesses += 1;
        if c == prod {
            break;
        }
    }
    eprintln!(
        "{n} TLBI_NH_ASID: {:?} over {accesses} register accesses, the longest {:?}",
        t.elapsed(),
        worst
    );
    assert!(
        worst < Duration::from_secs(1),
        "one register access took {worst:?}"
    );
}

/// The costliest STE fetch: STE.CONT = 15 promises 2^15 identical STEs,
/// which the model checks (reading 2 MiB) on each fetch; with the last one
/// different, the fetch faults and is not cached, so every DMA repeats it.
fn worst_ste_fetch() {
    let cfg = ModelConfig {
        tlb_capacity: 1 << 16,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, Coherency::Coherent, 64 << 20);
    h.enable_linear(16);
    let mut ste = common::ste_bypass();
    ste[1] |= 15 << 13;
    for sid in 0..1u32 << 15 {
        h.write_words(h.ste_at(sid), &ste);
    }
    h.w64(h.ste_at((1 << 15) - 1) + 8, ste[1] | 1 << 40);
    h.cfgi_ste(1);
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        assert!(h.smmu.translate(&DmaRequest::read(1, 0x4000, 4)).is_err());
    }
    eprintln!(
        "STE fetch over a CONT span of 2^15: {:?} each",
        t.elapsed() / n
    );
}
