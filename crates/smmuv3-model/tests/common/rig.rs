//! The stream the translation benchmarks, `translate_loop` and the
//! allocation test translate on: stage 1 (4K granule, 48-bit VA) through
//! one CD, or nested over an identity stage 2 of the first 16 MiB, with
//! one data page for the caller to map where its case needs.

use super::{H, MEM_BASE, Pt, S2, S2_RW, cd, ste_nested, ste_s1};
use smmuv3_model::{Coherency, ModelConfig};

/// The stream ID of the rig's stream.
pub const RIG_SID: u32 = 1;

/// A model with the rig's stream, its stage-1 table and its data page.
pub struct Rig {
    pub h: H,
    pub pt: Pt,
    pub page: u64,
    /// The stage-2 table of the nested rig.
    #[allow(dead_code)]
    pub s2pt: Option<Pt>,
}

/// Returns the rig over 16 MiB of coherent memory, with a TLB and walk
/// cache of `tlb_capacity` entries; nothing mapped yet.
pub fn rig(tlb_capacity: usize, nested: bool) -> Rig {
    let cfg = ModelConfig {
        tlb_capacity,
        ..ModelConfig::default()
    };
    rig_on(H::with(cfg, Coherency::Coherent, 16 << 20), nested)
}

/// Returns the rig on `h` (a model not enabled yet).
pub fn rig_on(mut h: H, nested: bool) -> Rig {
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    let s2pt = if nested {
        let s2pt = Pt::new_s2(&h, 12, 40, 1);
        for i in 0..8u64 {
            let a = MEM_BASE + i * (2 << 20);
            s2pt.map(&h, a, a, 2, S2_RW);
        }
        h.set_ste(RIG_SID, ste_nested(cdp, &S2::ipa40(1, s2pt.root)));
        Some(s2pt)
    } else {
        h.set_ste(RIG_SID, ste_s1(cdp, 0, 0, 0));
        None
    };
    let page = h.alloc(4096);
    Rig { h, pt, page, s2pt }
}
