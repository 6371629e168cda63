//! Translation of one input address: the TLB hit paths, stage-1 and
//! stage-2 walks through the walker, walk-cache use, and turning a stop
//! into the architected event. Configuration comes from `context`.

use super::State;
use super::context::ctx_key;
use super::context::{Ctx, MAX_SSID_BITS, Mode, NO_SSID};
use super::decode::{Cd, S2Ste};
use crate::event::{Event, EventType, FaultClass};
use crate::layout::ste_config;
use crate::regs::{cr0, gbpa};
use crate::stats::TraceEntry;
use crate::tlb::{Regime, Tag, TlbEntry, WalkEntry};
use crate::walk::{
    self, Access, Halt, Leaf, Perms, S1Perm, Start, TableAttrs, TableCfg, Tables, WalkFault,
};
use crate::{DmaFault, DmaRequest, Termination, Translation};
use core::convert::Infallible;

/// A translation as the paths below build it: two words.
///
/// Moving a [`Translation`] inside a `Result` stalled every walk (seen with
/// `perf annotate`): its constructors store its two `bool`s a byte at a
/// time and its two addresses a word at a time, and the move reloads them
/// with loads wider than those stores, which the CPU cannot forward from
/// its store buffer. This one keeps the flags in the low bits of the byte
/// count, so becoming a `Translation` (once, on the way out) shifts that
/// word: unlike a copy or a mask of both words, a shift of one of them is
/// not merged into one 16-byte load.
#[derive(Clone, Copy)]
pub(super) struct Xlat {
    pa: u64,
    /// Bytes left in the unit << 2 | TLB_HIT | BYPASS (no unit comes near
    /// 2^62 bytes).
    meta: u64,
}

impl Xlat {
    const BYPASS: u64 = 1 << 0;
    const TLB_HIT: u64 = 1 << 1;

    /// Returns a translation the TLB served.
    #[inline]
    fn hit(pa: u64, bytes_left: u64) -> Self {
        Self {
            pa,
            meta: bytes_left << 2 | Self::TLB_HIT,
        }
    }

    /// Returns a translation a walk produced.
    #[inline]
    fn walked(pa: u64, bytes_left: u64) -> Self {
        Self {
            pa,
            meta: bytes_left << 2,
        }
    }

    /// Returns a translation that bypassed both stages.
    #[inline]
    fn bypass(pa: u64, bytes_left: u64) -> Self {
        Self {
            pa,
            meta: bytes_left << 2 | Self::BYPASS,
        }
    }
}

impl From<Xlat> for Translation {
    #[inline]
    fn from(x: Xlat) -> Self {
        Translation {
            pa: x.pa,
            bytes_left: x.meta >> 2,
            bypass: x.meta & Xlat::BYPASS != 0,
            tlb_hit: x.meta & Xlat::TLB_HIT != 0,
        }
    }
}

/// What the lookup of a cached context and its TLB entry found.
enum Cached {
    Hit(Xlat),
    /// The context is cached, its TLB entry is not. For stage 1 and nested,
    /// what the walk needs of the context is in the caller's walk slot (and
    /// stage 2 of a nested one in its stage-2 slot); a stage-2 context is
    /// copied to the caller's context slot.
    Miss,
    /// Nothing the fast path serves: the full path decides.
    Unknown,
}

/// What a stage-1 (or nested) walk after a TLB miss needs of the context:
/// the selected table and the CD's controls, a fraction of the context.
#[derive(Clone, Copy)]
struct S1Walk {
    tt: TableCfg,
    perm: S1Perm,
    record: bool,
    stall: bool,
    abort: bool,
    tag: Tag,
    /// The walk's input address.
    ia: u64,
    /// The TLB's address for it (sign-extended for the TTBR1 half).
    key_va: u64,
    /// The STE overrides neither privilege nor instruction: the last-hit
    /// copy may serve the next access.
    plain: bool,
}

impl S1Walk {
    #[inline]
    fn new(ctx: &Ctx, cd: &Cd, (tt, ia, key_va): (&TableCfg, u64, u64)) -> Self {
        Self {
            tt: *tt,
            perm: cd.perm,
            record: cd.record,
            stall: cd.stall,
            abort: cd.abort,
            tag: ctx.tag,
            ia,
            key_va,
            plain: ctx.plain(),
        }
    }
}

impl Ctx {
    /// Returns stage 2 of a nested context.
    ///
    /// Kept apart from [`S1Walk`]: moving a stage-1 walk's state with an
    /// empty `Option<S2Ste>` inside still copied the whole option, and that
    /// copy read stack words just written a byte at a time (a
    /// store-forwarding stall on every stage-1 walk).
    #[inline]
    fn nested_s2(&self) -> Option<S2Ste> {
        if self.mode == Mode::Nested {
            self.ste.s2
        } else {
            None
        }
    }

    /// Returns whether the STE overrides neither privilege nor instruction.
    #[inline]
    fn plain(&self) -> bool {
        self.ste.privcfg == 0 && self.ste.instcfg == 0
    }
}

/// Returns the access `req` makes as the device made it.
#[inline]
fn access(req: &DmaRequest) -> Access {
    Access {
        write: req.write,
        privileged: req.privileged,
        instruction: req.instruction && !req.write,
    }
}

/// Returns the event template of a translation of `iova` by `req`.
#[inline]
fn base_event(req: &DmaRequest, iova: u64, acc: Access) -> Event {
    Event {
        privileged: acc.privileged,
        instruction: acc.instruction,
        read: !acc.write,
        input_addr: iova,
        ..Event::new(EventType::FTranslation, req.sid).with_ssid(req.ssid)
    }
}

/// Why a translation stopped, before recording.
pub(super) enum Stop {
    Global,
    StreamAbort,
    /// A configuration error: always recorded, always aborts.
    Config(Event),
    /// A translation-related fault controlled by R/S/A.
    Fault {
        ev: Event,
        record: bool,
        stall: bool,
        abort: bool,
    },
}

impl State {
    pub(super) fn s2_stop(
        &mut self,
        s2: &S2Ste,
        f: WalkFault,
        ipa: u64,
        class: FaultClass,
        base_ev: Event,
    ) -> Stop {
        let ev = Event {
            kind: f.kind,
            s2: true,
            class,
            // The record holds FetchAddr[55:3] for aborts and IPA[55:12]
            // for translation-related faults.
            addr2: if f.kind == EventType::FWalkEabt {
                f.fetch_pa
            } else {
                ipa & !0xfff
            },
            ..base_ev
        };
        if f.kind.is_translation_fault() {
            Stop::Fault {
                ev,
                record: s2.record,
                stall: s2.stall,
                abort: true,
            }
        } else {
            Stop::Config(ev)
        }
    }

    // ---- translation ----------------------------------------------------

    /// Translates through stage 2 only (data IPA or a structure/table
    /// fetch of a nested stage 1), using and filling the TLB.
    pub(super) fn s2_translate(
        &mut self,
        s2: &S2Ste,
        ipa: u64,
        acc: Access,
    ) -> Result<(u64, TlbEntry), WalkFault> {
        let tt = s2.tt;
        if ipa >> tt.ias != 0 {
            return Err(WalkFault {
                kind: EventType::FTranslation,
                level: tt.start_level,
                fetch_pa: 0,
            });
        }
        let tag = Tag {
            regime: Regime::S2,
            vmid: s2.vmid,
            asid: 0,
        };
        let sizes = [tt.level_lsb(3), tt.level_lsb(2), tt.level_lsb(1)];
        let sizes = &sizes[..(4 - tt.start_level.max(1)) as usize];
        let t = tag.packed();
        if let Some(e) = self.tlb.lookup_packed(t, ipa, sizes).copied() {
            if e.perms.allows(acc) {
                self.stats.tlb_hits += 1;
                return Ok((e.out_base + (ipa & ((1 << e.size_log2) - 1)), e));
            }
            if !(acc.write && e.perms.dirty_on_write()) {
                return Err(WalkFault {
                    kind: EventType::FPermission,
                    level: e.level,
                    fetch_pa: 0,
                });
            }
        }
        self.stats.tlb_misses += 1;
        self.set_last(None);
        let start = self.walk_start(t, &tt, ipa);
        let mut steps = [(0, 0, TableAttrs::default()); 4];
        let mut nsteps = 0;
        self.stats.walks += 1;
        let leaf = walk::walk::<Infallible, _>(
            Tables::new(&*self.mem),
            &tt,
            start,
            ipa,
            acc,
            S1Perm::default(),
            &mut Ok,
            &mut steps,
            &mut nsteps,
        )
        .map_err(Halt::into_fault);
        self.note_steps_outlined(t, &tt, ipa, &steps[..nsteps]);
        self.trace(|| TraceEntry::Walk {
            stage2: true,
            ia: ipa,
            result: leaf.map(|l| l.oa_base).map_err(|f| f.kind),
        });
        let leaf = leaf?;
        self.count_leaf(&leaf);
        let e = TlbEntry {
            out_base: leaf.oa_base,
            size_log2: leaf.size_log2,
            match_base: ipa & !((1 << leaf.size_log2) - 1),
            match_size_log2: leaf.size_log2,
            level: leaf.level,
            granule_shift: tt.shift,
            global: false,
            perms: leaf.perms,
            s1_perms: Perms::all(),
            ipa_base: 0,
        };
        if self.tlb.insert_packed(t, ipa, e) {
            return Err(WalkFault {
                kind: EventType::FTlbConflict,
                level: leaf.level,
                fetch_pa: 0,
            });
        }
        Ok((leaf.oa_base + (ipa & ((1 << leaf.size_log2) - 1)), e))
    }

    fn count_leaf(&mut self, leaf: &Leaf) {
        self.stats.descriptor_reads += u64::from(leaf.reads);
        self.stats.httu_updates += u64::from(leaf.updates);
    }

    /// Returns where a walk of `ia` starts: the deepest cached table
    /// descriptor, or the configured start table.
    /// `t` is the packed tag ([`Tag::packed`]).
    #[inline(always)]
    fn walk_start(&mut self, t: u64, tt: &TableCfg, ia: u64) -> Start {
        // Disabling the TLB empties the walk cache too: nothing to probe.
        if !self.tlb.enabled {
            return Start::root(tt);
        }
        self.walk_start_cached(t, tt, ia)
    }

    /// [`State::walk_start`] with the walk cache on, out of line.
    #[inline(always)]
    fn walk_start_cached(&mut self, t: u64, tt: &TableCfg, ia: u64) -> Start {
        let stride = tt.stride();
        // Deepest first: the first table found decides.
        let (mut level, mut lsb) = (3, tt.level_lsb(3));
        while level > tt.start_level {
            level -= 1;
            lsb += stride;
            if let Some(w) = self.tlb.walk_get(t, ia, lsb) {
                if w.granule_shift() != tt.shift {
                    break;
                }
                self.stats.walk_cache_hits += 1;
                return Start {
                    level: level + 1,
                    table: w.next_table(),
                    attrs: w.attrs(),
                };
            }
        }
        Start::root(tt)
    }

    /// [`State::note_steps`] kept out of line, for the stage-2 walks of a
    /// nested translation (which would grow too much with it inlined).
    #[inline(never)]
    fn note_steps_outlined(
        &mut self,
        t: u64,
        tt: &TableCfg,
        ia: u64,
        steps: &[(u32, u64, TableAttrs)],
    ) {
        self.note_steps(t, tt, ia, steps);
    }

    #[inline(always)]
    fn note_steps(&mut self, t: u64, tt: &TableCfg, ia: u64, steps: &[(u32, u64, TableAttrs)]) {
        let entries = steps
            .iter()
            .map(|&(lsb, next, attrs)| (lsb, WalkEntry::new(next, attrs, tt.shift)));
        self.tlb.walk_fill(t, ia, entries);
    }

    /// Turns a stop into the DMA fault, recording the event as the
    /// architecture says.
    fn finish(&mut self, stop: Stop) -> DmaFault {
        match stop {
            Stop::Global => DmaFault::GlobalAbort,
            Stop::StreamAbort => DmaFault::StreamAbort,
            Stop::Config(ev) => {
                // Invalid StreamIDs are only reported when software asks.
                let recorded = if ev.kind == EventType::CBadStreamId && self.regs.cr2 & 2 == 0 {
                    self.stats.events[usize::from(ev.kind.code())] += 1;
                    self.stats.events_suppressed += 1;
                    false
                } else {
                    self.record_event(ev)
                };
                DmaFault::Terminated {
                    event: ev,
                    recorded,
                    termination: Termination::Abort,
                }
            }
            Stop::Fault {
                mut ev,
                record,
                stall,
                abort,
            } => {
                if let Some(stag) = stall.then(|| self.alloc_stag()).flatten() {
                    ev.stall = true;
                    ev.stag = stag;
                    self.stats.stalls += 1;
                    self.stalled.push(super::Stalled {
                        sid: ev.sid,
                        stag: ev.stag,
                    });
                    self.record_event(ev);
                    return DmaFault::Stalled { event: ev };
                }
                let recorded = if record {
                    self.record_event(ev)
                } else {
                    self.stats.events[usize::from(ev.kind.code())] += 1;
                    self.stats.events_suppressed += 1;
                    false
                };
                DmaFault::Terminated {
                    event: ev,
                    recorded,
                    termination: if abort {
                        Termination::Abort
                    } else {
                        Termination::RazWi
                    },
                }
            }
        }
    }

    /// Serves a translation from the one-entry copy of the TLB entry used
    /// last (same stream, same page), which any command, register write or
    /// TLB miss drops; so it never outlives the entry it copies.
    #[inline]
    fn last_hit(&mut self, req: &DmaRequest, iova: u64) -> Option<Xlat> {
        let l = self.last.as_ref()?;
        if l.sid != req.sid
            || l.ssid != req.ssid.unwrap_or(NO_SSID)
            || iova >> l.size_log2 != l.page
            || req.ats_translated
            || self.trace.is_some()
            || (l.size_log2 >= 21 && self.tlb.rewalks_blocks())
        {
            return None;
        }
        let acc = Access {
            write: req.write,
            privileged: req.privileged,
            instruction: req.instruction && !req.write,
        };
        if !l.perms.allows(acc) {
            return None;
        }
        let off = iova & ((1 << l.size_log2) - 1);
        let t = Xlat::hit(l.out_base + off, (1 << l.size_log2) - off);
        self.stats.tlb_hits += 1;
        // The page repeats: let the next ones skip the lock.
        let l = *l;
        self.publish(iova, &l);
        Some(t)
    }

    /// Serves a TLB hit of an already cached context by reference, without
    /// building the fault-reporting state the full path needs, and
    /// publishes the entry to the lock-free copies for the next hits on
    /// the page. On a TLB miss of a plain cached context, puts what the walk needs in `walk`
    /// (stage 1 and nested: the selected table and the CD's controls, not
    /// the whole context) or copies the context to `slot` (stage 2), so
    /// the walk that follows needs neither the context lookup nor the TLB
    /// lookup nor the table selection again.
    #[inline]
    fn cached_hit(
        &mut self,
        req: &DmaRequest,
        iova: u64,
        slot: &mut Option<Ctx>,
        walk: &mut Option<S1Walk>,
        s2: &mut Option<S2Ste>,
    ) -> Cached {
        if self.regs.cr0 & cr0::SMMUEN == 0 || req.ats_translated || self.trace.is_some() {
            return Cached::Unknown;
        }
        let (sid, ssid) = (req.sid, req.ssid.unwrap_or(NO_SSID));
        let Some(ctx) = self.ctx_cache.get(&ctx_key(sid, ssid)) else {
            return Cached::Unknown;
        };
        if !ctx.plain() {
            return Cached::Unknown;
        }
        let (ia, input) = match (ctx.mode, &ctx.cd) {
            (Mode::S2, _) => (iova, None),
            (Mode::S1 | Mode::Nested, Some(cd)) => {
                let Some(w) = cd.walk_input(iova) else {
                    return Cached::Unknown;
                };
                (w.2, Some((cd, w)))
            }
            _ => return Cached::Unknown,
        };
        let acc = access(req);
        let Some(&e) = self.tlb.lookup(ctx.tag, ia, &ctx.sizes[..ctx.nsizes]) else {
            // The full path need not look again.
            if let Some((cd, w)) = input {
                *walk = Some(S1Walk::new(ctx, cd, w));
                // Only a nested context has one: a stage-1 walk writes
                // nothing here.
                if ctx.mode == Mode::Nested {
                    *s2 = ctx.ste.s2;
                }
            } else {
                *slot = Some(*ctx);
            }
            return Cached::Miss;
        };
        if !e.perms.allows(acc) {
            return Cached::Unknown;
        }
        self.stats.tlb_hits += 1;
        self.stats.ste_hits += 1;
        if ia == iova {
            let l = super::LastHit {
                sid,
                ssid,
                page: ia >> e.size_log2,
                size_log2: e.size_log2,
                out_base: e.out_base,
                perms: e.perms,
            };
            // No block hits here when strict break-before-make re-walks
            // them (the lookup finds none), so its copy may serve too.
            self.publish(iova, &l);
            self.set_last(Some(l));
        }
        let off = ia & ((1 << e.size_log2) - 1);
        Cached::Hit(Xlat::hit(e.out_base + off, (1 << e.size_log2) - off))
    }

    /// Keeps the last-hit copy of the TLB entry `e` for the stream of
    /// `req`; `plain` as [`Ctx::plain`].
    ///
    /// Takes the entry by value and reads only its fields: a reference
    /// would keep the entry a walk just built in memory, and the TLB fill
    /// would then copy it from there with loads wider than the stores
    /// that built it (a store-forwarding stall on every walk).
    #[inline(always)]
    fn remember(&mut self, plain: bool, req: &DmaRequest, ia: u64, e: TlbEntry) {
        // The copy may only stand for an entry the TLB holds: with the TLB
        // disabled nothing was cached, and the next access must walk.
        if !self.tlb.enabled || !plain {
            return;
        }
        self.set_last(Some(super::LastHit {
            sid: req.sid,
            ssid: req.ssid.unwrap_or(NO_SSID),
            page: ia >> e.size_log2,
            size_log2: e.size_log2,
            out_base: e.out_base,
            perms: e.perms,
        }));
    }

    pub(super) fn translate(
        &mut self,
        req: &DmaRequest,
        iova: u64,
    ) -> Result<Translation, DmaFault> {
        self.stats.translations += 1;
        if let Some(s) = req.ssid.filter(|s| s >> MAX_SSID_BITS != 0) {
            if self.regs.cr0 & cr0::SMMUEN != 0 {
                // Kept away from the caches, whose keys only tell apart
                // architecturally possible SubstreamIDs.
                let stop = self.wide_ssid(req.sid, s);
                return Err(self.finish(stop));
            }
        }
        if let Some(t) = self.last_hit(req, iova) {
            return Ok(t.into());
        }
        let (mut cached, mut walk, mut s2) = (None, None, None);
        // Each path concludes on its own: a walk's result, built in
        // registers, is then stored once into the caller's slot instead of
        // going through a shared temporary.
        match self.cached_hit(req, iova, &mut cached, &mut walk, &mut s2) {
            Cached::Hit(t) => Ok(t.into()),
            Cached::Miss => {
                // As `context` counts a cached context.
                self.stats.ste_hits += 1;
                let r = match &walk {
                    Some(w) => self.s1_walk(w, s2.as_ref(), iova, access(req), req),
                    None => self.translate_inner(req, iova, cached.as_ref()),
                };
                self.conclude(r)
            }
            Cached::Unknown => {
                let r = self.translate_inner(req, iova, None);
                self.conclude(r)
            }
        }
    }

    /// Returns the result of a translation that did not hit, recording the
    /// event of a stop, after dropping the `Iotlb` copies of the TLB
    /// entries it evicted or replaced.
    #[inline(always)]
    fn conclude(&mut self, r: Result<Xlat, Stop>) -> Result<Translation, DmaFault> {
        let r = match r {
            Ok(t) => Ok(t.into()),
            Err(stop) => Err(self.finish(stop)),
        };
        if self.tlb.removed_any() {
            self.sync_iotlbs_removed();
        }
        r
    }

    /// Returns how a transaction with a SubstreamID wider than the
    /// architecture's 20 bits ends: no CD can be selected by it, so after
    /// the stream's own checks (invalid StreamID, STE fetch, bad or
    /// aborting STE) it is C_BAD_SUBSTREAMID. The event carries the 20 bits
    /// its record can hold, so the event returned equals the one recorded.
    fn wide_ssid(&mut self, sid: u32, ssid: u32) -> Stop {
        match self.get_ste(sid) {
            Err(stop) => stop,
            Ok(ste) if ste.config == ste_config::ABORT => Stop::StreamAbort,
            Ok(_) => Stop::Config(
                Event::new(EventType::CBadSubstreamId, sid)
                    .with_ssid(Some(ssid & ((1 << MAX_SSID_BITS) - 1))),
            ),
        }
    }

    /// Translates `iova` through the full path; `cached` is the context
    /// when the caller already found it cached (SMMUEN is then set).
    fn translate_inner(
        &mut self,
        req: &DmaRequest,
        iova: u64,
        cached: Option<&Ctx>,
    ) -> Result<Xlat, Stop> {
        let bypass = |pa: u64| Xlat::bypass(pa, 0x1000 - (pa & 0xfff));
        if self.regs.cr0 & cr0::SMMUEN == 0 {
            if self.regs.gbpa & gbpa::ABORT != 0 {
                return Err(Stop::Global);
            }
            return Ok(bypass(iova));
        }
        // Traffic an endpoint marks as translated (by its ATC) is checked
        // against the STE only with SMMU_CR0.ATSCHK set; otherwise it
        // bypasses the SMMU, whatever the stream's configuration. (Without
        // ATS support no such traffic passes: the STE check below refuses
        // it.)
        if req.ats_translated && self.cfg.ats && self.regs.cr0 & cr0::ATSCHK == 0 {
            return Ok(bypass(iova));
        }
        let sid = req.sid;
        let mut acc = access(req);
        let event = |acc: Access| base_event(req, iova, acc);
        let looked_up;
        let ctx = match cached {
            Some(ctx) => ctx,
            None => {
                // Faults of the configuration fetch see the access as the
                // device made it.
                looked_up = self.context(sid, req.ssid, event(acc))?;
                &looked_up
            }
        };
        match ctx.ste.privcfg {
            2 => acc.privileged = false,
            3 => acc.privileged = true,
            _ => {}
        }
        match ctx.ste.instcfg {
            2 => acc.instruction = false,
            3 => acc.instruction = !acc.write,
            _ => {}
        }
        let base_ev = event(acc);
        // An aborting STE aborts translated traffic too, silently; a
        // bypassing one refuses it, as EATS = 0b00 does (its EATS is
        // IGNORED).
        if req.ats_translated && !matches!(ctx.mode, Mode::Abort) {
            return match (ctx.ste.eats, ctx.ste.s2) {
                (1, _) => Ok(bypass(iova)),
                // Split-stage ATS: the endpoint's ATC holds stage 1 only, so
                // what it sends is an IPA. Not remembered: the copy would
                // serve the same address untranslated by stage 1.
                (2, Some(s2)) => match self.s2_translate(&s2, iova, acc) {
                    Ok((pa, e)) => {
                        let off = iova & ((1 << e.size_log2) - 1);
                        Ok(Xlat::walked(pa, (1u64 << e.size_log2) - off))
                    }
                    Err(f) => Err(self.s2_stop(&s2, f, iova, FaultClass::Input, base_ev)),
                },
                _ => Err(Stop::Config(Event {
                    kind: EventType::FTranslForbidden,
                    ..base_ev
                })),
            };
        }
        // With stage 1 bypassed its output is the input address, which must
        // fit the implemented address size (IAS = OAS here).
        let s1_bypass_too_wide = iova >> self.cfg.oas_bits != 0;
        let bypass_fault = || {
            Stop::Config(Event {
                kind: EventType::FAddrSize,
                ..base_ev
            })
        };
        match ctx.mode {
            Mode::Abort => Err(Stop::StreamAbort),
            Mode::Bypass if s1_bypass_too_wide => Err(bypass_fault()),
            Mode::Bypass => Ok(bypass(iova)),
            Mode::S2 if s1_bypass_too_wide => Err(bypass_fault()),
            Mode::S2 => {
                let s2 = ctx.ste.s2.unwrap_or_else(unreachable_s2);
                match self.s2_translate(&s2, iova, acc) {
                    Ok((pa, e)) => {
                        self.remember(ctx.plain(), req, iova, e);
                        let off = iova & ((1 << e.size_log2) - 1);
                        Ok(Xlat::walked(pa, (1u64 << e.size_log2) - off))
                    }
                    Err(f) => Err(self.s2_stop(&s2, f, iova, FaultClass::Input, base_ev)),
                }
            }
            Mode::S1 | Mode::Nested => self.s1_translate(ctx, req, iova, acc, base_ev),
        }
    }

    fn s1_translate(
        &mut self,
        ctx: &Ctx,
        req: &DmaRequest,
        va: u64,
        acc: Access,
        base_ev: Event,
    ) -> Result<Xlat, Stop> {
        let Some(cd) = ctx.cd else {
            return Err(Stop::Config(Event {
                kind: EventType::CBadCd,
                ..base_ev
            }));
        };
        let s1_fault = |kind: EventType| Stop::Fault {
            ev: Event { kind, ..base_ev },
            record: cd.record,
            stall: cd.stall,
            abort: cd.abort,
        };
        let Some(input) = cd.walk_input(va) else {
            return Err(s1_fault(EventType::FTranslation));
        };
        let w = S1Walk::new(ctx, &cd, input);
        let s2 = ctx.nested_s2();
        let (tag, key_va) = (w.tag, w.key_va);
        if let Some(e) = self
            .tlb
            .lookup(tag, key_va, &ctx.sizes[..ctx.nsizes])
            .copied()
        {
            let off = key_va & ((1 << e.size_log2) - 1);
            if e.perms.allows(acc) {
                self.stats.tlb_hits += 1;
                if key_va == va {
                    self.remember(w.plain, req, va, e);
                }
                self.trace(|| TraceEntry::TlbHit {
                    sid: base_ev.sid,
                    iova: va,
                });
                return Ok(Xlat::hit(e.out_base + off, (1 << e.size_log2) - off));
            }
            if !(acc.write && e.perms.dirty_on_write()) {
                // A stale entry keeps faulting until it is invalidated.
                if let (Some(s2), true) = (s2, e.s1_perms.allows(acc)) {
                    let f = WalkFault {
                        kind: EventType::FPermission,
                        level: 3,
                        fetch_pa: 0,
                    };
                    let ipa = e.ipa_base + off;
                    return Err(self.s2_stop(&s2, f, ipa, FaultClass::Input, base_ev));
                }
                return Err(s1_fault(EventType::FPermission));
            }
        }
        self.s1_walk(&w, s2.as_ref(), va, acc, req)
    }

    /// Walks `va` after a TLB miss, caching the translation.
    #[inline(always)]
    fn s1_walk(
        &mut self,
        w: &S1Walk,
        s2: Option<&S2Ste>,
        va: u64,
        acc: Access,
        req: &DmaRequest,
    ) -> Result<Xlat, Stop> {
        // Built only when a fault needs it.
        let base_ev = || base_event(req, va, acc);
        let s1_fault = |kind: EventType| Stop::Fault {
            ev: Event { kind, ..base_ev() },
            record: w.record,
            stall: w.stall,
            abort: w.abort,
        };
        let (tt, ia, key_va) = (w.tt, w.ia, w.key_va);
        let tag = w.tag.packed();
        self.stats.tlb_misses += 1;
        self.set_last(None);

        let start = self.walk_start(tag, &tt, key_va);
        let mut steps = [(0, 0, TableAttrs::default()); 4];
        let mut nsteps = 0;
        self.stats.walks += 1;
        let r = match s2 {
            // Descriptor addresses are physical: nothing else to consult,
            // so the walk borrows the memory and not the whole state.
            None => walk::walk::<Infallible, _>(
                Tables::new(&*self.mem),
                &tt,
                start,
                ia,
                acc,
                w.perm,
                &mut Ok,
                &mut steps,
                &mut nsteps,
            )
            .map_err(Halt::into_fault),
            Some(s2) => {
                // Each descriptor IPA goes through stage 2 (TLB and walks
                // of this state) first.
                let mem = self.mem.clone();
                let mut fetch =
                    |desc_ipa: u64| self.s2_fetch(s2, desc_ipa, FaultClass::TableWalk, base_ev);
                let r = walk::walk::<Stop, _>(
                    Tables::new(&*mem),
                    &tt,
                    start,
                    ia,
                    acc,
                    w.perm,
                    &mut fetch,
                    &mut steps,
                    &mut nsteps,
                );
                match r {
                    Ok(l) => Ok(l),
                    Err(Halt::Fault(f)) => Err(f),
                    Err(Halt::Fetch(stop)) => return Err(stop),
                }
            }
        };
        self.note_steps(tag, &tt, key_va, &steps[..nsteps]);
        self.trace(|| TraceEntry::Walk {
            stage2: false,
            ia: va,
            result: r.map(|l| l.oa_base).map_err(|f| f.kind),
        });
        let leaf = match r {
            Ok(l) => l,
            Err(f) => {
                if !f.kind.is_translation_fault() {
                    return Err(Stop::Config(Event {
                        kind: f.kind,
                        class: FaultClass::TableWalk,
                        addr2: f.fetch_pa,
                        ..base_ev()
                    }));
                }
                return Err(s1_fault(f.kind));
            }
        };
        self.count_leaf(&leaf);
        let s1_off = ia & ((1 << leaf.size_log2) - 1);
        let ipa = leaf.oa_base + s1_off;
        let (pa, size_log2, perms) = match s2 {
            None => (ipa, leaf.size_log2, leaf.perms),
            Some(s2) => {
                let (pa, e2) = self
                    .s2_translate(s2, ipa, acc)
                    .map_err(|f| self.s2_stop(s2, f, ipa, FaultClass::Input, base_ev()))?;
                let size = leaf.size_log2.min(e2.size_log2);
                (pa, size, leaf.perms.and(e2.perms))
            }
        };
        // Nothing to cache (or copy) with the TLB disabled.
        if self.tlb.enabled {
            let out_base = pa & !((1u64 << size_log2) - 1);
            let e = TlbEntry {
                out_base,
                size_log2,
                match_base: key_va & !((1 << leaf.size_log2) - 1),
                match_size_log2: leaf.size_log2,
                level: leaf.level,
                granule_shift: tt.shift,
                global: !leaf.not_global,
                perms,
                s1_perms: leaf.perms,
                ipa_base: ipa & !((1u64 << size_log2) - 1),
            };
            // Entries that a write would dirty stay uncached for writes: the
            // next write walks again and sets the dirty state.
            if self.tlb.insert_packed(tag, key_va, e) {
                return Err(s1_fault(EventType::FTlbConflict));
            }
            if key_va == va {
                self.remember(w.plain, req, va, e);
            }
        }
        let off = key_va & ((1 << size_log2) - 1);
        Ok(Xlat::walked(pa, (1 << size_log2) - off))
    }
}

impl Event {
    pub(super) fn with_ssid(self, ssid: Option<u32>) -> Self {
        Self { ssid, ..self }
    }
}

fn unreachable_s2() -> S2Ste {
    S2Ste {
        tt: TableCfg {
            shift: 12,
            start_level: 0,
            ias: 48,
            ttb: 0,
            oas: 48,
            pa52: false,
            stage2: true,
            had: true,
            ha: false,
            hd: false,
            affd: false,
            xnx: false,
        },
        vmid: 0,
        record: false,
        stall: false,
    }
}
