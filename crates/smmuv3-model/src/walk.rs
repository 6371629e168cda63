//! The model's own VMSAv8-64 translation table walker (stage 1 and stage 2,
//! 4K/16K/64K granules, concatenated stage-2 start tables, 52-bit output
//! with the 64K granule, hierarchical permissions, access flag and dirty
//! state hardware updates). Written from the architecture, independent of
//! the `io-pgtable` crate on purpose.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::event::EventType;
use crate::layout::{OaMasks, RawDesc, desc as d};
use crate::memory::DeviceMemory;

/// How many times a walk restarts when a hardware update loses a race with
/// a CPU store before it gives up (bounded work, never a hang).
const HTTU_RETRIES: u32 = 8;

/// Geometry and controls of one translation table (one TTB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TableCfg {
    /// log2 of the granule: 12, 14 or 16.
    pub shift: u32,
    /// Level of the start table.
    pub start_level: u32,
    /// Input address bits.
    pub ias: u32,
    /// Base of the start table (an IPA for nested stage 1).
    pub ttb: u64,
    /// Output address size in bits (IPS / S2PS after capping).
    pub oas: u32,
    /// 64K-granule descriptors carry OA\[51:48\] in bits \[15:12\].
    pub pa52: bool,
    /// Stage 2 table (S2AP / XN formats).
    pub stage2: bool,
    /// Hierarchical attributes disabled (APTable / XNTable ignored).
    pub had: bool,
    /// Hardware access flag update.
    pub ha: bool,
    /// Hardware dirty state update.
    pub hd: bool,
    /// Access flag faults disabled (a clear AF behaves as set).
    pub affd: bool,
    /// Extended stage-2 XN encodings (IDR3.XNX).
    pub xnx: bool,
}

impl TableCfg {
    pub fn stride(&self) -> u32 {
        self.shift - 3
    }

    /// Returns the lowest input address bit a level resolves.
    pub fn level_lsb(&self, level: u32) -> u32 {
        self.shift + (3 - level) * self.stride()
    }

    /// Returns whether a block descriptor is legal at `level`.
    pub fn block_ok(&self, level: u32) -> bool {
        match self.shift {
            12 => level == 1 || level == 2,
            14 => level == 2,
            _ => level == 2 || (level == 1 && self.pa52),
        }
    }

    /// Returns whether the geometry is one the STE and CD decoders can
    /// produce: every walk and TLB lookup relies on it (shifts by `ias`,
    /// `shift` and the level LSBs), so a restored snapshot is checked with
    /// it before its decoded structures are trusted.
    pub fn is_consistent(&self) -> bool {
        if !matches!(self.shift, 12 | 14 | 16)
            || self.start_level > 3
            || self.ias > 52
            || self.oas > 52
            || self.pa52 != (self.shift == 16 && self.oas == 52)
        {
            return false;
        }
        let lsb = self.level_lsb(self.start_level);
        self.ias > lsb
            && self.ias - lsb <= self.stride() + 4
            && self.ttb >> self.oas == 0
            && self.ttb & (self.start_table_bytes() - 1) == 0
    }

    /// Returns the number of bytes of the start table (concatenated tables
    /// included), at least 64 as every table must be 64-byte aligned.
    pub fn start_table_bytes(&self) -> u64 {
        let entries_log2 = self.ias - self.level_lsb(self.start_level);
        (8u64 << entries_log2).max(64)
    }
}

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    pub write: bool,
    pub privileged: bool,
    pub instruction: bool,
}

impl Access {
    /// Returns the bit of this access in [`Perms`]: writes 0 and 1,
    /// instruction fetches 2 and 3, reads 4 and 5, the unprivileged kind
    /// one above the privileged (an instruction write counts as a write).
    #[inline]
    pub fn bit(self) -> u32 {
        let kind = if self.write {
            0
        } else if self.instruction {
            2
        } else {
            4
        };
        kind + u32::from(!self.privileged)
    }
}

/// Stage-1 controls that only apply to the permission check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct S1Perm {
    pub wxn: bool,
    pub pan: bool,
}

/// Effective permissions of a leaf, for caching in the TLB: one bit per
/// kind of access ([`Access::bit`]) and one for the dirty state.
///
/// A byte rather than seven `bool`s: the walker builds these and the TLB
/// entries that hold them on every walk, and copies of a struct of `bool`s
/// read back with wide loads what was just written byte by byte, which the
/// CPU cannot forward from its store buffer (a stall per copy).
#[derive(Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Perms(u8);

impl Perms {
    /// Privileged write.
    pub const WRITE_PRIV: u8 = 1 << 0;
    /// Unprivileged write.
    pub const WRITE_USER: u8 = 1 << 1;
    /// Privileged instruction fetch.
    pub const EXEC_PRIV: u8 = 1 << 2;
    /// Unprivileged instruction fetch.
    pub const EXEC_USER: u8 = 1 << 3;
    /// Privileged read.
    pub const READ_PRIV: u8 = 1 << 4;
    /// Unprivileged read.
    pub const READ_USER: u8 = 1 << 5;
    /// Every access kind.
    const ACCESSES: u8 = 0x3f;
    /// Read-only now, but a write would set the dirty state (DBM + HD).
    const DIRTY_ON_WRITE: u8 = 1 << 6;

    /// Returns the permissions of these access bits.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & Self::ACCESSES)
    }

    /// Returns permissions allowing everything (a stage that is absent).
    pub const fn all() -> Self {
        Self(Self::ACCESSES)
    }

    #[inline]
    pub fn allows(&self, a: Access) -> bool {
        self.0 >> a.bit() & 1 != 0
    }

    /// Returns whether any write is allowed.
    #[inline]
    pub fn writable(self) -> bool {
        self.0 & (Self::WRITE_PRIV | Self::WRITE_USER) != 0
    }

    /// Returns whether a write would set the dirty state.
    #[inline]
    pub fn dirty_on_write(self) -> bool {
        self.0 & Self::DIRTY_ON_WRITE != 0
    }

    /// Returns these permissions marked as dirtied by a write.
    #[inline]
    pub fn with_dirty_on_write(self) -> Self {
        Self(self.0 | Self::DIRTY_ON_WRITE)
    }

    /// Returns the intersection of two stages' permissions (dirty on write
    /// when either stage is).
    #[inline]
    pub fn and(self, o: Perms) -> Perms {
        Perms(self.0 & o.0 & Self::ACCESSES | (self.0 | o.0) & Self::DIRTY_ON_WRITE)
    }
}

impl core::fmt::Debug for Perms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const NAMES: [&str; 7] = [
            "write_priv",
            "write_user",
            "exec_priv",
            "exec_user",
            "read_priv",
            "read_user",
            "dirty_on_write",
        ];
        let mut l = f.debug_set();
        for (i, n) in NAMES.iter().enumerate() {
            if self.0 >> i & 1 != 0 {
                l.entry(&format_args!("{n}"));
            }
        }
        l.finish()
    }
}

/// A walk fault, before it becomes an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalkFault {
    pub kind: EventType,
    pub level: u32,
    /// Physical address of the aborting descriptor fetch (F_WALK_EABT).
    pub fetch_pa: u64,
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaf {
    /// Output address of the first byte of the leaf's range.
    pub oa_base: u64,
    /// log2 of the leaf's size.
    pub size_log2: u32,
    pub level: u32,
    pub perms: Perms,
    /// The nG bit (stage 1).
    pub not_global: bool,
    /// Descriptor reads done.
    pub reads: u32,
    /// Hardware updates done.
    pub updates: u32,
}

/// Table descriptors found on the way down, for the walk cache: (lowest
/// input bit of the descriptor's level, the next table's address, the
/// table attributes accumulated down to it).
pub(crate) type WalkSteps = [(u32, u64, TableAttrs); 4];

/// Hierarchical attributes accumulated from table descriptors, as the
/// bits of [`RawDesc::table_attr_bits`] (so each level ORs one byte in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TableAttrs(u8);

impl TableAttrs {
    const PXN: u8 = 1 << 0;
    const UXN: u8 = 1 << 1;
    const NO_USER: u8 = 1 << 2;
    const READ_ONLY: u8 = 1 << 3;

    /// Returns the attributes of these bits (PXN 0, UXN 1, no user 2,
    /// read-only 3).
    #[inline]
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 0xf)
    }

    /// Returns the bits of [`TableAttrs::from_bits`].
    #[inline]
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Returns these attributes with those of a table descriptor among
    /// `keep` (bits as [`TableAttrs::from_bits`]) added.
    #[inline]
    pub fn with_table(self, desc: RawDesc, keep: u8) -> Self {
        Self(self.0 | desc.table_attr_bits() & keep)
    }

    /// APTable\[1\] on the way: read-only.
    pub fn read_only(self) -> bool {
        self.0 & Self::READ_ONLY != 0
    }
}

/// Where a walk starts: the configured start table, or a table found in the
/// walk cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start {
    pub level: u32,
    pub table: u64,
    pub attrs: TableAttrs,
}

impl Start {
    /// Returns the start of a walk from the configured start table.
    #[inline]
    pub fn root(tt: &TableCfg) -> Self {
        Start {
            level: tt.start_level,
            table: tt.ttb,
            attrs: TableAttrs::default(),
        }
    }
}

/// The memory one walk reads its descriptors from.
///
/// A walk reads up to four descriptors (more with contiguous runs); a call
/// through `dyn DeviceMemory` and its checks for each cost more than the
/// rest of the level. When the backend offers its words as one array
/// ([`DeviceMemory::word_view`]), an aligned read inside it is one atomic
/// load; anything else (outside the array, unaligned, no array) takes the
/// backend's checked path, which also produces the error.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'a> {
    mem: &'a dyn DeviceMemory,
    base: u64,
    /// Empty when the backend has no word view: every read is then
    /// outside it and takes the checked path.
    words: &'a [AtomicU64],
}

impl<'a> Tables<'a> {
    /// Returns the reader of `mem`, taking its word view now.
    #[inline]
    pub fn new(mem: &'a dyn DeviceMemory) -> Self {
        match mem.word_view() {
            Some(words) => Self {
                mem,
                base: mem.word_view_base(),
                words,
            },
            None => Self {
                mem,
                base: 0,
                words: &[],
            },
        }
    }

    #[inline]
    fn read_u64(&self, pa: u64) -> Result<u64, ()> {
        let off = pa.wrapping_sub(self.base);
        if off % 8 == 0 {
            if let Some(w) = self.words.get((off / 8) as usize) {
                // Acquire: as the backend's own read (a descriptor
                // published by a CPU release store is seen whole).
                return Ok(w.load(Ordering::Acquire));
            }
        }
        self.mem.read_u64(pa).map_err(|_| ())
    }
}

/// Extracts an output/next-level address from a descriptor (the 52-bit
/// format only with the 64K granule).
fn desc_addr(cfg: &TableCfg, desc: RawDesc, lsb: u32) -> u64 {
    desc.addr(lsb, cfg.pa52 && cfg.shift == 16)
}

/// Why a walk stopped without a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Halt<E> {
    /// A walk fault, for the caller to turn into an event.
    Fault(WalkFault),
    /// The descriptor-address mapping failed with this error.
    Fetch(E),
}

impl Halt<core::convert::Infallible> {
    /// Returns the fault of a walk whose address mapping cannot fail.
    #[inline]
    pub fn into_fault(self) -> WalkFault {
        match self {
            Halt::Fault(f) => f,
            Halt::Fetch(never) => match never {},
        }
    }
}

/// One attempt's end without a leaf: [`Halt`], or a lost race with a CPU
/// store that restarts the walk.
enum Stopped<E> {
    Halt(Halt<E>),
    Raced,
}

impl<E> From<WalkFault> for Stopped<E> {
    #[inline]
    fn from(f: WalkFault) -> Self {
        Stopped::Halt(Halt::Fault(f))
    }
}

/// Walks `ia` through the table of `cfg`.
///
/// `fetch` maps a table-descriptor address (an IPA for nested stage 1) to
/// the physical address to read, or fails with a stage-2 fault the caller
/// reports; its error is passed through unchanged.
///
/// `steps` receives the table descriptors used (for the walk cache).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn walk<E, F: FnMut(u64) -> Result<u64, E>>(
    mem: Tables<'_>,
    cfg: &TableCfg,
    start: Start,
    ia: u64,
    acc: Access,
    s1perm: S1Perm,
    fetch: &mut F,
    steps: &mut WalkSteps,
    nsteps: &mut usize,
) -> Result<Leaf, Halt<E>> {
    let mut attempt = 0;
    loop {
        match walk_once(mem, cfg, start, ia, acc, s1perm, fetch, steps, nsteps) {
            Ok(l) => return Ok(l),
            Err(Stopped::Halt(h)) => return Err(h),
            Err(Stopped::Raced) if attempt < HTTU_RETRIES => attempt += 1,
            Err(Stopped::Raced) => {
                // Lost every race: report it as a walk abort rather than
                // spin; a real SMMU would keep retrying.
                return Err(Halt::Fault(WalkFault {
                    kind: EventType::FWalkEabt,
                    level: 3,
                    fetch_pa: 0,
                }));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn walk_once<E, F: FnMut(u64) -> Result<u64, E>>(
    mem: Tables<'_>,
    cfg: &TableCfg,
    start: Start,
    ia: u64,
    acc: Access,
    s1perm: S1Perm,
    fetch: &mut F,
    steps: &mut WalkSteps,
    nsteps: &mut usize,
) -> Result<Leaf, Stopped<E>> {
    let fault = |kind, level| {
        Err(Stopped::from(WalkFault {
            kind,
            level,
            fetch_pa: 0,
        }))
    };
    let abort = |level, fetch_pa| {
        Err(Stopped::from(WalkFault {
            kind: EventType::FWalkEabt,
            level,
            fetch_pa,
        }))
    };
    let mut level = start.level;
    let mut table = start.table;
    let mut attrs = start.attrs;
    // Reads beyond one per level (the other members of a contiguous run).
    // The levels' reads and the steps recorded follow from the level
    // reached, so the loop carries neither count (it is short of
    // registers: each value it carries more is spilled).
    let mut extra_reads = 0;
    *nsteps = 0;
    // Decided once per walk rather than per level.
    let stride = cfg.stride();
    let level_mask = (1u64 << stride) - 1;
    let pa52 = cfg.pa52 && cfg.shift == 16;
    // As masks, so that each level applies them without a branch.
    let table_addr = OaMasks::new(cfg.shift, pa52);
    let beyond_oas = u64::MAX.checked_shl(cfg.oas).unwrap_or(0);
    let table_attrs = if !cfg.stage2 && !cfg.had { 0xf } else { 0 };
    let mut lsb = cfg.level_lsb(level);
    // The start table (concatenated ones included) is indexed by every
    // input bit above its level; `ia` has no bits above the input size.
    let mut mask = if level == cfg.start_level {
        u64::MAX
    } else {
        level_mask
    };
    loop {
        let idx = (ia >> lsb) & mask;
        let desc_ia = table + idx * 8;
        let desc_pa = fetch(desc_ia).map_err(|e| Stopped::Halt(Halt::Fetch(e)))?;
        let Ok(desc) = mem.read_u64(desc_pa).map(RawDesc) else {
            return abort(level, desc_pa);
        };
        if !desc.valid() {
            return fault(EventType::FTranslation, level);
        }
        let is_table = desc.is_table();
        if level < 3 && is_table {
            let next = desc.addr_in(table_addr);
            if next & beyond_oas != 0 {
                return fault(EventType::FAddrSize, level);
            }
            // Hierarchical attributes (none at stage 2 or with HAD).
            attrs = attrs.with_table(desc, table_attrs);
            let n = (level - start.level) as usize;
            if n < steps.len() {
                steps[n] = (lsb, next, attrs);
                *nsteps = n + 1;
            }
            table = next;
            level += 1;
            lsb -= stride;
            mask = level_mask;
            continue;
        }
        if level < 3 && !cfg.block_ok(level) {
            return fault(EventType::FTranslation, level);
        }
        if level == 3 && !is_table {
            // Descriptor type 0b01 at level 3 is reserved: invalid.
            return fault(EventType::FTranslation, level);
        }
        let oa_base = desc_addr(cfg, desc, lsb);
        if oa_base & beyond_oas != 0 {
            return fault(EventType::FAddrSize, level);
        }
        if desc.contiguous() {
            extra_reads += check_run(mem, cfg, fetch, desc, table, idx, lsb, level, oa_base)?;
        }
        let af = desc.af();
        let dbm = desc.dbm();
        let mut perms = if cfg.stage2 {
            s2_perms(cfg, desc)
        } else {
            s1_perms(desc, attrs, s1perm)
        };
        if dbm && cfg.hd && !perms.writable() {
            let table_ro = !cfg.stage2 && attrs.read_only();
            if !table_ro {
                perms = perms.with_dirty_on_write();
            }
        }
        if !af && !cfg.ha && !cfg.affd {
            return fault(EventType::FAccess, level);
        }
        let needs_dirty = acc.write && perms.dirty_on_write();
        let allowed = perms.allows(acc)
            || (needs_dirty && perms_if_dirty(cfg, desc, attrs, s1perm).allows(acc));
        if !allowed {
            return fault(EventType::FPermission, level);
        }
        let mut new = desc;
        if !af && cfg.ha {
            new = new.with_af();
        }
        if needs_dirty {
            new = new.dirtied(cfg.stage2);
        }
        let mut updates = 0;
        if new != desc {
            match mem.mem.cmpxchg_u64(desc_pa, desc.0, new.0) {
                Ok(Ok(_)) => updates = 1,
                Ok(Err(_)) => return Err(Stopped::Raced),
                Err(_) => return abort(level, desc_pa),
            }
            if needs_dirty {
                perms = perms_if_dirty(cfg, desc, attrs, s1perm);
            }
        }
        return Ok(Leaf {
            oa_base,
            size_log2: lsb,
            level,
            perms,
            not_global: desc.not_global(),
            reads: level - start.level + 1 + extra_reads,
            updates,
        });
    }
}

/// Reads the other members of the contiguous run of leaf `desc` (entry
/// `idx` of `table`, output `oa_base`) and returns how many it read, or
/// the TLB conflict a misprogrammed run is reported as.
///
/// Out of line and cold: few leaves are contiguous, and inlined, its loop
/// and its values took registers from every walk.
#[allow(clippy::too_many_arguments)]
#[cold]
#[inline(never)]
fn check_run<E, F: FnMut(u64) -> Result<u64, E>>(
    mem: Tables<'_>,
    cfg: &TableCfg,
    fetch: &mut F,
    desc: RawDesc,
    table: u64,
    idx: u64,
    lsb: u32,
    level: u32,
    oa_base: u64,
) -> Result<u32, Stopped<E>> {
    let conflict = || {
        Err(Stopped::from(WalkFault {
            kind: EventType::FTlbConflict,
            level,
            fetch_pa: 0,
        }))
    };
    let run = contiguous_entries(cfg.shift, level);
    let first = idx & !(run - 1);
    let run_base = oa_base.wrapping_sub((idx - first) << lsb);
    if run_base & ((run << lsb) - 1) != 0 {
        return conflict();
    }
    let mut reads = 0;
    for j in 0..run {
        let pa = fetch(table + (first + j) * 8).map_err(|e| Stopped::Halt(Halt::Fetch(e)))?;
        reads += 1;
        let Ok(member) = mem.read_u64(pa) else {
            return Err(Stopped::from(WalkFault {
                kind: EventType::FWalkEabt,
                level,
                fetch_pa: pa,
            }));
        };
        if !contiguous_member_ok(cfg, desc, RawDesc(member), lsb, idx - first, j) {
            // Misprogrammed contiguous hint: a TLB conflict is one of the
            // architecturally allowed outcomes; report it.
            return conflict();
        }
    }
    Ok(reads)
}

/// Returns how many adjacent descriptors a contiguous hint spans.
fn contiguous_entries(shift: u32, level: u32) -> u64 {
    match (shift, level) {
        (12, _) => 16,
        (14, 3) => 128,
        _ => 32,
    }
}

/// Returns whether descriptor `d` (entry `j` of the run) is consistent with
/// `desc` (entry `i`): valid, same type, contiguous, same attributes and the
/// matching output address.
fn contiguous_member_ok(
    cfg: &TableCfg,
    desc: RawDesc,
    member: RawDesc,
    lsb: u32,
    i: u64,
    j: u64,
) -> bool {
    // AF and dirty state may differ (hardware updates them entry by entry).
    let mut attrs = d::RUN_LOWER_ATTRS | d::RUN_UPPER_ATTRS;
    if cfg.hd {
        attrs &= !(1 << d::AP_RO_S2_WRITE);
    }
    let base = desc_addr(cfg, desc, lsb).wrapping_sub(i << lsb);
    member.kind() == desc.kind()
        && (member.0 ^ desc.0) & attrs == 0
        && desc_addr(cfg, member, lsb) == base.wrapping_add(j << lsb)
}

/// Returns the permissions the descriptor would give once its dirty state is
/// set by hardware.
fn perms_if_dirty(cfg: &TableCfg, desc: RawDesc, attrs: TableAttrs, s1perm: S1Perm) -> Perms {
    let dirty = desc.dirtied(cfg.stage2);
    if cfg.stage2 {
        s2_perms(cfg, dirty)
    } else {
        s1_perms(dirty, attrs, s1perm)
    }
}

/// The stage-1 permission inputs of a leaf, folded with the table
/// attributes above it into one 6-bit index of [`S1_PERMS`]: each table
/// attribute ORs into the leaf bit it restricts (bit 0 PXN, 1 UXN, 2 no
/// unprivileged access, 3 read-only, as [`TableAttrs`]), then WXN (4) and
/// PAN (5).
#[inline(always)]
fn s1_perm_index(desc: RawDesc, t: TableAttrs, p: S1Perm) -> usize {
    // PXN and UXN are adjacent, as in TableAttrs.
    let xn = (desc.0 >> d::PXN & 3) as u8;
    let no_user = if desc.ap_user_or_s2_read() {
        0
    } else {
        TableAttrs::NO_USER
    };
    let ro = if desc.ap_ro_or_s2_write() {
        TableAttrs::READ_ONLY
    } else {
        0
    };
    let leaf = xn | no_user | ro | t.bits();
    usize::from(leaf) | usize::from(p.wxn) << 4 | usize::from(p.pan) << 5
}

/// [`s1_perms_of`] for every [`s1_perm_index`]: the walker looks a leaf's
/// permissions up rather than derives them (a few instructions instead
/// of some forty on every stage-1 walk).
static S1_PERMS: [Perms; 64] = {
    let mut lut = [Perms(0); 64];
    let mut i = 0;
    while i < 64 {
        lut[i] = s1_perms_of(i as u8);
        i += 1;
    }
    lut
};

/// Returns the permissions of [`s1_perm_index`] `i`: the architecture's
/// stage-1 rules, written out once.
const fn s1_perms_of(i: u8) -> Perms {
    let pxn = i & TableAttrs::PXN != 0;
    let uxn = i & TableAttrs::UXN != 0;
    let user = i & TableAttrs::NO_USER == 0;
    let ro = i & TableAttrs::READ_ONLY != 0;
    let wxn_on = i & 1 << 4 != 0;
    let pan = i & 1 << 5 != 0;
    let write_user = user && !ro;
    let writable = !ro;
    // Privileged code may not execute memory that unprivileged code can
    // write, and WXN makes every writable page execute-never.
    let wxn = wxn_on && writable;
    let exec_priv = !(pxn || write_user || wxn);
    let exec_user = !(uxn || wxn);
    let priv_data = !(pan && user);
    let mut bits = 0;
    if priv_data {
        bits |= Perms::READ_PRIV;
    }
    if user {
        bits |= Perms::READ_USER;
    }
    if writable && priv_data {
        bits |= Perms::WRITE_PRIV;
    }
    if write_user {
        bits |= Perms::WRITE_USER;
    }
    if exec_priv {
        bits |= Perms::EXEC_PRIV;
    }
    if exec_user {
        bits |= Perms::EXEC_USER;
    }
    Perms::from_bits(bits)
}

#[inline(always)]
fn s1_perms(desc: RawDesc, t: TableAttrs, p: S1Perm) -> Perms {
    S1_PERMS[s1_perm_index(desc, t, p)]
}

fn s2_perms(cfg: &TableCfg, desc: RawDesc) -> Perms {
    let r = desc.ap_user_or_s2_read();
    let w = desc.ap_ro_or_s2_write();
    let xn = if cfg.xnx {
        desc.s2_xn()
    } else {
        u64::from(desc.uxn()) << 1
    };
    let (xp, xu) = match xn {
        0 => (true, true),
        1 => (false, true),
        2 => (false, false),
        _ => (true, false),
    };
    let bit = |b: bool, v: u8| if b { v } else { 0 };
    Perms::from_bits(
        bit(r, Perms::READ_PRIV | Perms::READ_USER)
            | bit(w, Perms::WRITE_PRIV | Perms::WRITE_USER)
            | bit(xp, Perms::EXEC_PRIV)
            | bit(xu, Perms::EXEC_USER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_memory::{Coherency, SimMemory};

    fn cfg4k() -> TableCfg {
        TableCfg {
            shift: 12,
            start_level: 0,
            ias: 48,
            ttb: 0,
            oas: 48,
            pa52: false,
            stage2: false,
            had: false,
            ha: false,
            hd: false,
            affd: false,
            xnx: false,
        }
    }

    #[test]
    fn geometry_per_granule() {
        let c = cfg4k();
        assert_eq!(
            [
                c.level_lsb(0),
                c.level_lsb(1),
                c.level_lsb(2),
                c.level_lsb(3)
            ],
            [39, 30, 21, 12]
        );
        let c16 = TableCfg { shift: 14, ..c };
        assert_eq!(
            [c16.level_lsb(0), c16.level_lsb(1), c16.level_lsb(2)],
            [47, 36, 25]
        );
        let c64 = TableCfg { shift: 16, ..c };
        assert_eq!(
            [c64.level_lsb(1), c64.level_lsb(2), c64.level_lsb(3)],
            [42, 29, 16]
        );
        assert!(!c64.block_ok(1));
        assert!(TableCfg { pa52: true, ..c64 }.block_ok(1));
        let s2 = TableCfg {
            start_level: 1,
            ias: 40,
            ..c
        };
        assert_eq!(s2.start_table_bytes(), 8 * 1024);
    }

    fn acc(write: bool, instruction: bool, privileged: bool) -> Access {
        Access {
            write,
            privileged,
            instruction,
        }
    }

    #[test]
    fn each_access_kind_has_its_own_permission_bit() {
        let named = [
            (acc(true, false, true), Perms::WRITE_PRIV),
            (acc(true, false, false), Perms::WRITE_USER),
            (acc(false, true, true), Perms::EXEC_PRIV),
            (acc(false, true, false), Perms::EXEC_USER),
            (acc(false, false, true), Perms::READ_PRIV),
            (acc(false, false, false), Perms::READ_USER),
            // A write is checked as a write even when flagged instruction.
            (acc(true, true, true), Perms::WRITE_PRIV),
            (acc(true, true, false), Perms::WRITE_USER),
        ];
        for (a, bit) in named {
            assert_eq!(1u8 << a.bit(), bit, "{a:?}");
            let only = Perms::from_bits(bit);
            for (b, other) in named {
                assert_eq!(only.allows(b), other == bit, "{a:?} vs {b:?}");
            }
            assert!(!Perms::from_bits(Perms::ACCESSES & !bit).allows(a));
        }
    }

    #[test]
    fn stage_intersection_keeps_common_accesses_and_either_dirty_state() {
        let rw = Perms::from_bits(Perms::READ_PRIV | Perms::WRITE_PRIV);
        let r = Perms::from_bits(Perms::READ_PRIV | Perms::READ_USER).with_dirty_on_write();
        let both = rw.and(r);
        assert_eq!(
            both,
            Perms::from_bits(Perms::READ_PRIV).with_dirty_on_write()
        );
        assert!(both.dirty_on_write() && !both.writable());
        assert!(!rw.and(Perms::all()).dirty_on_write());
        assert_eq!(Perms::all().and(rw), rw);
    }

    #[test]
    fn stage1_permissions_follow_ap_pxn_uxn_and_table_limits() {
        let leaf = |ap: u64, pxn: bool, uxn: bool| {
            RawDesc(3 | ap << 6 | u64::from(pxn) << 53 | u64::from(uxn) << 54)
        };
        let none = S1Perm::default();
        let t = TableAttrs::default();
        // AP=00: privileged read/write only; privileged may execute.
        let p = s1_perms(leaf(0, false, false), t, none);
        assert_eq!(
            p,
            Perms::from_bits(
                Perms::READ_PRIV | Perms::WRITE_PRIV | Perms::EXEC_PRIV | Perms::EXEC_USER
            )
        );
        // AP=01: both read/write; memory the user may write is never
        // privileged-executable.
        let p = s1_perms(leaf(1, false, false), t, none);
        assert_eq!(
            p,
            Perms::from_bits(
                Perms::READ_PRIV
                    | Perms::READ_USER
                    | Perms::WRITE_PRIV
                    | Perms::WRITE_USER
                    | Perms::EXEC_USER
            )
        );
        // AP=11 with PXN and UXN: read only, no execution.
        let p = s1_perms(leaf(3, true, true), t, none);
        assert_eq!(p, Perms::from_bits(Perms::READ_PRIV | Perms::READ_USER));
        // PAN takes privileged data access to user pages away.
        let pan = S1Perm {
            wxn: false,
            pan: true,
        };
        let p = s1_perms(leaf(3, true, true), t, pan);
        assert_eq!(p, Perms::from_bits(Perms::READ_USER));
        // WXN makes writable pages execute-never.
        let wxn = S1Perm {
            wxn: true,
            pan: false,
        };
        let p = s1_perms(leaf(0, false, false), t, wxn);
        assert_eq!(p, Perms::from_bits(Perms::READ_PRIV | Perms::WRITE_PRIV));
        // APTable[1] on the way makes the leaf read-only.
        let ro = TableAttrs::default().with_table(RawDesc(3 | 1 << 62), 0xf);
        let p = s1_perms(leaf(0, false, false), ro, none);
        assert!(!p.writable());
    }

    #[test]
    fn table_attributes_restrict_as_the_leaf_bits_they_stand_for() {
        // APTable[1] acts as AP[2] = 1, APTable[0] as AP[1] = 0, PXNTable
        // as PXN and UXNTable as UXN: every leaf, every table limit, with
        // and without WXN and PAN.
        for i in 0..1u64 << 10 {
            let (ap, pxn, uxn, t) = (i & 3, i >> 2 & 1, i >> 3 & 1, (i >> 4 & 0xf) as u8);
            let p = S1Perm {
                wxn: i >> 8 & 1 != 0,
                pan: i >> 9 & 1 != 0,
            };
            let leaf = |ap: u64, pxn: u64, uxn: u64| RawDesc(3 | ap << 6 | pxn << 53 | uxn << 54);
            let table = TableAttrs::from_bits(t);
            let ap_eff = (ap | u64::from(t >> 3 & 1) << 1) & !u64::from(t >> 2 & 1);
            let want = s1_perms(
                leaf(ap_eff, pxn | u64::from(t & 1), uxn | u64::from(t >> 1 & 1)),
                TableAttrs::default(),
                p,
            );
            assert_eq!(s1_perms(leaf(ap, pxn, uxn), table, p), want, "case {i:#x}");
        }
    }

    #[test]
    fn pa52_descriptor_carries_high_bits_in_15_12() {
        let c = TableCfg {
            shift: 16,
            pa52: true,
            oas: 52,
            ..cfg4k()
        };
        let d = 0x0000_1234_5678_0000u64 | 0xa << 12 | 3;
        assert_eq!(desc_addr(&c, RawDesc(d), 16), 0x000a_1234_5678_0000);
    }

    #[test]
    fn level3_block_encoding_is_a_translation_fault() {
        let m = SimMemory::new(0x4000_0000, 1 << 20, Coherency::Coherent).unwrap();
        let mut c = cfg4k();
        c.start_level = 3;
        c.ias = 21;
        c.ttb = 0x4000_0000;
        m.cpu_write_u64(c.ttb, 0x4001_0000 | 1 | 1 << 10).unwrap();
        let acc = Access {
            write: false,
            privileged: true,
            instruction: false,
        };
        let start = Start {
            level: 3,
            table: c.ttb,
            attrs: TableAttrs::default(),
        };
        let mut steps = [(0, 0, TableAttrs::default()); 4];
        let mut n = 0;
        let r = walk::<(), _>(
            Tables::new(&m),
            &c,
            start,
            0,
            acc,
            S1Perm::default(),
            &mut |a| Ok(a),
            &mut steps,
            &mut n,
        );
        assert!(matches!(r, Err(Halt::Fault(f)) if f.kind == EventType::FTranslation));
        m.cpu_write_u64(c.ttb, 0x4001_0000 | 3 | 1 << 10).unwrap();
        let r = walk::<(), _>(
            Tables::new(&m),
            &c,
            start,
            0x123,
            acc,
            S1Perm::default(),
            &mut |a| Ok(a),
            &mut steps,
            &mut n,
        );
        assert_eq!(r.unwrap().oa_base, 0x4001_0000);
    }

    #[test]
    fn table_attributes_apply_only_to_hierarchical_stage1_walks() {
        let m = SimMemory::new(0x4000_0000, 1 << 20, Coherency::Coherent).unwrap();
        let mut c = cfg4k();
        c.start_level = 2;
        c.ias = 30;
        c.ttb = 0x4000_0000;
        let l3 = c.ttb + 0x1000;
        // APTable[1] (read-only) and PXNTable on the way to the page.
        m.cpu_write_u64(c.ttb, l3 | 3 | 1 << 62 | 1 << 59).unwrap();
        let write = Access {
            write: true,
            privileged: true,
            instruction: false,
        };
        let walk_with = |c: &TableCfg, leaf: u64| {
            m.cpu_write_u64(l3, leaf).unwrap();
            let mut steps = [(0, 0, TableAttrs::default()); 4];
            let mut n = 0;
            let r = walk::<(), _>(
                Tables::new(&m),
                c,
                Start::root(c),
                0x123,
                write,
                S1Perm::default(),
                &mut |a| Ok(a),
                &mut steps,
                &mut n,
            );
            assert_eq!(n, 1);
            // The step is the level-2 descriptor, by its lowest input bit.
            assert_eq!((steps[0].0, steps[0].1), (21, l3));
            (r, steps[0].2.bits())
        };
        // Stage 1, privileged read/write page (AP = 00), AF set.
        let s1_page = 0x4002_0000 | 3 | 1 << 10;
        let (r, attrs) = walk_with(&c, s1_page);
        assert!(matches!(r, Err(Halt::Fault(f)) if f.kind == EventType::FPermission));
        assert_eq!(attrs, 0b1001, "PXNTable and APTable[1] accumulated");
        c.had = true;
        let (r, attrs) = walk_with(&c, s1_page);
        assert_eq!(
            r.unwrap().oa_base,
            0x4002_0000,
            "HAD: the table limits nothing"
        );
        assert_eq!(attrs, 0);
        // Stage 2: bits 62:59 of a table descriptor are not attributes.
        c.had = false;
        c.stage2 = true;
        let (r, attrs) = walk_with(&c, 0x4002_0000 | 3 | 1 << 10 | 3 << 6);
        assert_eq!(r.unwrap().oa_base, 0x4002_0000);
        assert_eq!(attrs, 0);
    }
}
