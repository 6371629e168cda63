//! The cache audit: every translation the model's caches would serve,
//! checked against what the structures and tables in memory say now.
//!
//! The model keeps stale entries as hardware does, so a missing
//! invalidation shows only when a device happens to use one. The audit
//! names them all at once: after an unmap, a detach or a donation
//! returns, a driver that invalidated everything it changed leaves none.
//!
//! Each check is a second translation by a throwaway copy of the SMMU with
//! empty caches over the same memory: read-only (the events it would
//! record go nowhere, and an access flag or dirty state update it would
//! make is taken as made but not written), so the audit changes nothing,
//! not even the statistics. An entry whose descriptor software made old
//! (AF clear) or clean again is therefore not reported: the SMMU would set
//! the flag back and translate as cached.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use core::convert::Infallible;

use super::context::{Ctx, Mode, NO_SSID, ctx_key_sid};
use super::{State, hot};
use crate::memory::DeviceMemory;
use crate::regs::cr0;
use crate::tlb::{Regime, Tlb, TlbEntry};
use crate::walk::{self, Access, S1Perm, Start, TableAttrs, TableCfg, Tables};
use crate::{DmaFault, DmaRequest, MemError, SmmuModel};

/// The most leaves of one cached entry the audit compares (a 1 GiB block
/// whose table now maps it as 4 KiB pages would be 262,144); the rest of
/// such an entry is counted in [`CacheAudit::unchecked`].
const MAX_STEPS: u32 = 1024;

/// A translation the model's caches serve that memory no longer gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleTranslation {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if the stream's context has one.
    pub ssid: Option<u32>,
    /// First input address of the stale part.
    pub iova: u64,
    /// Whether the stale part is the write permission (a read through it
    /// is still what memory says).
    pub write: bool,
    /// Output address the caches give for `iova`.
    pub cached_pa: u64,
    /// What a translation from memory gives now: the output address, or
    /// the fault.
    pub now: Result<u64, DmaFault>,
}

/// A table descriptor the walk cache holds that memory no longer gives:
/// walks of its range would start from a table software replaced or freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleWalk {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if the stream's context has one.
    pub ssid: Option<u32>,
    /// Whether it is a stage-2 table (else stage 1).
    pub stage2: bool,
    /// First input address (VA, or IPA at stage 2) the descriptor resolves.
    pub input: u64,
    /// The level of the table the cached descriptor points to.
    pub level: u32,
    /// The table the walk cache points to.
    pub cached_table: u64,
    /// The table memory points to now at that level, if any (`None`: the
    /// walk stops above it, or at it with a leaf).
    pub now: Option<u64>,
}

/// A stage-2 translation the TLB holds for a VMID that the stage-2 table
/// in memory no longer gives (checked where only nested streams use it;
/// a stage-2 stream's are [`StaleTranslation`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleStage2 {
    /// The VMID the entry is tagged with.
    pub vmid: u16,
    /// First intermediate physical address of the stale part.
    pub ipa: u64,
    /// Whether the stale part is the write permission.
    pub write: bool,
    /// Output address the TLB gives for `ipa`.
    pub cached_pa: u64,
    /// What the stage-2 table gives now (`None`: a fault).
    pub now: Option<u64>,
}

/// What [`SmmuModel::audit_caches`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheAudit {
    /// Cached translations memory no longer gives: each the first address
    /// of one cached entry, for one stream, where they differ.
    pub stale: Vec<StaleTranslation>,
    /// Walk-cache entries memory no longer gives: each once per stream
    /// using it.
    pub stale_walks: Vec<StaleWalk>,
    /// Stage-2 leaf entries only nested streams use that their stage-2
    /// table no longer gives.
    pub stale_stage2: Vec<StaleStage2>,
    /// Streams (StreamID, SubstreamID) whose cached configuration (STE,
    /// CD, and so the tables and tag their translations use) differs from
    /// what memory holds now, or no longer decodes: a missing CMD_CFGI.
    pub stale_configs: Vec<(u32, Option<u32>)>,
    /// Cached leaf and walk-cache entries no cached configuration uses (their ASID or
    /// VMID was dropped from every context without a TLBI): harmless until
    /// a new context takes that tag, which then starts with them.
    pub orphans: usize,
    /// Cached entries compared, leaf and walk-cache ones (each once per
    /// stream using it).
    pub checked: usize,
    /// Cached entries not compared in full: the leaves of an entry past
    /// 1,024 leaves.
    pub unchecked: usize,
}

impl CacheAudit {
    /// Returns whether nothing stale was found (orphans aside).
    pub fn is_clean(&self) -> bool {
        self.stale.is_empty()
            && self.stale_walks.is_empty()
            && self.stale_stage2.is_empty()
            && self.stale_configs.is_empty()
    }
}

/// The model's memory as the audit's second SMMU sees it: reads as the
/// model reads, no writes (a hardware update it tries loses the race).
#[derive(Debug)]
struct ReadOnly(Arc<dyn DeviceMemory>);

impl DeviceMemory for ReadOnly {
    fn coherent(&self) -> bool {
        self.0.coherent()
    }

    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.0.read(pa, buf)
    }

    fn write(&self, pa: u64, _data: &[u8]) -> Result<(), MemError> {
        Err(MemError::ExternalAbort { pa })
    }

    fn read_u64(&self, pa: u64) -> Result<u64, MemError> {
        self.0.read_u64(pa)
    }

    fn cmpxchg_u64(&self, pa: u64, old: u64, _new: u64) -> Result<Result<u64, u64>, MemError> {
        // Succeeds without writing: the walk goes on with the descriptor as
        // the SMMU's own access flag or dirty update would leave it, which
        // is what the model itself would translate with.
        self.0
            .read_u64(pa)
            .map(|now| if now == old { Ok(old) } else { Err(now) })
    }

    fn word_view(&self) -> Option<&[AtomicU64]> {
        self.0.word_view()
    }

    fn word_view_base(&self) -> u64 {
        self.0.word_view_base()
    }
}

impl State {
    /// Returns a copy of this SMMU with empty caches and the TLB off,
    /// over `mem` read-only, with its event queue off.
    fn shadow(&self) -> State {
        let mut regs = self.regs.clone();
        regs.cr0 &= !cr0::EVENTQEN;
        let mut tlb = Tlb::new(1);
        tlb.enabled = false;
        let shared = (
            Arc::new(hot::Hot::default()),
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
            Arc::new(super::sync_gate::AtomicBool::new(false)),
        );
        let mem: Arc<dyn DeviceMemory> = Arc::new(ReadOnly(self.mem.clone()));
        State::fresh(self.cfg.clone(), self.ids, mem, regs, tlb, shared)
    }
}

impl SmmuModel {
    /// Returns every translation the model's caches would serve that the
    /// stream table, context descriptors and translation tables in memory
    /// no longer give (a missing CMD_TLBI or CMD_CFGI), every table
    /// descriptor its walk cache holds that the tables no longer hold (a
    /// table replaced or freed after a leaf-only TLBI), and every cached
    /// configuration memory no longer holds.
    ///
    /// Each cached leaf entry is checked for each cached stream context
    /// that uses its tag, over its whole range (up to 1,024
    /// leaves of the current tables), for unprivileged data reads and,
    /// where the cache allows them, writes: what a device behind a
    /// vm-memory `IommuMemory` issues. Nothing the model or memory holds
    /// changes, statistics included. With SMMU_CR0.SMMUEN clear nothing is
    /// served from the caches and nothing is checked.
    ///
    /// Entries are stale in the window between a table change and its
    /// invalidation, and on purpose in lazy (deferred) invalidation until
    /// the flush: call it where the driver promises none.
    pub fn audit_caches(&self) -> CacheAudit {
        let s = self.lock();
        let mut audit = CacheAudit::default();
        if s.regs.cr0 & cr0::SMMUEN == 0 {
            return audit;
        }
        let mut shadow = s.shadow();
        let mut contexts: Vec<_> = s.ctx_cache.iter().map(|(k, c)| (*k, *c)).collect();
        contexts.sort_unstable_by_key(|(k, _)| *k);
        for (key, ctx) in &contexts {
            let (sid, ssid) = stream_of(*key);
            let base = crate::Event::new(crate::EventType::FTranslation, sid).with_ssid(ssid);
            if shadow.context(sid, ssid, base).ok() != Some(*ctx) {
                audit.stale_configs.push((sid, ssid));
            }
        }
        audit_walks(&s, &shadow.mem, &contexts, &mut audit);
        for (tag, ia, e) in s.tlb.leaf_entries() {
            let users: Vec<_> = contexts
                .iter()
                .filter(|(_, c)| c.tag == tag)
                .map(|(k, _)| stream_of(*k))
                .collect();
            if users.is_empty() {
                // A stage-2 entry only nested streams use: against their
                // stage-2 table (one per distinct table of that VMID).
                let mut tables: Vec<TableCfg> = Vec::new();
                for (_, c) in &contexts {
                    let s2 = c.ste.s2.filter(|s2| {
                        tag.regime == Regime::S2 && c.mode == Mode::Nested && s2.vmid == tag.vmid
                    });
                    if let Some(s2) = s2.filter(|s2| !tables.contains(&s2.tt)) {
                        tables.push(s2.tt);
                    }
                }
                if tables.is_empty() {
                    audit.orphans += 1;
                }
                for tt in tables {
                    audit.checked += 1;
                    check_stage2(&shadow.mem, &tt, tag.vmid, ia, &e, &mut audit);
                }
                continue;
            }
            let end = ia.saturating_add(1 << e.size_log2);
            for (sid, ssid) in users {
                audit.checked += 1;
                let (mut a, mut steps) = (ia, 0);
                while a < end {
                    if steps == MAX_STEPS {
                        audit.unchecked += 1;
                        break;
                    }
                    steps += 1;
                    let Some((unit, _)) = s.probe(sid, ssid, a, None) else {
                        // Not served from the caches here (a stream whose
                        // sizes or permissions do not take this entry).
                        break;
                    };
                    let cached_pa = unit.pa_base + (a - unit.iova_base);
                    let mut step = unit.iova_base + (1 << unit.size_log2) - a;
                    let mut stale = None;
                    for write in [false, true] {
                        if (write && !unit.write) || (!write && !unit.read) {
                            continue;
                        }
                        let req = DmaRequest {
                            ssid,
                            write,
                            ..DmaRequest::read(sid, a, 1)
                        };
                        match shadow.translate(&req, a) {
                            Ok(t) if t.pa == cached_pa => step = step.min(t.bytes_left),
                            now => {
                                stale = Some(StaleTranslation {
                                    sid,
                                    ssid,
                                    iova: a,
                                    write,
                                    cached_pa,
                                    now: now.map(|t| t.pa),
                                });
                                break;
                            }
                        }
                    }
                    if let Some(st) = stale {
                        audit.stale.push(st);
                        break;
                    }
                    a = a.saturating_add(step.max(1));
                }
            }
        }
        audit
    }
}

/// An unprivileged data read, the access the audit's walks make.
const READ: Access = Access {
    write: false,
    privileged: false,
    instruction: false,
};

/// A walk of `ia` through table `tt` from its root in `mem`, each table
/// address mapped by `fetch` (stage 2 of a nested stage 1, or none).
struct Fresh<E> {
    leaf: Result<crate::walk::Leaf, crate::walk::Halt<E>>,
    steps: crate::walk::WalkSteps,
    n: usize,
}

impl<E> Fresh<E> {
    fn walk(
        mem: &Arc<dyn DeviceMemory>,
        tt: &TableCfg,
        ia: u64,
        acc: Access,
        perm: S1Perm,
        fetch: &mut impl FnMut(u64) -> Result<u64, E>,
    ) -> Self {
        let mut steps = [(0, 0, TableAttrs::default()); 4];
        let mut n = 0;
        let leaf = walk::walk(
            Tables::new(&**mem),
            tt,
            Start::root(tt),
            ia,
            acc,
            perm,
            fetch,
            &mut steps,
            &mut n,
        );
        Self { leaf, steps, n }
    }

    /// Returns the table descriptor the walk found at the level whose
    /// lowest input bit is `lsb`: (next table, attributes down to it).
    fn step(&self, lsb: u32) -> Option<(u64, TableAttrs)> {
        self.steps[..self.n]
            .iter()
            .find(|st| st.0 == lsb)
            .map(|st| (st.1, st.2))
    }
}

/// Returns the (StreamID, SubstreamID) of a context cache key.
fn stream_of(key: u64) -> (u32, Option<u32>) {
    let ssid = key as u32;
    (ctx_key_sid(key), (ssid != NO_SSID).then_some(ssid))
}

/// Checks every walk-cache entry against a walk of the tables in memory
/// (through `mem`, read-only) for each cached context that would start a
/// walk from it: a stage-1 entry for the contexts of its tag, a stage-2
/// one for every context whose stage 2 has its VMID (stage-2 and nested
/// streams alike).
fn audit_walks(
    s: &State,
    mem: &Arc<dyn DeviceMemory>,
    contexts: &[(u64, Ctx)],
    audit: &mut CacheAudit,
) {
    for (tag, input, lsb, w) in s.tlb.walk_entries() {
        if tag.regime == Regime::Nested {
            audit_nested_walk(mem, contexts, (tag, input, lsb, w), audit);
            continue;
        }
        let users: Vec<_> = contexts
            .iter()
            .filter_map(|(key, c)| {
                let (tt, ia, perm) = if tag.regime == Regime::S2 {
                    let s2 = c.ste.s2.filter(|s2| s2.vmid == tag.vmid)?;
                    if !matches!(c.mode, Mode::S2 | Mode::Nested) {
                        return None;
                    }
                    (s2.tt, input, S1Perm::default())
                } else {
                    let cd = c.cd.filter(|_| c.tag == tag)?;
                    let (tt, ia, _) = cd.walk_input(input)?;
                    (*tt, ia, cd.perm)
                };
                // A walk only starts from an entry of its own granule.
                (tt.shift == w.granule_shift()).then_some((stream_of(*key), tt, ia, perm))
            })
            .collect();
        if users.is_empty() {
            audit.orphans += 1;
            continue;
        }
        for ((sid, ssid), tt, ia, perm) in users {
            audit.checked += 1;
            let Some(level) = (tt.start_level..3).find(|&l| tt.level_lsb(l) == lsb) else {
                continue;
            };
            let fresh = Fresh::<Infallible>::walk(mem, &tt, ia, READ, perm, &mut Ok);
            let now = fresh.step(lsb);
            if now != Some((w.next_table(), w.attrs())) {
                audit.stale_walks.push(StaleWalk {
                    sid,
                    ssid,
                    stage2: tag.regime == Regime::S2,
                    input,
                    level: level + 1,
                    cached_table: w.next_table(),
                    now: now.map(|st| st.0),
                });
            }
        }
    }
}

/// Checks stage-2 leaf entry `e` (cached for `ipa` under `vmid`) against
/// a walk of stage-2 table `tt` over its whole range (up to `MAX_STEPS`
/// leaves), for reads and, where cached, writes.
fn check_stage2(
    mem: &Arc<dyn DeviceMemory>,
    tt: &TableCfg,
    vmid: u16,
    ipa: u64,
    e: &TlbEntry,
    audit: &mut CacheAudit,
) {
    let end = ipa.saturating_add(1 << e.size_log2);
    let (mut a, mut steps) = (ipa, 0);
    while a < end {
        if steps == MAX_STEPS {
            audit.unchecked += 1;
            return;
        }
        steps += 1;
        let cached_pa = e.out_base + (a - ipa);
        let mut step = end - a;
        for write in [false, true] {
            let acc = Access {
                write,
                privileged: false,
                instruction: false,
            };
            if !e.perms.allows(acc) {
                continue;
            }
            let leaf = Fresh::<Infallible>::walk(mem, tt, a, acc, S1Perm::default(), &mut Ok).leaf;
            let now = leaf.ok().filter(|l| l.perms.allows(acc)).map(|l| {
                let off = a & ((1 << l.size_log2) - 1);
                step = step.min((1 << l.size_log2) - off);
                l.oa_base + off
            });
            if now != Some(cached_pa) {
                audit.stale_stage2.push(StaleStage2 {
                    vmid,
                    ipa: a,
                    write,
                    cached_pa,
                    now,
                });
                return;
            }
        }
        a = a.saturating_add(step.max(1));
    }
}

/// Returns the physical address stage-2 table `tt` gives `ipa` for a read,
/// walking the tables in memory.
fn stage2_read(mem: &Arc<dyn DeviceMemory>, tt: &TableCfg, ipa: u64) -> Option<u64> {
    let leaf = Fresh::<Infallible>::walk(mem, tt, ipa, READ, S1Perm::default(), &mut Ok)
        .leaf
        .ok()
        .filter(|l| l.perms.allows(READ))?;
    Some(leaf.oa_base + (ipa & ((1 << leaf.size_log2) - 1)))
}

/// Checks a nested stream's stage-1 walk-cache entry (its table addresses
/// are IPAs) against a stage-1 walk whose every table fetch goes through
/// the stream's stage-2 table in memory, for each cached context of its
/// tag.
fn audit_nested_walk(
    mem: &Arc<dyn DeviceMemory>,
    contexts: &[(u64, Ctx)],
    (tag, input, lsb, w): (crate::tlb::Tag, u64, u32, crate::tlb::WalkEntry),
    audit: &mut CacheAudit,
) {
    let mut used = false;
    for (key, c) in contexts.iter().filter(|(_, c)| c.tag == tag) {
        let (Some(cd), Some(s2)) = (c.cd, c.ste.s2) else {
            continue;
        };
        let Some((tt, ia, _)) = cd.walk_input(input) else {
            continue;
        };
        if tt.shift != w.granule_shift() {
            continue;
        }
        used = true;
        audit.checked += 1;
        let Some(level) = (tt.start_level..3).find(|&l| tt.level_lsb(l) == lsb) else {
            continue;
        };
        let mut fetch = |desc_ipa: u64| stage2_read(mem, &s2.tt, desc_ipa).ok_or(());
        let now = Fresh::walk(mem, tt, ia, READ, cd.perm, &mut fetch).step(lsb);
        if now != Some((w.next_table(), w.attrs())) {
            let (sid, ssid) = stream_of(*key);
            audit.stale_walks.push(StaleWalk {
                sid,
                ssid,
                stage2: false,
                input,
                level: level + 1,
                cached_table: w.next_table(),
                now: now.map(|st| st.0),
            });
        }
    }
    if !used {
        audit.orphans += 1;
    }
}
