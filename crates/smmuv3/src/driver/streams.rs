//! Stream table, CD tables and stream attachment with hitless updates.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use io_pgtable::config::Regs;

use super::domain::{DomainKind, DomainShared};
use super::{Domain, ExternalStage2, Inner, Smmu, SmmuConfig, Stats, StrtabFormat};
use crate::Error;
use crate::command::{Command, atc_inv};
use crate::config::{CdFormat, CdTableRef, S1Dss, S2Ref, SteConfig, build_cd, build_ste};
use crate::entry::{Entry, EntryKind, WORDS, apply, plan_update};
use crate::env::{DmaMemory, SmmuEnv};
use crate::layout::{cd, ste};
use crate::mem::DevBlock;
use crate::probe::{Features, StallModel};
use crate::regs::{strtab_base, strtab_base_cfg};

/// Stream IDs resolved by one level-2 stream table (256 STEs, 16 KiB).
const STRTAB_SPLIT: u8 = 8;
/// Largest level-1 stream table, log2 of descriptors.
const STRTAB_L1_MAX_LOG2: u8 = 12;
/// CDs per 4 KiB level-2 CD table, log2.
const CD_L2_LOG2: u8 = 6;

/// Why a domain (or an external stage 2) of another SMMU is refused: its
/// ASID or VMID is allocated, and its invalidations issued, on its own SMMU
/// only, so this one would keep its translations after an unmap and could
/// share their tag with a domain of its own; and dropping it would detach
/// the stream on the wrong SMMU before freeing tables this one walks.
const FOREIGN_DOMAIN: Error = Error::Unsupported("the domain belongs to another SMMU");

/// A link a stream dropped: (domain, stream, substream).
type Gone = (Arc<DomainShared>, u32, Option<u32>);

/// A substream, the domain to attach it to, and the domain's table registers.
type Link<'a> = (Option<u32>, &'a Arc<DomainShared>, Regs);

/// How a stream is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachOptions {
    /// Handling of transactions without a substream ID once the stream has
    /// substreams.
    pub s1dss: S1Dss,
    /// Substream ID bits of the stream's CD table (0: one CD, no SSIDs).
    /// Attaching with a value different from the stream's current table
    /// replaces the table and detaches the stage-1 contexts it held.
    pub ssid_bits: u8,
    /// Enable ATS for the stream (needs IDR0.ATS); unmaps then send ATC_INV.
    pub ats: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            s1dss: S1Dss::Ssid0,
            ssid_bits: 0,
            ats: false,
        }
    }
}

/// What one configuration change cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Syncs spent updating the STE.
    pub ste_syncs: u32,
    /// Syncs spent updating the CD.
    pub cd_syncs: u32,
    /// Syncs spent installing new level-2 tables.
    pub setup_syncs: u32,
    /// The STE update had to break (pass through V = 0).
    pub breaking: bool,
}

impl Update {
    /// Returns every sync of the change.
    pub fn syncs(&self) -> u32 {
        self.ste_syncs + self.cd_syncs + self.setup_syncs
    }
}

enum Table {
    Linear {
        blk: DevBlock,
        log2: u8,
    },
    TwoLevel {
        l1: DevBlock,
        l2: Vec<Option<DevBlock>>,
        split: u8,
        log2: u8,
    },
}

struct CdTable {
    blk: DevBlock,
    two_level: bool,
    cdmax_log2: u8,
    l2: Vec<Option<DevBlock>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Abort,
    /// STE.V = 0: terminated like `Abort`, but every transaction is
    /// recorded as C_BAD_STE.
    Invalid,
    Bypass,
    Translate,
    /// Nested on the stream's stage 2 (`Master::s2`, an external one)
    /// with a CD table the driver does not own: a guest's or a trapped
    /// host's, at an IPA.
    Foreign(CdTableRef, S1Dss),
}

struct Master {
    sid: u32,
    mode: Mode,
    cd: Option<CdTable>,
    /// Stage-1 domains by CD index (the no-SSID attach uses CD 0).
    s1: BTreeMap<u32, (Option<u32>, Arc<DomainShared>, Regs)>,
    s2: Option<(Arc<DomainShared>, Regs)>,
    s1dss: S1Dss,
    ats: bool,
}

impl Master {
    fn new(sid: u32) -> Self {
        Self {
            sid,
            mode: Mode::Abort,
            cd: None,
            s1: BTreeMap::new(),
            s2: None,
            s1dss: S1Dss::Ssid0,
            ats: false,
        }
    }
}

pub(crate) struct Streams {
    table: Table,
    masters: BTreeMap<u32, Master>,
    /// Streams without a master get invalid STEs, not aborting ones
    /// (`Smmu::report_unattached`).
    report_unattached: bool,
}

fn abort_ste() -> Entry {
    let mut e = [0u64; WORDS];
    e[0] = ste::V.make(1) | ste::CONFIG.make(ste::CONFIG_ABORT);
    e
}

/// Returns word 0 of the STE a stream without a master gets (the other
/// words are zero either way).
fn idle_word(report_unattached: bool) -> u64 {
    if report_unattached { 0 } else { abort_ste()[0] }
}

/// Fills a fresh (zeroed) block of STEs with idle entries and cleans it.
fn init_stes(blk: &DevBlock, mem: &impl DmaMemory, report_unattached: bool) -> Result<(), Error> {
    let w0 = idle_word(report_unattached);
    for i in 0..blk.size() / 64 {
        blk.write(i * WORDS, w0);
    }
    blk.clean(mem, 0, blk.size())
}

impl Streams {
    pub(super) fn new(mem: &impl DmaMemory, cfg: &SmmuConfig, f: &Features) -> Result<Self, Error> {
        let two_level = match cfg.strtab {
            StrtabFormat::Auto => f.strtab_2lvl && f.sid_bits > STRTAB_SPLIT,
            StrtabFormat::Linear => false,
            StrtabFormat::TwoLevel if !f.strtab_2lvl => {
                return Err(Error::Unsupported("2-level stream table (IDR0.ST_LEVEL)"));
            }
            StrtabFormat::TwoLevel => true,
        };
        let table = if two_level {
            let split = STRTAB_SPLIT.min(f.sid_bits).max(6);
            let split = if split % 2 == 1 { split - 1 } else { split };
            let log2 = f.sid_bits.min(split + STRTAB_L1_MAX_LOG2).max(split);
            let l1_entries = 1usize << (log2 - split);
            let l1 = DevBlock::alloc(mem, l1_entries * 8)?;
            l1.clean(mem, 0, l1.size())?;
            Table::TwoLevel {
                l1,
                l2: (0..l1_entries).map(|_| None).collect(),
                split,
                log2,
            }
        } else {
            let log2 = f.sid_bits.min(cfg.linear_max_log2);
            let blk = DevBlock::alloc(mem, (1usize << log2) * 64)?;
            init_stes(&blk, mem, false)?;
            Table::Linear { blk, log2 }
        };
        Ok(Self {
            table,
            masters: BTreeMap::new(),
            report_unattached: false,
        })
    }

    pub(super) fn base_regs(&self) -> (u64, u32) {
        match &self.table {
            Table::Linear { blk, log2 } => (
                strtab_base::RA.make(1) | (blk.phys() & strtab_base::ADDR.mask()),
                (strtab_base_cfg::LOG2SIZE.make((*log2).into())
                    | strtab_base_cfg::FMT.make(strtab_base_cfg::FMT_LINEAR))
                    as u32,
            ),
            Table::TwoLevel {
                l1, split, log2, ..
            } => (
                strtab_base::RA.make(1) | (l1.phys() & strtab_base::ADDR.mask()),
                (strtab_base_cfg::LOG2SIZE.make((*log2).into())
                    | strtab_base_cfg::SPLIT.make((*split).into())
                    | strtab_base_cfg::FMT.make(strtab_base_cfg::FMT_2LVL)) as u32,
            ),
        }
    }

    /// Returns the CD table address the live STE of `sid` points at, if it
    /// translates with stage 1.
    fn cd_table_in_use(&self, sid: u32) -> Option<u64> {
        let (blk, at) = match &self.table {
            Table::Linear { blk, log2 } => {
                if u64::from(sid) >> *log2 != 0 {
                    return None;
                }
                (blk, sid as usize * WORDS)
            }
            Table::TwoLevel {
                l2, split, log2, ..
            } => {
                if u64::from(sid) >> *log2 != 0 {
                    return None;
                }
                let blk = l2[(sid >> *split) as usize].as_ref()?;
                (blk, (sid as usize & ((1usize << *split) - 1)) * WORDS)
            }
        };
        let w0 = blk.read(at);
        let cfg = ste::CONFIG.get(w0);
        let s1 = cfg == ste::CONFIG_S1 || cfg == ste::CONFIG_NESTED;
        (ste::V.get(w0) == 1 && s1).then_some(w0 & ste::S1CTXPTR.mask())
    }

    /// Returns whether the table is 2-level.
    pub(super) fn two_level(&self) -> bool {
        matches!(self.table, Table::TwoLevel { .. })
    }

    /// Returns the block and word index of a stream's STE, installing a
    /// level-2 table when needed (then also its SPLIT).
    fn ste_slot(
        &mut self,
        mem: &impl DmaMemory,
        sid: u32,
    ) -> Result<(&DevBlock, usize, Option<u8>), Error> {
        match &mut self.table {
            Table::Linear { blk, log2 } => {
                if u64::from(sid) >> *log2 != 0 {
                    return Err(Error::BadStreamId(sid));
                }
                Ok((blk, sid as usize * WORDS, None))
            }
            Table::TwoLevel {
                l1,
                l2,
                split,
                log2,
            } => {
                if u64::from(sid) >> *log2 != 0 {
                    return Err(Error::BadStreamId(sid));
                }
                let i = (sid >> *split) as usize;
                let mut installed = None;
                if l2[i].is_none() {
                    let blk = DevBlock::alloc(mem, 64usize << *split)?;
                    init_stes(&blk, mem, self.report_unattached)?;
                    let desc = ste::L1_SPAN.make(u64::from(*split) + 1)
                        | (blk.phys() & ste::L1_L2PTR.mask());
                    l1.write(i, desc);
                    l1.clean(mem, i * 8, 8)?;
                    l2[i] = Some(blk);
                    installed = Some(*split);
                }
                let blk = l2[i].as_ref().ok_or(Error::BadStreamId(sid))?;
                let within = sid as usize & ((1usize << *split) - 1);
                Ok((blk, within * WORDS, installed))
            }
        }
    }

    /// Frees every table.
    ///
    /// # Safety
    ///
    /// The SMMU no longer walks the stream table.
    pub(super) unsafe fn free(&mut self, mem: &impl DmaMemory) {
        // SAFETY: forwarded from the caller; every block below hangs off the
        // stream table and was allocated from `mem`.
        unsafe {
            for (_, m) in core::mem::take(&mut self.masters) {
                if let Some(c) = m.cd {
                    free_cd_table(c, mem);
                }
            }
            match &mut self.table {
                Table::Linear { blk, .. } => blk.take().free(mem),
                Table::TwoLevel { l1, l2, .. } => {
                    for b in l2.iter_mut().filter_map(Option::take) {
                        b.free(mem);
                    }
                    l1.take().free(mem);
                }
            }
        }
    }
}

/// Frees a CD table and its level-2 tables.
///
/// # Safety
///
/// No STE the SMMU may use points at the table any more (synced).
unsafe fn free_cd_table(mut c: CdTable, mem: &impl DmaMemory) {
    // SAFETY: forwarded from the caller.
    unsafe {
        for b in c.l2.iter_mut().filter_map(Option::take) {
            b.free(mem);
        }
        c.blk.take().free(mem);
    }
}

impl CdTable {
    fn new(mem: &impl DmaMemory, ssid_bits: u8, two_level_ok: bool) -> Result<Self, Error> {
        let two_level = two_level_ok && ssid_bits > CD_L2_LOG2;
        let blk = if two_level {
            DevBlock::alloc(mem, 8usize << (ssid_bits - CD_L2_LOG2))?
        } else {
            DevBlock::alloc(mem, 64usize << ssid_bits)?
        };
        blk.clean(mem, 0, blk.size())?;
        let l2 = if two_level {
            (0..1usize << (ssid_bits - CD_L2_LOG2))
                .map(|_| None)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            blk,
            two_level,
            cdmax_log2: ssid_bits,
            l2,
        })
    }

    fn table_ref(&self) -> CdTableRef {
        CdTableRef {
            ptr: self.blk.phys(),
            format: if self.two_level {
                CdFormat::TwoLevel4K
            } else {
                CdFormat::Linear
            },
            cdmax_log2: self.cdmax_log2,
        }
    }

    /// Returns the block and word index of CD `index`, installing a level-2
    /// table when needed (flag: installed).
    fn slot(
        &mut self,
        mem: &impl DmaMemory,
        index: u32,
    ) -> Result<(&DevBlock, usize, bool), Error> {
        if u64::from(index) >> self.cdmax_log2 != 0 {
            return Err(Error::BadSubstreamId(index));
        }
        if !self.two_level {
            return Ok((&self.blk, index as usize * WORDS, false));
        }
        let i = (index >> CD_L2_LOG2) as usize;
        let mut installed = false;
        if self.l2[i].is_none() {
            let blk = DevBlock::alloc(mem, 64usize << CD_L2_LOG2)?;
            blk.clean(mem, 0, blk.size())?;
            let desc = cd::L1_V.make(1) | (blk.phys() & cd::L1_L2PTR.mask());
            self.blk.write(i, desc);
            self.blk.clean(mem, i * 8, 8)?;
            self.l2[i] = Some(blk);
            installed = true;
        }
        let blk = self.l2[i].as_ref().ok_or(Error::BadSubstreamId(index))?;
        Ok((
            blk,
            (index as usize & ((1 << CD_L2_LOG2) - 1)) * WORDS,
            installed,
        ))
    }
}

fn read_entry(blk: &DevBlock, at: usize) -> Entry {
    core::array::from_fn(|i| blk.read(at + i))
}

impl<E: SmmuEnv> Inner<E> {
    /// Hitlessly rewrites an 8-word entry; each step is cleaned and followed
    /// by `inval` + CMD_SYNC.
    fn rewrite(
        &self,
        kind: EntryKind,
        blk: &DevBlock,
        at: usize,
        target: &Entry,
        inval: &[Command],
    ) -> Result<(u32, bool), Error> {
        let mut live = read_entry(blk, at);
        let plan = plan_update(kind, &live, target);
        let syncs = apply(
            &plan,
            &mut live,
            |i, v| blk.write(at + i, v),
            || {
                blk.clean(&self.mem, at * 8, 64)?;
                self.issue(inval, true)
            },
        )?;
        Stats::bump(&self.stats.update_syncs, syncs.into());
        Ok((syncs, plan.breaking))
    }

    fn master_ste(&self, m: &Master) -> Result<Entry, Error> {
        let cfg = match m.mode {
            Mode::Invalid => return Ok([0; WORDS]),
            Mode::Abort => SteConfig::Abort,
            Mode::Bypass => SteConfig::Bypass,
            Mode::Foreign(cd, s1dss) => match &m.s2 {
                Some((d, Regs::Stage2(r))) => SteConfig::Nested {
                    cd,
                    s1dss,
                    s2: S2Ref {
                        regs: *r,
                        vmid: d.tlb_vmid(),
                    },
                    ats: false,
                },
                _ => SteConfig::Abort,
            },
            Mode::Translate => {
                let s2 = match &m.s2 {
                    Some((d, Regs::Stage2(r))) => Some(S2Ref {
                        regs: *r,
                        vmid: d.tlb_vmid(),
                    }),
                    Some(_) => {
                        return Err(Error::Unsupported(
                            "stage-2 domain without stage-2 registers",
                        ));
                    }
                    None => None,
                };
                let cdt = if m.s1.is_empty() {
                    None
                } else {
                    m.cd.as_ref().map(CdTable::table_ref)
                };
                match (cdt, s2) {
                    (Some(cd), None) => SteConfig::Stage1 {
                        cd,
                        s1dss: m.s1dss,
                        ats: m.ats,
                    },
                    (None, Some(s2)) => SteConfig::Stage2 { s2, ats: m.ats },
                    (Some(cd), Some(s2)) => SteConfig::Nested {
                        cd,
                        s1dss: m.s1dss,
                        s2,
                        ats: m.ats,
                    },
                    (None, None) => SteConfig::Abort,
                }
            }
        };
        Ok(build_ste(&cfg, &self.entry_env))
    }

    /// Writes the STE of `sid` from its master state.
    fn sync_ste(&self, st: &mut Streams, sid: u32, up: &mut Update) -> Result<(), Error> {
        let target = {
            let m = st.masters.get(&sid).ok_or(Error::NotAttached { sid })?;
            self.master_ste(m)?
        };
        let (blk, at, installed) = st.ste_slot(&self.mem, sid)?;
        if let Some(split) = installed {
            // The SMMU may cache level-1 descriptors: drop the span's.
            let base = sid & !((1u32 << split) - 1);
            self.issue(
                &[Command::CfgiSteRange {
                    sid: base,
                    range: split - 1,
                }],
                true,
            )?;
            up.setup_syncs += 1;
        }
        let (n, breaking) = self.rewrite(
            EntryKind::Ste,
            blk,
            at,
            &target,
            &[Command::CfgiSte { sid, leaf: true }],
        )?;
        Stats::bump(&self.stats.ste_updates, 1);
        up.ste_syncs += n;
        up.breaking |= breaking;
        if let Some(m) = st.masters.get_mut(&sid) {
            if !Self::ste_uses_cd_table(m) {
                if let Some(c) = m.cd.take() {
                    // SAFETY: the STE no longer points at the table and the
                    // update was synced; dropping it also forgets any CD the
                    // SMMU cached from it, so a new table starts clean.
                    unsafe { free_cd_table(c, &self.mem) };
                }
            }
        }
        Ok(())
    }

    /// Writes CD `index` of `sid`'s table. `live`: the STE may use the table.
    fn write_cd(
        &self,
        m: &mut Master,
        sid: u32,
        index: u32,
        target: &Entry,
        live: bool,
        up: &mut Update,
    ) -> Result<(), Error> {
        let cdt = m.cd.as_mut().ok_or(Error::NotAttached { sid })?;
        let (blk, at, installed) = cdt.slot(&self.mem, index)?;
        if installed && live {
            self.issue(&[Command::CfgiCdAll { sid }], true)?;
            up.setup_syncs += 1;
        }
        if live {
            let (n, _) = self.rewrite(
                EntryKind::Cd,
                blk,
                at,
                target,
                &[Command::CfgiCd {
                    sid,
                    ssid: index,
                    leaf: true,
                }],
            )?;
            up.cd_syncs += n;
        } else {
            // Nothing can be reading the table: write and clean, no sync.
            for (i, w) in target.iter().enumerate() {
                blk.write(at + i, *w);
            }
            blk.clean(&self.mem, at * 8, 64)?;
        }
        Stats::bump(&self.stats.cd_updates, 1);
        Ok(())
    }

    fn ste_uses_cd_table(m: &Master) -> bool {
        m.mode == Mode::Translate && !m.s1.is_empty()
    }

    /// Invalidates the endpoint's whole ATC for `sid` and waits, after a
    /// configuration change of a stream that had or now has ATS: what the
    /// endpoint cached from the old configuration is physical addresses,
    /// which translated traffic would reach under the new one (or under
    /// the next one with ATS). Without a PASID the invalidation also
    /// covers every PASID's entries, so it serves a substream's detach as
    /// well. Called only once the STE or CD change itself was synced, so
    /// the endpoint cannot refill from the old configuration.
    fn flush_atc(&self, sid: u32) -> Result<(), Error> {
        self.issue(&[atc_inv(sid, None, 0, 0)], true)
    }

    /// Drops `sid`'s links to domains. The domains forget the stream only
    /// in [`Self::forget`], after the STE stopped using them: until then a
    /// dropped domain still detaches the stream before freeing its tables.
    fn unlink(m: &mut Master, sid: u32, s1_index: Option<u32>, s2: bool, gone: &mut Vec<Gone>) {
        if let Some(i) = s1_index {
            if let Some((ssid, d, _)) = m.s1.remove(&i) {
                gone.push((d, sid, ssid));
            }
        }
        if s2 {
            if let Some((d, _)) = m.s2.take() {
                gone.push((d, sid, None));
            }
        }
    }

    /// Removes `gone` links from their domains, keeping those `m` still has.
    fn forget(m: Option<&Master>, gone: Vec<Gone>) {
        for (d, sid, ssid) in gone {
            d.remove(sid, ssid);
        }
        if let Some(m) = m {
            let links =
                m.s1.values()
                    .map(|(ssid, d, _)| (*ssid, d))
                    .chain(m.s2.iter().map(|(d, _)| (None, d)));
            for (ssid, d) in links {
                d.add(m.sid, ssid);
                if m.ats {
                    d.add_ats(m.sid, ssid);
                }
            }
        }
    }

    fn set_mode(&self, sid: u32, mode: Mode) -> Result<Update, Error> {
        let mut st = self.streams.lock();
        let mut up = Update::default();
        let m = st.masters.entry(sid).or_insert_with(|| Master::new(sid));
        let mut gone = Vec::new();
        let indices: Vec<u32> = m.s1.keys().copied().collect();
        for i in indices {
            Self::unlink(m, sid, Some(i), false, &mut gone);
        }
        Self::unlink(m, sid, None, true, &mut gone);
        m.mode = mode;
        let had_ats = core::mem::replace(&mut m.ats, false);
        let old_cd = m.cd.take();
        self.sync_ste(&mut st, sid, &mut up)?;
        Self::forget(st.masters.get(&sid), gone);
        if let Some(c) = old_cd {
            // SAFETY: the STE no longer points at the table and the update
            // was synced (CFGI_STE + CMD_SYNC completed).
            unsafe { free_cd_table(c, &self.mem) };
        }
        if had_ats {
            self.flush_atc(sid)?;
        }
        Ok(up)
    }
}

impl<E: SmmuEnv> Smmu<E> {
    /// Makes `sid` abort all its traffic (detaching it from any domain).
    ///
    /// # Errors
    ///
    /// [`Error::BadStreamId`], allocation and command errors.
    pub fn set_abort(&self, sid: u32) -> Result<Update, Error> {
        self.inner.set_mode(sid, Mode::Abort)
    }

    /// Makes `sid` invalid (STE.V = 0), detaching it from any domain: its
    /// traffic is terminated as with [`Smmu::set_abort`], but the SMMU
    /// records C_BAD_STE for every transaction, where an aborting STE
    /// records nothing.
    ///
    /// A hypervisor emulating an SMMU uses it to learn of traffic on a
    /// stream its guest's configuration says must be reported.
    ///
    /// # Errors
    ///
    /// As [`Smmu::set_abort`].
    pub fn set_invalid(&self, sid: u32) -> Result<Update, Error> {
        self.inner.set_mode(sid, Mode::Invalid)
    }

    /// Makes every stream the driver never configured (no attach, abort,
    /// bypass or invalid call for it) invalid rather than aborting, now and
    /// for every level-2 stream table installed later, and invalidates
    /// the SMMU's STE caches (CFGI_ALL + CMD_SYNC).
    ///
    /// Their traffic stays terminated, but is recorded (C_BAD_STE; a
    /// StreamID without a level-2 table is C_BAD_STREAMID either way), so
    /// that a hypervisor emulating an SMMU sees it. Idempotent.
    ///
    /// # Errors
    ///
    /// Command errors (the entries are rewritten first: both kinds
    /// terminate, so a failed invalidation leaves every stream isolated).
    pub fn report_unattached(&self) -> Result<(), Error> {
        let i = &*self.inner;
        {
            let mut st = i.streams.lock();
            st.report_unattached = true;
            let (abort, idle) = (idle_word(false), idle_word(true));
            let masters = &st.masters;
            let blocks: Vec<(&DevBlock, u32)> = match &st.table {
                Table::Linear { blk, .. } => alloc::vec![(blk, 0)],
                Table::TwoLevel { l2, split, .. } => l2
                    .iter()
                    .enumerate()
                    .filter_map(|(k, b)| b.as_ref().map(|b| (b, (k as u32) << *split)))
                    .collect(),
            };
            for (blk, first) in blocks {
                for k in 0..blk.size() / 64 {
                    let sid = first + k as u32;
                    // A single-word change of an entry whose other words
                    // are zero: no hitless sequence needed.
                    if !masters.contains_key(&sid) && blk.read(k * WORDS) == abort {
                        blk.write(k * WORDS, idle);
                    }
                }
                blk.clean(&i.mem, 0, blk.size())?;
            }
        }
        i.issue(&[Command::CFGI_ALL], true)
    }

    /// Lets `sid` bypass translation (detaching it from any domain).
    ///
    /// # Errors
    ///
    /// As [`Smmu::set_abort`].
    pub fn set_bypass(&self, sid: u32) -> Result<Update, Error> {
        self.inner.set_mode(sid, Mode::Bypass)
    }

    /// Returns whether the stream table is 2-level.
    pub fn strtab_two_level(&self) -> bool {
        self.inner.streams.lock().two_level()
    }

    /// Attaches `sid` (or its substream `ssid`) to `domain`.
    ///
    /// A stage-2 domain takes the whole stream (`ssid` must be `None`) and
    /// replaces any stage-1 context not nested under its VMID. A stage-1
    /// domain takes CD `ssid` (CD 0 for `None`) and replaces a stage 2 it
    /// is not nested under; a nested stage-1 domain needs its parent
    /// attached (see [`Smmu::attach_nested`] to set both in one update).
    ///
    /// # Errors
    ///
    /// [`Error::BadStreamId`], [`Error::BadSubstreamId`],
    /// [`Error::Unsupported`] (nesting, ATS or substreams the SMMU lacks, or
    /// a domain made on another SMMU),
    /// allocation and command errors.
    pub fn attach(
        &self,
        sid: u32,
        ssid: Option<u32>,
        domain: &Domain<E>,
        opts: AttachOptions,
    ) -> Result<Update, Error> {
        if !domain.belongs_to(self) {
            return Err(FOREIGN_DOMAIN);
        }
        self.attach_many(sid, &[(ssid, domain.shared(), domain.table_regs())], opts)
    }

    /// Attaches the whole stream `sid` to `s2`, a stage-2 page table the
    /// driver does not own (see [`ExternalStage2`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] when `s2` was made on another SMMU,
    /// [`Error::BadStreamId`], allocation and command errors.
    pub fn attach_external(&self, sid: u32, s2: &ExternalStage2<E>) -> Result<Update, Error> {
        if !s2.belongs_to(self) {
            return Err(FOREIGN_DOMAIN);
        }
        self.attach_many(
            sid,
            &[(None, s2.shared(), Regs::Stage2(s2.regs()))],
            AttachOptions::default(),
        )
    }

    /// Attaches `sid` to stage-2 domain `s2` and its substream `ssid` (CD 0
    /// for `None`) to `s1`, a stage-1 domain nested under `s2`, with a single
    /// STE update. `s2` must map the CD table and `s1`'s tables at their
    /// physical addresses (the STE and CD hold them as IPAs).
    ///
    /// # Errors
    ///
    /// As [`Smmu::attach`].
    pub fn attach_nested(
        &self,
        sid: u32,
        ssid: Option<u32>,
        s2: &Domain<E>,
        s1: &Domain<E>,
        opts: AttachOptions,
    ) -> Result<Update, Error> {
        if !self.inner.features.nesting {
            return Err(Error::Unsupported("nesting (IDR0.S1P+S2P, errata)"));
        }
        if !s2.belongs_to(self) || !s1.belongs_to(self) {
            return Err(FOREIGN_DOMAIN);
        }
        self.attach_many(
            sid,
            &[
                (None, s2.shared(), s2.table_regs()),
                (ssid, s1.shared(), s1.table_regs()),
            ],
            opts,
        )
    }

    /// Attaches the whole stream `sid` nested: stage 1 through the CD table
    /// `cd`, which the driver neither owns nor reads (its address is an IPA
    /// that `s2` translates), over the external stage 2 `s2`.
    ///
    /// This is how a hypervisor shadows a configuration written by software
    /// it does not trust: every CD and stage-1 table fetch goes through
    /// `s2`, so a CD table pointer into memory `s2` does not map faults at
    /// stage 2 instead of being read. ATS stays off.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] without nesting, when `s2` was made on another
    /// SMMU, or when `cd` has more
    /// substream bits than IDR1.SSIDSIZE or is two-level without IDR0.CD2L;
    /// [`Error::BadStreamId`]; allocation and command errors.
    pub fn attach_foreign_nested(
        &self,
        sid: u32,
        s2: &ExternalStage2<E>,
        cd: CdTableRef,
        s1dss: S1Dss,
    ) -> Result<Update, Error> {
        let i = &*self.inner;
        if !i.features.nesting {
            return Err(Error::Unsupported("nesting (IDR0.S1P+S2P, errata)"));
        }
        if !s2.belongs_to(self) {
            return Err(FOREIGN_DOMAIN);
        }
        if cd.cdmax_log2 > i.features.ssid_bits {
            return Err(Error::Unsupported("substream ID bits beyond IDR1.SSIDSIZE"));
        }
        if cd.format.two_level() && !i.features.cd_2lvl {
            return Err(Error::Unsupported("two-level CD tables (IDR0.CD2L)"));
        }
        let mut st = i.streams.lock();
        let mut up = Update::default();
        let m = st.masters.entry(sid).or_insert_with(|| Master::new(sid));
        let mut gone = Vec::new();
        let indices: Vec<u32> = m.s1.keys().copied().collect();
        for k in indices {
            Inner::<E>::unlink(m, sid, Some(k), false, &mut gone);
        }
        let keep_s2 =
            m.s2.as_ref()
                .is_some_and(|(d, _)| Arc::ptr_eq(d, s2.shared()));
        if !keep_s2 {
            Inner::<E>::unlink(m, sid, None, true, &mut gone);
            s2.shared().add(sid, None);
            m.s2 = Some((s2.shared().clone(), Regs::Stage2(s2.regs())));
        }
        m.mode = Mode::Foreign(cd, s1dss);
        let had_ats = core::mem::replace(&mut m.ats, false);
        let old_cd = m.cd.take();
        i.sync_ste(&mut st, sid, &mut up)?;
        Inner::<E>::forget(st.masters.get(&sid), gone);
        if let Some(c) = old_cd {
            // SAFETY: the STE no longer points at the table and the update
            // was synced (CFGI_STE + CMD_SYNC completed).
            unsafe { free_cd_table(c, &i.mem) };
        }
        if had_ats {
            i.flush_atc(sid)?;
        }
        Ok(up)
    }

    fn attach_many(
        &self,
        sid: u32,
        links: &[Link<'_>],
        opts: AttachOptions,
    ) -> Result<Update, Error> {
        let i = &*self.inner;
        if opts.ats && !i.features.ats {
            return Err(Error::Unsupported("ATS (IDR0.ATS)"));
        }
        let mut st = i.streams.lock();
        if opts.ats && i.features.stall == StallModel::StallForced {
            // Stage 2 stalls there (S2S = 1), and full ATS with S2S = 1 is
            // an ILLEGAL STE: refuse before anything changes.
            let s2_link = links
                .iter()
                .any(|(_, d, _)| matches!(d.kind(), DomainKind::Stage2 { .. }));
            let s2_kept = st
                .masters
                .get(&sid)
                .is_some_and(|m| m.mode == Mode::Translate && m.s2.is_some());
            if s2_link || s2_kept {
                return Err(Error::Unsupported(
                    "ATS with stage 2 on a stall-forced SMMU (EATS = 0b01 with S2S = 1 is ILLEGAL)",
                ));
            }
        }
        let mut up = Update::default();
        // The CD table the SMMU may be using right now, from the live STE.
        let cd_live = st.cd_table_in_use(sid);
        let mut retired: Vec<CdTable> = Vec::new();
        let mut gone: Vec<Gone> = Vec::new();
        let m = st.masters.entry(sid).or_insert_with(|| Master::new(sid));
        // An endpoint that had ATS may hold translations of the old
        // configuration; one getting ATS may hold a previous owner's.
        let flush_atc = m.ats || opts.ats;
        if m.mode != Mode::Translate {
            if matches!(m.mode, Mode::Foreign(..)) {
                Inner::<E>::unlink(m, sid, None, true, &mut gone);
            }
            m.s1.clear();
            m.s2 = None;
        }
        for &(ssid, domain, regs) in links {
            let shared = domain.clone();
            match shared.kind() {
                DomainKind::Stage2 { vmid } => {
                    if ssid.is_some() {
                        return Err(Error::BadSubstreamId(ssid.unwrap_or(0)));
                    }
                    // Stage-1 contexts tagged with another VMID go.
                    let stale: Vec<u32> =
                        m.s1.iter()
                            .filter(|(_, (_, d, _))| d.parent_vmid() != Some(vmid))
                            .map(|(k, _)| *k)
                            .collect();
                    for k in stale {
                        Inner::<E>::unlink(m, sid, Some(k), false, &mut gone);
                    }
                    Inner::<E>::unlink(m, sid, None, true, &mut gone);
                    shared.add(sid, None);
                    if opts.ats {
                        shared.add_ats(sid, None);
                    }
                    m.s2 = Some((shared, regs));
                }
                DomainKind::Stage1 { asid, parent_vmid } => {
                    let Regs::Stage1(r) = regs else {
                        return Err(Error::Unsupported(
                            "stage-1 domain without stage-1 registers",
                        ));
                    };
                    match (&m.s2, parent_vmid) {
                        (Some((d, _)), Some(p)) if d.tlb_vmid() == p => {}
                        (_, Some(_)) => {
                            return Err(Error::Unsupported(
                                "nested stage-1 domain without its stage-2 parent attached",
                            ));
                        }
                        _ => {
                            // Plain stage 1 replaces stage 2 and nested contexts.
                            Inner::<E>::unlink(m, sid, None, true, &mut gone);
                            let stale: Vec<u32> =
                                m.s1.iter()
                                    .filter(|(_, (_, d, _))| d.parent_vmid().is_some())
                                    .map(|(k, _)| *k)
                                    .collect();
                            for k in stale {
                                Inner::<E>::unlink(m, sid, Some(k), false, &mut gone);
                            }
                        }
                    }
                    if m.cd
                        .as_ref()
                        .is_some_and(|c| c.cdmax_log2 != opts.ssid_bits)
                    {
                        // A differently sized table replaces the old one and
                        // the contexts it held; it is freed once the STE no
                        // longer points at it.
                        let keys: Vec<u32> = m.s1.keys().copied().collect();
                        for k in keys {
                            Inner::<E>::unlink(m, sid, Some(k), false, &mut gone);
                        }
                        retired.extend(m.cd.take());
                    }
                    m.s1dss = opts.s1dss;
                    let live = m.cd.as_ref().is_some_and(|c| cd_live == Some(c.blk.phys()));
                    if m.s1.is_empty() {
                        if live {
                            // No context to keep: a fresh table and one STE
                            // switch beat breaking a live CD.
                            retired.extend(m.cd.take());
                        } else if let Some(c) = m.cd.take() {
                            // SAFETY: the current STE does not point at the
                            // table, so the SMMU cannot fetch from it.
                            unsafe { free_cd_table(c, &i.mem) };
                        }
                    }
                    if m.cd.is_none() {
                        if opts.ssid_bits > i.features.ssid_bits {
                            return Err(Error::Unsupported(
                                "substream ID bits beyond IDR1.SSIDSIZE",
                            ));
                        }
                        m.cd = Some(CdTable::new(&i.mem, opts.ssid_bits, i.features.cd_2lvl)?);
                        m.s1dss = opts.s1dss;
                    }
                    let has_ssids = m.cd.as_ref().is_some_and(|c| c.cdmax_log2 > 0);
                    let index = match ssid {
                        None if has_ssids && m.s1dss != S1Dss::Ssid0 => {
                            return Err(Error::Unsupported("no-SSID stage 1 needs S1DSS = Ssid0"));
                        }
                        None => 0,
                        Some(s) if !has_ssids => return Err(Error::BadSubstreamId(s)),
                        Some(0) if m.s1dss == S1Dss::Ssid0 => return Err(Error::BadSubstreamId(0)),
                        Some(s) => s,
                    };
                    let live = m.cd.as_ref().is_some_and(|c| cd_live == Some(c.blk.phys()));
                    let cd = build_cd(&r, asid, &i.entry_env);
                    // The stream and the domain record the link before the
                    // CD is written: in a live table the device may use the
                    // CD as soon as it is in memory, even if a later step of
                    // the rewrite fails, and dropping the domain must then
                    // still find the link and detach the CD before freeing
                    // the tables (and invalidate the ATC). The replaced
                    // domain keeps its record until the change completed.
                    Inner::<E>::unlink(m, sid, Some(index), false, &mut gone);
                    shared.add(sid, ssid);
                    if opts.ats {
                        shared.add_ats(sid, ssid);
                    }
                    m.s1.insert(index, (ssid, shared, regs));
                    i.write_cd(m, sid, index, &cd, live, &mut up)?;
                }
            }
        }
        m.mode = Mode::Translate;
        m.ats = opts.ats;
        i.sync_ste(&mut st, sid, &mut up)?;
        Inner::<E>::forget(st.masters.get(&sid), gone);
        for c in retired {
            // SAFETY: the STE was rewritten to point at the new table and the
            // update completed (synced), so the SMMU no longer fetches from it.
            unsafe { free_cd_table(c, &i.mem) };
        }
        if flush_atc {
            i.flush_atc(sid)?;
        }
        Ok(up)
    }

    /// Detaches substream `ssid` of `sid` from its stage-1 domain (its CD is
    /// invalidated), or with `None` the whole stream, which then aborts.
    ///
    /// # Errors
    ///
    /// [`Error::NotAttached`] when nothing is attached there; command errors.
    pub fn detach(&self, sid: u32, ssid: Option<u32>) -> Result<Update, Error> {
        let i = &*self.inner;
        let Some(s) = ssid else {
            return i.set_mode(sid, Mode::Abort);
        };
        let mut st = i.streams.lock();
        let mut up = Update::default();
        let m = st.masters.get_mut(&sid).ok_or(Error::NotAttached { sid })?;
        if !m.s1.contains_key(&s) {
            return Err(Error::NotAttached { sid });
        }
        let live = true;
        i.write_cd(m, sid, s, &[0; WORDS], live, &mut up)?;
        let ats = m.ats;
        let mut gone = Vec::new();
        Inner::<E>::unlink(m, sid, Some(s), false, &mut gone);
        if m.s1.is_empty() {
            // No stage-1 context left: the STE stops pointing at the table.
            i.sync_ste(&mut st, sid, &mut up)?;
        }
        Inner::<E>::forget(st.masters.get(&sid), gone);
        if ats {
            i.flush_atc(sid)?;
        }
        Ok(up)
    }
}
