//! TLB invalidation planning: the fewest commands that invalidate an
//! address range, with range invalidation (IDR3.RIL) or without.
//!
//! Pure and allocation free, so a hypervisor can plan its stage-2 IPA
//! invalidations with exactly the code the host driver uses.

use crate::command::{Command, CommandError, TlbiAddr};

/// Largest NUM + 1 of a range TLBI.
const RANGE_NUM_MAX: u64 = 32;
/// Largest SCALE of a range TLBI.
const MAX_SCALE: u32 = 31;
/// First address of the upper (TTBR1) half of a 52-bit VA space.
const UPPER_HALF: u64 = !((1 << 52) - 1);

/// Which TLB entries an invalidation targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbiTarget {
    /// Stage-1 entries of one ASID (under a VMID; 0 when stage 2 is unused).
    Stage1 {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// Stage-2 entries of one VMID (IPA invalidation).
    Stage2 {
        /// VMID.
        vmid: u16,
    },
}

impl TlbiTarget {
    /// Returns the command invalidating everything of this target.
    pub fn all(&self) -> Command {
        match *self {
            Self::Stage1 { vmid, asid } => Command::TlbiNhAsid { vmid, asid },
            Self::Stage2 { vmid } => Command::TlbiS12Vmall { vmid },
        }
    }

    fn by_addr(&self, at: TlbiAddr) -> Command {
        match *self {
            Self::Stage1 { vmid, asid } => Command::TlbiNhVa { vmid, asid, at },
            Self::Stage2 { vmid } => Command::TlbiS2Ipa { vmid, at },
        }
    }
}

/// What to invalidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRequest {
    /// Entries of whom.
    pub target: TlbiTarget,
    /// First address of the range.
    pub iova: u64,
    /// Bytes in the range.
    pub size: u64,
    /// log2 of the table's translation granule (12, 14 or 16).
    pub granule_log2: u8,
    /// `Some(log2 leaf size)`: only leaf entries of that size changed (a
    /// level hint is sent); `None`: table entries changed too.
    pub leaf_log2: Option<u8>,
}

/// How the SMMU can be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiPolicy {
    /// Range invalidation is supported (IDR3.RIL).
    pub ril: bool,
    /// Without RIL, a range needing this many commands or more is
    /// invalidated by ASID/VMID instead (one command, and the refill cost
    /// is bounded by the range anyway).
    pub max_ops: u64,
}

impl TlbiPolicy {
    /// Returns the policy for an SMMU with or without RIL, switching to a
    /// full invalidation from 512 per-granule commands on (a 4 KiB table's
    /// worth of entries, as Linux does).
    pub const fn new(ril: bool) -> Self {
        Self { ril, max_ops: 512 }
    }
}

/// Iterator over the commands of a planned invalidation.
#[derive(Clone, Debug)]
pub struct TlbiPlan {
    target: TlbiTarget,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    All(bool),
    Range {
        addr: u64,
        pages: u64,
        tg_log2: u8,
        ttl: u8,
        leaf: bool,
    },
    Step {
        addr: u64,
        left: u64,
        step_log2: u8,
        ttl: u8,
        leaf: bool,
    },
}

/// Returns the level hint (TTL) for a leaf of `leaf_log2` bytes in tables
/// of `granule_log2`, or 0 when it is not a valid leaf size.
pub fn ttl_hint(granule_log2: u8, leaf_log2: u8) -> u8 {
    let Some(bits) = granule_log2.checked_sub(3).filter(|b| *b > 0) else {
        return 0;
    };
    let Some(above) = leaf_log2.checked_sub(granule_log2) else {
        return 0;
    };
    if above % bits != 0 {
        return 0;
    }
    // Levels 1..=3; a leaf above level 1 gets no hint (0).
    3u8.saturating_sub(above / bits)
}

/// Returns the commands (without the final CMD_SYNC) that invalidate the
/// request.
///
/// The range is first widened to whole granules (or whole leaves for
/// leaf-only requests without RIL). With RIL, a range without a level hint
/// whose page count is 1 modulo 32 is widened by one page: that saves a
/// command and avoids the reserved NUM = SCALE = TTL = 0 encoding.
///
/// # Errors
///
/// [`CommandError::BadRange`] for an unsupported granule, a leaf smaller
/// than the granule, or a range outside the lower 2^52 bytes (and, for a
/// stage-1 target, outside the upper 2^52 bytes of TTBR1 addresses).
pub fn plan(req: &TlbiRequest, policy: &TlbiPolicy) -> Result<TlbiPlan, CommandError> {
    let bad = || CommandError::BadRange {
        iova: req.iova,
        size: req.size,
        granule_log2: req.granule_log2,
    };
    let tg = req.granule_log2;
    if !matches!(tg, 12 | 14 | 16) {
        return Err(bad());
    }
    // Lower-half ranges end at 2^52 at most; stage-1 ranges may also lie in
    // the upper half (TTBR1, sign-extended VAs), ending at 2^64 at most.
    // The last byte, not the end, keeps the arithmetic in u64.
    let upper_ok = matches!(req.target, TlbiTarget::Stage1 { .. }) && req.iova >= UPPER_HALF;
    if req.size == 0 {
        if req.iova > 1 << 52 && !upper_ok {
            return Err(bad());
        }
        return Ok(TlbiPlan {
            target: req.target,
            kind: Kind::All(true),
        });
    }
    let last = req.iova.checked_add(req.size - 1).ok_or_else(bad)?;
    let lower = last < 1 << 52;
    if !lower && !upper_ok {
        return Err(bad());
    }
    let (leaf, ttl) = match req.leaf_log2 {
        Some(l) if l < tg || l > 52 => return Err(bad()),
        Some(l) => (true, ttl_hint(tg, l)),
        None => (false, 0),
    };
    let step_log2 = if policy.ril {
        tg
    } else {
        req.leaf_log2.unwrap_or(tg)
    };
    let start = req.iova >> step_log2 << step_log2;
    let last = last | ((1 << step_log2) - 1);
    let span = last - start + 1;
    let kind = if policy.ril {
        let mut pages = span >> tg;
        // A range command with NUM = SCALE = TTL = 0 is a reserved encoding;
        // only the first command can have SCALE = 0, so widening an odd
        // count by one page avoids it (and saves a command for non-leaf
        // ranges, as Linux does).
        let mut addr = start;
        if (!leaf || ttl == 0) && pages % RANGE_NUM_MAX == 1 {
            if last == u64::MAX {
                // No room above the top of the upper half: widen below.
                addr -= 1 << tg;
            }
            pages += 1;
        }
        Kind::Range {
            addr,
            pages,
            tg_log2: tg,
            ttl,
            leaf,
        }
    } else {
        let ops = span >> step_log2;
        if ops >= policy.max_ops {
            Kind::All(false)
        } else {
            Kind::Step {
                addr: start,
                left: ops,
                step_log2,
                ttl,
                leaf,
            }
        }
    };
    Ok(TlbiPlan {
        target: req.target,
        kind,
    })
}

impl TlbiPlan {
    /// Returns whether the plan invalidates everything of its target (one
    /// ASID- or VMID-wide command) rather than a range. For a stage-2
    /// target that command (`TLBI_S12_VMALL`) also removes the VMID's
    /// stage-1 and combined entries.
    pub fn is_whole_target(&self) -> bool {
        matches!(self.kind, Kind::All(_))
    }
}

impl Iterator for TlbiPlan {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        match &mut self.kind {
            Kind::All(done) => {
                if *done {
                    return None;
                }
                *done = true;
                Some(self.target.all())
            }
            Kind::Range {
                addr,
                pages,
                tg_log2,
                ttl,
                leaf,
            } => {
                if *pages == 0 {
                    return None;
                }
                // SCALE is 5 bits: beyond 2^31 granules, take up to 32
                // chunks of 2^31 at a time.
                let scale = pages.trailing_zeros().min(MAX_SCALE);
                let num = if scale == MAX_SCALE {
                    (*pages >> scale).min(RANGE_NUM_MAX)
                } else {
                    (*pages >> scale) % RANGE_NUM_MAX
                };
                let at = TlbiAddr {
                    addr: *addr,
                    leaf: *leaf,
                    ttl: *ttl,
                    tg: (*tg_log2 - 10) / 2,
                    scale: scale as u8,
                    num: (num - 1) as u8,
                };
                // Wraps to 0 after the last command of an upper-half range.
                *addr = addr.wrapping_add(num << (scale + u32::from(*tg_log2)));
                *pages -= num << scale;
                Some(self.target.by_addr(at))
            }
            Kind::Step {
                addr,
                left,
                step_log2,
                ttl,
                leaf,
            } => {
                if *left == 0 {
                    return None;
                }
                let at = TlbiAddr {
                    addr: *addr,
                    leaf: *leaf,
                    ttl: *ttl,
                    ..Default::default()
                };
                *addr = addr.wrapping_add(1 << *step_log2);
                *left -= 1;
                Some(self.target.by_addr(at))
            }
        }
    }
}

/// Returns the number of range commands needed to cover exactly `pages`
/// granules when each command covers n * 2^s granules (1 <= n <= 31 here,
/// as the planner uses): the number of 5-bit windows that cover the set bits
/// of `pages`. The tests check by brute force (allowing n up to 32) that no
/// split does better for every count up to 4096.
pub fn min_range_commands(pages: u64) -> u32 {
    let mut p = pages;
    let mut n = 0;
    while p != 0 {
        let s = p.trailing_zeros();
        p &= !(0x1f << s);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const S1: TlbiTarget = TlbiTarget::Stage1 { vmid: 0, asid: 5 };

    fn req(iova: u64, size: u64, leaf: Option<u8>) -> TlbiRequest {
        TlbiRequest {
            target: S1,
            iova,
            size,
            granule_log2: 12,
            leaf_log2: leaf,
        }
    }

    /// Returns the byte ranges the commands cover, or None for a full invalidation.
    fn covered(cmds: &[Command], granule_log2: u8) -> Option<Vec<(u64, u64)>> {
        let mut v = Vec::new();
        for c in cmds {
            match c {
                Command::TlbiNhVa { at, .. } | Command::TlbiS2Ipa { at, .. } => {
                    v.push((at.addr, at.addr + at.span(granule_log2)))
                }
                _ => return None,
            }
        }
        Some(v)
    }

    #[test]
    fn ril_examples() {
        let p = TlbiPolicy::new(true);
        // 1 MiB of 4K pages: 256 pages = 1 << 8 -> one command.
        let cmds: Vec<_> = plan(&req(0x10_0000, 1 << 20, Some(12)), &p)
            .unwrap()
            .collect();
        assert_eq!(cmds.len(), 1);
        let Command::TlbiNhVa { at, asid, .. } = cmds[0] else {
            panic!()
        };
        assert_eq!(asid, 5);
        assert_eq!(
            (at.tg, at.scale, at.num, at.ttl, at.leaf),
            (1, 8, 0, 3, true)
        );
        // 1 GiB: one command; 2M leaves get TTL 2.
        let n = plan(&req(0, 1 << 30, Some(21)), &p).unwrap().count();
        assert_eq!(n, 1);
        let Some(Command::TlbiNhVa { at, .. }) =
            plan(&req(0, 1 << 21, Some(21)), &p).unwrap().next()
        else {
            panic!()
        };
        assert_eq!(at.ttl, 2);
        // 33 pages non-leaf: widened to 34 = 17 * 2 -> one command.
        let cmds: Vec<_> = plan(&req(0, 33 << 12, None), &p).unwrap().collect();
        assert_eq!(cmds.len(), 1);
        // Leaf-only without a usable level hint (TTL 0): one page would be
        // the reserved NUM = SCALE = TTL = 0 form, so it is widened to two.
        let Some(Command::TlbiNhVa { at, .. }) = plan(&req(0, 4096, Some(13)), &p).unwrap().next()
        else {
            panic!()
        };
        assert_eq!((at.ttl, at.num, at.scale), (0, 0, 1), "two pages as 1 << 1");
        // 33 pages leaf-only: exact, two commands.
        assert_eq!(plan(&req(0, 33 << 12, Some(12)), &p).unwrap().count(), 2);
    }

    #[test]
    fn non_ril_steps_and_threshold() {
        let p = TlbiPolicy::new(false);
        assert_eq!(plan(&req(0, 1 << 20, Some(12)), &p).unwrap().count(), 256);
        // One 2M block: one command at the block's address.
        let cmds: Vec<_> = plan(&req(0x20_0000, 1 << 21, Some(21)), &p)
            .unwrap()
            .collect();
        assert_eq!(cmds.len(), 1);
        // 1 GiB of 4K pages exceeds 512 commands -> ASID-wide.
        let cmds: Vec<_> = plan(&req(0, 1 << 30, Some(12)), &p).unwrap().collect();
        assert_eq!(cmds, [Command::TlbiNhAsid { vmid: 0, asid: 5 }]);
        let s2 = TlbiRequest {
            target: TlbiTarget::Stage2 { vmid: 9 },
            ..req(0, 1 << 30, Some(12))
        };
        let cmds: Vec<_> = plan(&s2, &p).unwrap().collect();
        assert_eq!(cmds, [Command::TlbiS12Vmall { vmid: 9 }]);
    }

    #[test]
    fn bad_requests() {
        let p = TlbiPolicy::new(true);
        let mut r = req(0, 4096, None);
        r.granule_log2 = 13;
        assert!(plan(&r, &p).is_err());
        assert!(plan(&req(u64::MAX - 10, 4096, None), &p).is_err());
        assert!(plan(&req(0, 4096, Some(11)), &p).is_err());
    }

    #[test]
    fn huge_ranges_stay_encodable() {
        // 2^35 pages with RIL: SCALE saturates at 31, and 32 x 2^31 pages
        // cover it in one command.
        let cmds: Vec<_> = plan(&req(0, 1 << 47, None), &TlbiPolicy::new(true))
            .unwrap()
            .collect();
        for c in &cmds {
            c.encode().unwrap();
        }
        let v = covered(&cmds, 12).unwrap();
        assert_eq!(v, [(0, 1 << 47)]);
        // 2^36 + 2^31 pages: two chunks of scale 31 (32 and 1 of 2^31).
        let cmds: Vec<_> = plan(
            &req(0, (1 << 48) + (1 << 43), Some(12)),
            &TlbiPolicy::new(true),
        )
        .unwrap()
        .collect();
        let v = covered(&cmds, 12).unwrap();
        assert_eq!(v.last().unwrap().1, (1 << 48) + (1 << 43));
        // A leaf size far above the table's levels: no level hint, no panic.
        assert!(plan(&req(0, 1 << 48, Some(48)), &TlbiPolicy::new(false)).is_ok());
        assert_eq!(ttl_hint(12, 48), 0);
        assert_eq!(ttl_hint(3, 12), 0);
        assert_eq!(ttl_hint(0, 12), 0);
    }

    #[test]
    fn ttl_hints() {
        assert_eq!(ttl_hint(12, 12), 3);
        assert_eq!(ttl_hint(12, 21), 2);
        assert_eq!(ttl_hint(12, 30), 1);
        assert_eq!(ttl_hint(16, 16), 3);
        assert_eq!(ttl_hint(16, 29), 2);
        assert_eq!(ttl_hint(14, 25), 2);
        assert_eq!(ttl_hint(12, 13), 0);
    }

    /// Brute-force minimum number of range commands covering exactly n pages.
    fn brute_min(n: usize) -> Vec<u32> {
        let mut best = alloc::vec![u32::MAX; n + 1];
        best[0] = 0;
        for i in 1..=n {
            for s in 0..20 {
                for num in 1..=32usize {
                    let c = num << s;
                    if c <= i && best[i - c] != u32::MAX {
                        best[i] = best[i].min(best[i - c] + 1);
                    }
                }
            }
        }
        best
    }

    #[test]
    fn greedy_ril_is_minimal_for_exact_ranges() {
        let best = brute_min(4096);
        let p = TlbiPolicy::new(true);
        for (pages, &b) in best.iter().enumerate().skip(1) {
            let n = plan(&req(0, (pages as u64) << 12, Some(12)), &p)
                .unwrap()
                .count() as u32;
            assert_eq!(n, b, "pages={pages}");
            assert_eq!(min_range_commands(pages as u64), b, "pages={pages}");
        }
    }

    proptest! {
        #[test]
        fn plans_cover_exactly(
            first in 0u64..(1 << 24),
            pages in 1u64..5000,
            ril in any::<bool>(),
            leaf in any::<bool>(),
            tg in prop::sample::select(&[12u8, 14, 16][..]),
        ) {
            let iova = first << tg;
            let size = pages << tg;
            let r = TlbiRequest { target: S1, iova, size, granule_log2: tg, leaf_log2: leaf.then_some(tg) };
            let p = TlbiPolicy::new(ril);
            let cmds: Vec<_> = plan(&r, &p).unwrap().collect();
            match covered(&cmds, tg) {
                None => {
                    prop_assert!(!ril && pages >= p.max_ops);
                    prop_assert_eq!(cmds.len(), 1);
                }
                Some(v) => {
                    // Contiguous, in order, starting at iova.
                    let mut at = iova;
                    for (s, e) in &v {
                        prop_assert_eq!(*s, at);
                        at = *e;
                    }
                    if ril && !leaf && pages % 32 == 1 {
                        prop_assert_eq!(at, iova + size + (1 << tg));
                    } else {
                        prop_assert_eq!(at, iova + size);
                    }
                    if ril {
                        let want = if !leaf && pages % 32 == 1 { min_range_commands(pages + 1) } else { min_range_commands(pages) };
                        prop_assert_eq!(v.len() as u32, want);
                    } else {
                        prop_assert_eq!(v.len() as u64, pages);
                    }
                }
            }
            for c in &cmds {
                prop_assert!(c.encode().is_ok());
                if let Command::TlbiNhVa { at, .. } = c {
                    prop_assert!(!(at.tg != 0 && at.num == 0 && at.scale == 0 && at.ttl == 0), "reserved encoding {:?}", at);
                }
            }
        }

        #[test]
        fn unaligned_ranges_are_widened_not_shortened(
            iova in 0u64..(1 << 40),
            size in 1u64..(1 << 24),
            ril in any::<bool>(),
        ) {
            let r = TlbiRequest { target: S1, iova, size, granule_log2: 12, leaf_log2: Some(12) };
            let p = TlbiPolicy { ril, max_ops: u64::MAX };
            let cmds: Vec<_> = plan(&r, &p).unwrap().collect();
            let v = covered(&cmds, 12).unwrap();
            prop_assert!(v[0].0 <= iova && iova - v[0].0 < 4096);
            let end = v.last().unwrap().1;
            prop_assert!(end >= iova + size && end - (iova + size) < 4096);
        }
    }
}
