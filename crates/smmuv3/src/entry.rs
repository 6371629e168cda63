//! Hitless update of 64-byte configuration entries (STEs and CDs).
//!
//! The SMMU may read an entry at any moment, one 64-bit word at a time. An
//! update is hitless when every state the device can observe is either the
//! old or the new configuration *in the bits it uses*. The algorithm:
//!
//! 1. compute the bits the device uses in the current entry and in the
//!    target;
//! 2. write every bit the current configuration does not use (harmless),
//!    except in the one critical word of step 3;
//! 3. if at most one word still differs in bits the target uses, write that
//!    word (used and unused bits) in one single-copy-atomic store, then the
//!    remaining bits the new configuration no longer uses;
//! 4. otherwise break: clear V, write words 1..7, then word 0.
//!
//! Each step is followed by a sync (CFGI + CMD_SYNC) only when it changed
//! something, so the number of syncs per update is the minimum this
//! sequence allows; callers get that number back.

use crate::bits::Field;
use crate::layout::{cd, ste};

/// Words in an STE or CD.
pub const WORDS: usize = 8;
/// An STE or CD image.
pub type Entry = [u64; WORDS];

/// Which entry format is being updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Stream table entry.
    Ste,
    /// Context descriptor.
    Cd,
}

impl EntryKind {
    /// Returns the bits of `e` the SMMU interprets in its current state.
    pub fn used(self, e: &Entry) -> Entry {
        match self {
            Self::Ste => ste_used(e),
            Self::Cd => cd_used(e),
        }
    }

    fn valid(self) -> Field {
        match self {
            Self::Ste => ste::V,
            Self::Cd => cd::V,
        }
    }
}

/// Returns the bits of an STE the SMMU uses.
pub fn ste_used(e: &Entry) -> Entry {
    let mut u = [0u64; WORDS];
    u[0] = ste::V.mask();
    if ste::V.get(e[0]) == 0 {
        return u;
    }
    u[0] |= ste::CONFIG.mask();
    let cfg = ste::CONFIG.get(e[0]);
    let s1 = cfg == ste::CONFIG_S1 || cfg == ste::CONFIG_NESTED;
    let s2 = cfg == ste::CONFIG_S2 || cfg == ste::CONFIG_NESTED;
    if s1 {
        u[0] |= ste::S1FMT.mask() | ste::S1CTXPTR.mask() | ste::S1CDMAX.mask();
        u[1] |= ste::S1DSS.mask()
            | ste::S1CIR.mask()
            | ste::S1COR.mask()
            | ste::S1CSH.mask()
            | ste::S1STALLD.mask()
            | ste::STRW.mask()
            | ste::EATS.mask();
        if ste::S1DSS.get(e[1]) == ste::S1DSS_BYPASS {
            u[1] |= ste::SHCFG.mask();
        }
        // Stage-1 TLB entries of an EL1 stream are tagged with the VMID.
        u[2] |= ste::S2VMID.mask();
    }
    if s2 {
        u[1] |= ste::EATS.mask() | ste::STRW.mask() | ste::SHCFG.mask();
        u[2] |= ste::S2VMID.mask()
            | ste::S2VTCR.mask()
            | ste::S2AA64.mask()
            | ste::S2ENDI.mask()
            | ste::S2AFFD.mask()
            | ste::S2PTW.mask()
            | ste::S2S.mask()
            | ste::S2R.mask()
            | ste::S2FWB.mask();
        u[3] |= ste::S2TTB.mask();
    }
    if cfg == ste::CONFIG_BYPASS {
        u[1] |= ste::SHCFG.mask();
    }
    u
}

/// Returns the bits of a CD the SMMU uses.
pub fn cd_used(e: &Entry) -> Entry {
    let mut u = [0u64; WORDS];
    u[0] = cd::V.mask();
    if cd::V.get(e[0]) == 0 {
        return u;
    }
    for f in [
        cd::T0SZ,
        cd::TG0,
        cd::IR0,
        cd::OR0,
        cd::SH0,
        cd::EPD0,
        cd::ENDI,
        cd::EPD1,
        cd::IPS,
        cd::AFFD,
        cd::TBI,
        cd::AA64,
        cd::HD,
        cd::HA,
        cd::S,
        cd::R,
        cd::A,
        cd::ASET,
        cd::ASID,
    ] {
        u[0] |= f.mask();
    }
    if cd::EPD0.get(e[0]) == 0 {
        u[1] = cd::TTB0.mask();
    }
    u[cd::MAIR_WORD] = u64::MAX;
    u
}

/// The images to write in order, each followed by a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    steps: [Entry; 3],
    len: usize,
    /// The update had to break (make the entry invalid) in between.
    pub breaking: bool,
}

impl UpdatePlan {
    /// Returns the images, in write order.
    pub fn steps(&self) -> &[Entry] {
        &self.steps[..self.len]
    }

    /// Returns the number of syncs the update needs.
    pub fn syncs(&self) -> u32 {
        self.len as u32
    }

    fn push_if_changed(&mut self, prev: &Entry, next: Entry) -> Entry {
        if *prev != next {
            self.steps[self.len] = next;
            self.len += 1;
        }
        next
    }
}

/// Returns the update sequence from `cur` to `target`.
pub fn plan_update(kind: EntryKind, cur: &Entry, target: &Entry) -> UpdatePlan {
    let cur_used = kind.used(cur);
    let target_used = kind.used(target);
    let mut unused_update = [0u64; WORDS];
    let mut critical = 0u32; // bit i: word i changes in bits the target uses
    for i in 0..WORDS {
        unused_update[i] = (cur[i] & cur_used[i]) | (target[i] & !cur_used[i]);
        if (unused_update[i] & target_used[i]) != (target[i] & target_used[i]) {
            critical |= 1 << i;
        }
    }
    let mut plan = UpdatePlan {
        steps: [[0; WORDS]; 3],
        len: 0,
        breaking: false,
    };
    match critical.count_ones() {
        0 => {
            plan.push_if_changed(cur, *target);
        }
        1 => {
            let w = critical.trailing_zeros() as usize;
            // The critical word's unused bits go in with its single store.
            let mut s1 = unused_update;
            s1[w] = cur[w];
            let s1 = plan.push_if_changed(cur, s1);
            let mut s2 = s1;
            s2[w] = target[w];
            let s2 = plan.push_if_changed(&s1, s2);
            plan.push_if_changed(&s2, *target);
        }
        _ => {
            plan.breaking = true;
            let mut s1 = *cur;
            s1[0] = kind.valid().set(cur[0], 0);
            let s1 = plan.push_if_changed(cur, s1);
            let mut s2 = *target;
            s2[0] = s1[0];
            let s2 = plan.push_if_changed(&s1, s2);
            plan.push_if_changed(&s2, *target);
        }
    }
    plan
}

/// Applies `plan` to the live entry `live` (the current image, updated in
/// place): for each step, stores the words that differ through `store`
/// (word index, value), then calls `sync`.
///
/// Returns the number of syncs done.
///
/// # Errors
///
/// The first error `sync` returns; the entry is then left at the step that
/// failed (every intermediate state is safe for the device).
pub fn apply<E>(
    plan: &UpdatePlan,
    live: &mut Entry,
    mut store: impl FnMut(usize, u64),
    mut sync: impl FnMut() -> Result<(), E>,
) -> Result<u32, E> {
    let mut syncs = 0;
    for step in plan.steps() {
        for i in 0..WORDS {
            if live[i] != step[i] {
                store(i, step[i]);
                live[i] = step[i];
            }
        }
        sync()?;
        syncs += 1;
    }
    Ok(syncs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ste(cfg: u64) -> Entry {
        let mut e = [0u64; WORDS];
        e[0] = ste::V.make(1) | ste::CONFIG.make(cfg);
        e
    }

    #[test]
    fn invalid_ste_uses_only_v() {
        let u = ste_used(&[0; WORDS]);
        assert_eq!(u[0], 1);
        assert!(u[1..].iter().all(|&w| w == 0));
    }

    #[test]
    fn identical_entries_need_nothing() {
        let a = ste(ste::CONFIG_ABORT);
        assert_eq!(plan_update(EntryKind::Ste, &a, &a).syncs(), 0);
    }

    #[test]
    fn abort_bypass_is_hitless_in_two_syncs() {
        let abort = ste(ste::CONFIG_ABORT);
        let mut bypass = ste(ste::CONFIG_BYPASS);
        bypass[1] = ste::SHCFG.make(ste::SHCFG_INCOMING);
        let p = plan_update(EntryKind::Ste, &abort, &bypass);
        assert!(!p.breaking);
        assert_eq!(p.syncs(), 2);
        // Unused SHCFG first, then the critical word 0.
        assert_eq!(p.steps()[0][1], bypass[1]);
        assert_eq!(p.steps()[0][0], abort[0]);
        assert_eq!(p.steps()[1], bypass);
        let p = plan_update(EntryKind::Ste, &bypass, &abort);
        assert_eq!(p.syncs(), 2);
        assert_eq!(p.steps()[0][0], abort[0]);
        assert_eq!(
            p.steps()[0][1],
            bypass[1],
            "SHCFG cleared only after the switch"
        );
    }

    #[test]
    fn s1_to_s2_breaks() {
        let mut s1 = ste(ste::CONFIG_S1);
        s1[0] |= ste::S1CTXPTR.make(0x8000 >> 6);
        s1[1] = ste::S1DSS.make(ste::S1DSS_SSID0);
        let mut s2 = ste(ste::CONFIG_S2);
        s2[1] = ste::SHCFG.make(1);
        s2[2] = ste::S2VMID.make(3) | ste::S2AA64.make(1);
        s2[3] = 0x9000;
        let p = plan_update(EntryKind::Ste, &s1, &s2);
        assert!(p.breaking);
        assert_eq!(p.syncs(), 3);
        assert_eq!(ste::V.get(p.steps()[0][0]), 0);
        assert_eq!(ste::V.get(p.steps()[1][0]), 0);
        assert_eq!(p.steps()[2], s2);
    }

    #[test]
    fn intermediate_states_are_old_or_new_in_used_bits() {
        // For every pair of a few configurations, every state the device can
        // see (any prefix of word stores) is old, new or invalid in used bits.
        let mut cfgs = alloc::vec::Vec::new();
        cfgs.push([0u64; WORDS]);
        cfgs.push(ste(ste::CONFIG_ABORT));
        let mut b = ste(ste::CONFIG_BYPASS);
        b[1] = ste::SHCFG.make(1);
        cfgs.push(b);
        for dss in [0, 1, 2] {
            let mut s1 = ste(ste::CONFIG_S1);
            s1[0] |= ste::S1CTXPTR.make(0x4000 >> 6) | ste::S1CDMAX.make(3);
            s1[1] = ste::S1DSS.make(dss) | ste::S1CIR.make(1);
            if dss == 1 {
                s1[1] |= ste::SHCFG.make(1);
            }
            cfgs.push(s1);
        }
        let mut s2 = ste(ste::CONFIG_S2);
        s2[1] = ste::SHCFG.make(1);
        s2[2] = ste::S2VMID.make(7) | ste::S2T0SZ.make(24) | ste::S2AA64.make(1);
        s2[3] = 0x1_0000;
        cfgs.push(s2);
        let mut n = s2;
        n[0] =
            ste::V.make(1) | ste::CONFIG.make(ste::CONFIG_NESTED) | ste::S1CTXPTR.make(0x4000 >> 6);
        cfgs.push(n);
        for a in &cfgs {
            for b in &cfgs {
                let p = plan_update(EntryKind::Ste, a, b);
                let mut live = *a;
                let mut seen = alloc::vec![live];
                for step in p.steps() {
                    for i in 0..WORDS {
                        if live[i] != step[i] {
                            live[i] = step[i];
                            seen.push(live);
                        }
                    }
                }
                assert_eq!(live, *b);
                for s in &seen {
                    let u = ste_used(s);
                    let masked = |e: &Entry| core::array::from_fn::<u64, WORDS, _>(|i| e[i] & u[i]);
                    let ok =
                        ste::V.get(s[0]) == 0 || masked(s) == masked(a) || masked(s) == masked(b);
                    assert!(ok, "torn state {s:x?} between {a:x?} and {b:x?}");
                }
                assert!(p.syncs() <= 3);
            }
        }
    }

    #[test]
    fn cd_asid_change_alone_is_one_sync() {
        let mut a = [0u64; WORDS];
        a[0] = cd::V.make(1) | cd::ASID.make(1) | cd::AA64.make(1);
        a[1] = 0x8000;
        let mut b = a;
        b[0] = cd::ASID.set(b[0], 2);
        assert_eq!(plan_update(EntryKind::Cd, &a, &b).syncs(), 1);
        // ASID and TTB0 both change: two used words -> break.
        b[1] = 0x9000;
        let p = plan_update(EntryKind::Cd, &a, &b);
        assert!(p.breaking);
        assert_eq!(p.syncs(), 3);
    }

    #[test]
    fn apply_counts_syncs_and_stores_only_changes() {
        let abort = ste(ste::CONFIG_ABORT);
        let mut bypass = ste(ste::CONFIG_BYPASS);
        bypass[1] = ste::SHCFG.make(1);
        let p = plan_update(EntryKind::Ste, &abort, &bypass);
        let mut live = abort;
        let mut stores = alloc::vec::Vec::new();
        let n = apply::<()>(&p, &mut live, |i, v| stores.push((i, v)), || Ok(())).unwrap();
        assert_eq!(n, 2);
        assert_eq!(stores, [(1, bypass[1]), (0, bypass[0])]);
        assert_eq!(live, bypass);
        let err = apply(&p, &mut abort.clone(), |_, _| {}, || Err("timeout"));
        assert_eq!(err, Err("timeout"));
    }
}
