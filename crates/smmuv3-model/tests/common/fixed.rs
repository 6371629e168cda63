//! A fixed-address setup (no allocator) written through any backend: two
//! streams, stage 1 and nested, over one 4K stage-1 table and an identity
//! stage 2.

use super::{S1_USER_RW, S2, cd, ste_nested, ste_s1};
use smmuv3_model::regs::{self, cr0};
use smmuv3_model::{DeviceMemory, GuestRam, ModelConfig, SmmuModel};
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const BASE: u64 = 0x8000_0000;
pub const SIZE: u64 = 4 << 20;
pub const STRTAB: u64 = BASE;
pub const CMDQ: u64 = BASE + 0x1000;
pub const EVTQ: u64 = BASE + 0x2000;
pub const CD0: u64 = BASE + 0x3000;
/// Stage-1 tables, levels 0..3, one page each.
pub const S1_L: [u64; 4] = [
    BASE + 0x10000,
    BASE + 0x11000,
    BASE + 0x12000,
    BASE + 0x13000,
];
/// Stage-2 tables: level 1 (concatenated start table of 4 entries), level 2.
pub const S2_L1: u64 = BASE + 0x20000;
pub const S2_L2: u64 = BASE + 0x21000;
pub const DATA: [u64; 3] = [BASE + 0x40000, BASE + 0x41000, BASE + 0x42000];
pub const VA: u64 = 0x1000_0000;

/// Writes the structures through `w(pa, words)`, then programs `m`.
pub fn setup(m: &SmmuModel, w: &dyn Fn(u64, &[u64])) {
    // Stage 1: 4K granule, 48-bit VA, four levels; VA -> DATA[0] RW,
    // VA + 4K -> DATA[1] RO, VA + 8K -> DATA[2] with AF clear.
    let idx = |l: u32| (VA >> (39 - 9 * l)) & 0x1ff;
    for l in 0..3u32 {
        w(S1_L[l as usize] + idx(l) * 8, &[S1_L[l as usize + 1] | 3]);
    }
    let leaf = idx(3);
    w(
        S1_L[3] + leaf * 8,
        &[
            DATA[0] | S1_USER_RW | 3,
            DATA[1] | S1_USER_RW | 1 << 7 | 3,
            DATA[2] | (S1_USER_RW & !(1 << 10)) | 3,
        ],
    );
    w(CD0, &cd(16, 0, 5, S1_L[0], 7));
    // Stage 2: 4K granule, 32-bit IPA from level 1; identity 2M blocks over
    // the first 4 MiB of memory.
    w(S2_L1 + (BASE >> 30) * 8, &[S2_L2 | 3]);
    for i in 0..2u64 {
        let ipa = BASE + (i << 21);
        w(S2_L2 + ((ipa >> 21) & 0x1ff) * 8, &[ipa | super::S2_RW | 1]);
    }
    let s2 = S2 {
        vmid: 3,
        t0sz: 32,
        sl0: 1,
        tg: 0,
        ps: 5,
        ttb: S2_L1,
    };
    w(STRTAB + 64, &ste_s1(CD0, 0, 0, 0));
    w(STRTAB + 128, &ste_nested(CD0, &s2));
    m.write64(regs::STRTAB_BASE, STRTAB);
    m.write32(regs::STRTAB_BASE_CFG, 2);
    m.write64(regs::CMDQ_BASE, CMDQ | 4);
    m.write64(regs::EVENTQ_BASE, EVTQ | 4);
    m.write32(regs::CR2, 0b110);
    m.write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN);
    assert_eq!(
        m.read32(regs::CR0ACK),
        cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN
    );
}

/// Returns a model over a vm-memory guest RAM of [`SIZE`] bytes at
/// [`BASE`], and the RAM.
#[allow(dead_code)]
pub fn guest_model(cfg: ModelConfig) -> (Arc<SmmuModel>, GuestRam<GuestMemoryMmap>) {
    let ram = GuestRam(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), SIZE as usize)]).unwrap(),
    );
    let m = Arc::new(SmmuModel::with_memory(cfg, Arc::new(ram.clone())).unwrap());
    (m, ram)
}

/// Returns a writer of little-endian words into `ram` (for [`setup`]).
#[allow(dead_code)]
pub fn writer(ram: &GuestRam<GuestMemoryMmap>) -> impl Fn(u64, &[u64]) + '_ {
    move |pa, words| {
        let b: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
        ram.write(pa, &b).unwrap();
    }
}
