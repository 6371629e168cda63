//! STE shadowing: the host's stream table, read from host memory, turned
//! into the hypervisor's own STEs.

use alloc::collections::BTreeSet;

use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::config::{CdFormat, CdTableRef, S1Dss};
use smmuv3::env::SmmuEnv;
use smmuv3::layout::ste;
use smmuv3::regs::{cr0, idr0, idr1, strtab_base, strtab_base_cfg};

use super::{Emulator, HostMemory, host_owned};
use crate::scrub::Scrub;

/// How the hypervisor configured a host stream on the real SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamConfig {
    /// Every transaction aborts, and the real SMMU records each one: its
    /// STE is invalid (V = 0), so it reports C_BAD_STE (or C_BAD_STREAMID
    /// without a level-2 table), which the emulator turns into the event
    /// the host's own configuration calls for, if any. Every host stream
    /// the emulator does not list is in this state.
    Abort,
    /// Every transaction aborts and nothing is recorded (STE.Config =
    /// abort): a stream the host aborts (its STE says abort, or its SMMU
    /// is disabled), silenced once traffic showed up on it.
    SilentAbort,
    /// Stage 2 on the shadow: what the host asked as bypass.
    Stage2,
    /// The host's stage 1 (its CD table, at an IPA) over the shadow.
    Nested {
        /// The host's CD table.
        cd: CdTableRef,
        /// The host's S1DSS.
        s1dss: S1Dss,
    },
}

/// What the host's configuration says about one of its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A configuration to shadow (stage 2 or nested).
    Config(StreamConfig),
    /// Traffic aborts without an event: the host's STE says abort, or its
    /// SMMU is disabled (GBPA reads abort).
    Silent,
    /// The StreamID is outside the host's stream table: beyond LOG2SIZE,
    /// under an invalid level-1 descriptor or past its span
    /// (C_BAD_STREAMID when the host's CR2.RECINVSID asks).
    OutsideTable,
    /// The host's STE is invalid (V = 0): C_BAD_STE.
    Invalid,
    /// An STE the virtual SMMU does not accept (C_BAD_STE).
    Bad,
    /// The STE (or its level-1 descriptor, or the CD table it points at)
    /// is not in host-owned RAM or could not be read: F_STE_FETCH at this
    /// address.
    Unreadable(u64),
}

/// What one host doorbell has re-shadowed already (see
/// [`Emulator::reshadow_span`]).
#[derive(Default)]
pub(super) struct Reshadowed {
    /// Streams re-read.
    sids: BTreeSet<u32>,
    /// Aligned spans (first StreamID, log2 of the size) walked whole.
    spans: BTreeSet<(u64, u32)>,
}

impl Reshadowed {
    /// Whether the aligned span of 2^`log2` streams at `lo`, or one that
    /// holds it, was walked (at most `sid_bits + 1` lookups).
    fn covers(&self, lo: u64, log2: u32, sid_bits: u32) -> bool {
        (log2..=sid_bits.max(log2)).any(|l| self.spans.contains(&(lo >> l << l, l)))
    }
}

/// Bytes per STE and per level-1 descriptor.
const STE_BYTES: u64 = ste::STE_BYTES as u64;
const L1_BYTES: u64 = ste::L1_DESC_BYTES as u64;

/// Returns what an STE's words ask for, checked against what the virtual
/// SMMU offers (`idr0`, `ssid_bits`).
fn decode(w: &[u64; 8], idr0_v: u64, ssid_bits: u8) -> Lookup {
    if ste::V.get(w[0]) == 0 {
        // Reported on traffic (C_BAD_STE), as a real SMMU does: nothing
        // is told before a transaction arrives.
        return Lookup::Invalid;
    }
    let cfg = match ste::CONFIG.get(w[0]) {
        // Abort, and the reserved 0b0xx, which behave as abort: no event
        // (5.2).
        0b000..=0b011 => return Lookup::Silent,
        ste::CONFIG_BYPASS => Some(StreamConfig::Stage2),
        ste::CONFIG_S1 => nested(w, idr0_v, ssid_bits),
        // Stage 2 and nesting are hidden: ILLEGAL.
        _ => None,
    };
    cfg.map_or(Lookup::Bad, Lookup::Config)
}

/// Returns the nested configuration of a stage-1 STE, or `None` when the
/// virtual SMMU refuses it.
fn nested(w: &[u64; 8], idr0_v: u64, ssid_bits: u8) -> Option<StreamConfig> {
    // StreamWorld must be NS-EL1: EL2 belongs to the hidden HYP.
    if ste::STRW.get(w[1]) != 0 {
        return None;
    }
    let cd2l = idr0::CD2L.get(idr0_v) != 0;
    // S1CDMax is IGNORED without substreams (SSIDSIZE = 0); past SSIDSIZE
    // it is ILLEGAL (5.2).
    let cdmax_log2 = if ssid_bits == 0 {
        0
    } else {
        ste::S1CDMAX.get(w[0]) as u8
    };
    if cdmax_log2 > ssid_bits {
        return None;
    }
    // S1Fmt and S1DSS are IGNORED with substreams disabled (S1CDMax = 0:
    // S1ContextPtr is one CD); their reserved values behave as linear and
    // as terminate (5.2).
    let substreams = cdmax_log2 != 0;
    let format = match ste::S1FMT.get(w[0]) {
        _ if !substreams => CdFormat::Linear,
        // Either leaf size: the real SMMU walks the host's tables
        // itself, through the shadow stage 2.
        ste::S1FMT_4K_L2 if cd2l => CdFormat::TwoLevel4K,
        ste::S1FMT_64K_L2 if cd2l => CdFormat::TwoLevel64K,
        // 2-level without CD2L is ILLEGAL: refused, not misread.
        ste::S1FMT_4K_L2 | ste::S1FMT_64K_L2 => return None,
        _ => CdFormat::Linear,
    };
    let s1dss = match ste::S1DSS.get(w[1]) {
        // IGNORED: one value for every host STE the SMMU treats alike.
        _ if !substreams => S1Dss::Terminate,
        ste::S1DSS_BYPASS => S1Dss::Bypass,
        ste::S1DSS_SSID0 => S1Dss::Ssid0,
        _ => S1Dss::Terminate,
    };
    Some(StreamConfig::Nested {
        cd: CdTableRef {
            ptr: w[0] & ste::S1CTXPTR.mask(),
            format,
            cdmax_log2,
        },
        s1dss,
    })
}

impl<M, E, S, H> Emulator<M, E, S, H>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    /// Returns the stream ID bits the host sees.
    pub(super) fn sid_bits(&self, smmu: usize) -> u32 {
        idr1::SIDSIZE.get(self.vs[smmu].idr[1].into()) as u32
    }

    /// Reads `N` little-endian words of host memory at `pa`, if it is
    /// host-owned RAM.
    pub(super) fn host_words<const N: usize>(&self, pa: u64) -> Option<[u64; N]> {
        let len = (N * 8) as u64;
        if !host_owned(&self.hyp, pa, len) {
            return None;
        }
        let mut buf = [0u8; 64];
        let bytes = buf.get_mut(..N * 8)?;
        self.host.read(pa, bytes).ok()?;
        Some(core::array::from_fn(|i| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            u64::from_le_bytes(le)
        }))
    }

    /// Returns the log2 of the host's stream table size (entries, capped
    /// at SIDSIZE) and its split (0 when linear). Reserved values behave as
    /// IHI 0070 6.3.25 says: an FMT other than 2-level as linear, a SPLIT
    /// other than 6, 8 or 10 as 6.
    fn host_table(&self, smmu: usize) -> (u32, u32) {
        let v = &self.vs[smmu];
        let cfg = u64::from(v.strtab_cfg);
        let log2 = (strtab_base_cfg::LOG2SIZE.get(cfg) as u32).min(self.sid_bits(smmu));
        let two_level = strtab_base_cfg::FMT.get(cfg) == strtab_base_cfg::FMT_2LVL
            && idr0::ST_LEVEL.get(v.idr[0].into()) != 0;
        if !two_level {
            return (log2, 0);
        }
        let split = match strtab_base_cfg::SPLIT.get(cfg) as u32 {
            s @ (6 | 8 | 10) => s,
            _ => 6,
        };
        (log2, split)
    }

    /// Returns the host's stream table base as the SMMU uses it: aligned
    /// to the table (linear) or to the larger of 64 bytes and the level-1
    /// table (2-level), from the literal LOG2SIZE (IHI 0070 6.3.24).
    fn strtab_addr(&self, smmu: usize) -> u64 {
        let v = &self.vs[smmu];
        let log2 = strtab_base_cfg::LOG2SIZE.get(v.strtab_cfg.into()) as u32;
        let align_bits = match self.host_table(smmu) {
            (_, 0) => log2 + STE_BYTES.trailing_zeros(),
            (_, split) => (log2.saturating_sub(split) + L1_BYTES.trailing_zeros()).max(6),
        };
        // LOG2SIZE is 6 bits: a table of 2^63 STEs aligns every address
        // bit away.
        let keep = u64::MAX.checked_shl(align_bits).unwrap_or(0);
        v.strtab_base & strtab_base::ADDR.mask() & keep
    }

    /// Returns the level-1 descriptor `idx` as (level-2 address, STEs it
    /// holds), `Ok(None)` when invalid, `Err(addr)` when unreadable.
    fn l1(&self, smmu: usize, idx: u64, split: u32) -> Result<Option<(u64, u64)>, u64> {
        let at = self.strtab_addr(smmu) + idx * L1_BYTES;
        let [d] = self.host_words::<1>(at).ok_or(at)?;
        let span = ste::L1_SPAN.get(d) as u32;
        if span == 0 || span > split + 1 {
            return Ok(None);
        }
        let count = 1u64 << (span - 1);
        // The SMMU aligns a level-2 table to its size: L2Ptr's low bits
        // are treated as zero (5.1).
        let l2 = d & ste::L1_L2PTR.mask() & !(count * STE_BYTES - 1);
        Ok(Some((l2, count)))
    }

    /// Returns what the host's configuration says about its stream `sid`
    /// now (host memory read and checked).
    pub(super) fn lookup(&self, smmu: usize, sid: u32) -> Lookup {
        let v = &self.vs[smmu];
        if !v.cr0_has(cr0::SMMUEN) {
            // GBPA reads as abort: a disabled SMMU aborts everything, and
            // records nothing.
            return Lookup::Silent;
        }
        let (log2, split) = self.host_table(smmu);
        let sid = u64::from(sid);
        if sid >> log2 != 0 {
            return Lookup::OutsideTable;
        }
        let at = if split == 0 {
            self.strtab_addr(smmu) + sid * STE_BYTES
        } else {
            match self.l1(smmu, sid >> split, split) {
                Err(a) => return Lookup::Unreadable(a),
                // No level-2 table (Span 0, or one out of range): the
                // StreamID is not in the table.
                Ok(None) => return Lookup::OutsideTable,
                Ok(Some((l2, count))) => {
                    let off = sid & ((1 << split) - 1);
                    if off >= count {
                        return Lookup::OutsideTable;
                    }
                    l2 + off * STE_BYTES
                }
            }
        };
        let Some(words) = self.host_words::<8>(at) else {
            return Lookup::Unreadable(at);
        };
        let ssid_bits = idr1::SSIDSIZE.get(v.idr[1].into()) as u8;
        match decode(&words, v.idr[0].into(), ssid_bits) {
            Lookup::Config(StreamConfig::Nested { cd, .. })
                if !host_owned(&self.hyp, cd.ptr, STE_BYTES) =>
            {
                // The SMMU would only fault on it at stage 2; refusing it
                // tells the host (F_STE_FETCH on its traffic).
                Lookup::Unreadable(cd.ptr)
            }
            found => found,
        }
    }

    /// Re-reads host STE `sid` and makes the real STE follow it.
    pub(super) fn reshadow(&mut self, smmu: usize, sid: u32) {
        let want = match self.lookup(smmu, sid) {
            Lookup::Config(c) => c,
            // A silenced stream stays silent; any other keeps reporting
            // until traffic shows it needs silencing (`events.rs`).
            Lookup::Silent if self.stream(smmu, sid) == StreamConfig::SilentAbort => {
                StreamConfig::SilentAbort
            }
            Lookup::Silent | Lookup::OutsideTable | Lookup::Invalid => StreamConfig::Abort,
            // A configuration error is recorded only for a transaction
            // (7.2), never on a CFGI: the stream reports its traffic
            // (invalid real STE) and `traffic` gives the host the
            // C_BAD_STE or F_STE_FETCH then.
            Lookup::Bad => {
                self.vs[smmu].stats.bad_stes += 1;
                StreamConfig::Abort
            }
            Lookup::Unreadable(_) => {
                self.vs[smmu].stats.refused_pointers += 1;
                StreamConfig::Abort
            }
        };
        self.apply(smmu, sid, want);
    }

    pub(super) fn apply(&mut self, smmu: usize, sid: u32, want: StreamConfig) {
        let cur = self.stream(smmu, sid);
        if cur == want && !self.vs[smmu].unsure.contains(&sid) {
            return;
        }
        let ok = self.hyp.configure_stream(smmu, sid, &want).is_ok();
        let v = &mut self.vs[smmu];
        if ok {
            v.stats.ste_updates += 1;
            v.unsure.remove(&sid);
            if want == StreamConfig::Abort {
                v.shadowed.remove(&sid);
            } else {
                v.shadowed.insert(sid, want);
            }
            return;
        }
        v.stats.real_failures += 1;
        // Fail closed: what the host asked could not be installed.
        let closed = self
            .hyp
            .configure_stream(smmu, sid, &StreamConfig::Abort)
            .is_ok();
        let v = &mut self.vs[smmu];
        if closed {
            v.unsure.remove(&sid);
            v.shadowed.remove(&sid);
        } else {
            // The real STE may be the old one, an invalid one or one the
            // update got to: nothing may take it as `cur` any more.
            v.unsure.insert(sid);
        }
    }

    /// Re-shadows 2^`log2` streams from `first` (aligned down): every one
    /// the host's table holds, every one shadowed now and every one whose
    /// real STE is unknown, except those in `done`, which it adds them to.
    ///
    /// One host doorbell passes one `done` for all its commands: every STE
    /// write those commands cover happened before the doorbell, so a
    /// stream read once is read for all of them, and a span walked once
    /// is not walked again: a queue full of CFGI_ALLs or of range
    /// invalidations costs at most one pass over the host's table per
    /// span size, not one per command.
    pub(super) fn reshadow_span(
        &mut self,
        smmu: usize,
        first: u32,
        log2: u32,
        done: &mut Reshadowed,
    ) {
        let sid_bits = self.sid_bits(smmu);
        let log2 = log2.min(sid_bits);
        let lo = u64::from(first) & !((1u64 << log2) - 1);
        if done.covers(lo, log2, sid_bits) {
            return;
        }
        done.spans.insert((lo, log2));
        let hi = lo + (1u64 << log2);
        let mut sids: alloc::vec::Vec<u32> = self.vs[smmu]
            .shadowed
            .range(lo as u32..)
            .map(|(s, _)| *s)
            .take_while(|s| u64::from(*s) < hi)
            .collect();
        // Those whose real STE is unknown, wherever they are.
        sids.extend(
            self.vs[smmu]
                .unsure
                .range(lo as u32..)
                .take_while(|s| u64::from(**s) < hi),
        );
        if self.vs[smmu].cr0_has(cr0::SMMUEN) {
            let (tlog2, split) = self.host_table(smmu);
            let end = hi.min(1u64 << tlog2);
            let mut sid = lo;
            while sid < end {
                let mut span_end = end;
                if split != 0 {
                    // One level-1 descriptor per span: skip a span with
                    // no table, and its entries past the table's end.
                    let next = ((sid >> split) + 1) << split;
                    span_end = next.min(end);
                    match self.l1(smmu, sid >> split, split) {
                        Ok(Some((_, count))) => {
                            span_end = span_end.min((sid >> split << split) + count);
                        }
                        // An unreadable descriptor is reported once.
                        Err(_) => span_end = sid + 1,
                        Ok(None) => {
                            sid = next;
                            continue;
                        }
                    }
                }
                sids.extend((sid..span_end).map(|s| s as u32));
                sid = if split != 0 {
                    ((sid >> split) + 1) << split
                } else {
                    span_end
                };
            }
        }
        sids.sort_unstable();
        sids.dedup();
        for sid in sids {
            if done.sids.insert(sid) {
                self.reshadow(smmu, sid);
            }
        }
    }

    /// Re-shadows every stream (host SMMU enable or disable).
    pub(super) fn reshadow_all(&mut self, smmu: usize) {
        let bits = self.sid_bits(smmu);
        self.reshadow_span(smmu, 0, bits, &mut Reshadowed::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s1_ste(ptr: u64, fmt: u64, cdmax: u64, dss: u64) -> [u64; 8] {
        let mut w = [0u64; 8];
        w[0] = ste::V.make(1)
            | ste::CONFIG.make(ste::CONFIG_S1)
            | ste::S1FMT.make(fmt)
            | (ptr & ste::S1CTXPTR.mask())
            | ste::S1CDMAX.make(cdmax);
        w[1] = ste::S1DSS.make(dss);
        w
    }

    const CD2L: u64 = 1 << 19;

    #[test]
    fn host_configurations_map_to_shadow_ones() {
        let mut w = [0u64; 8];
        assert_eq!(decode(&w, CD2L, 8), Lookup::Invalid);
        w[0] = ste::V.make(1) | ste::CONFIG.make(ste::CONFIG_BYPASS);
        assert_eq!(decode(&w, CD2L, 8), Lookup::Config(StreamConfig::Stage2));
        w[0] = ste::V.make(1) | ste::CONFIG.make(ste::CONFIG_ABORT);
        assert_eq!(decode(&w, CD2L, 8), Lookup::Silent);
        let nested = |format| {
            Lookup::Config(StreamConfig::Nested {
                cd: CdTableRef {
                    ptr: 0x8000_1000,
                    format,
                    cdmax_log2: 4,
                },
                s1dss: S1Dss::Ssid0,
            })
        };
        let n = decode(&s1_ste(0x8000_1000, 1, 4, 2), CD2L, 8);
        assert_eq!(n, nested(CdFormat::TwoLevel4K));
        let n = decode(&s1_ste(0x8000_1000, 2, 4, 2), CD2L, 8);
        assert_eq!(n, nested(CdFormat::TwoLevel64K));
        let n = decode(&s1_ste(0x8000_1000, 0, 4, 2), CD2L, 8);
        assert_eq!(n, nested(CdFormat::Linear));
    }

    #[test]
    fn reserved_and_ignored_stage1_fields_behave_as_the_architecture_says() {
        let nested = |format, cdmax_log2, s1dss| {
            Lookup::Config(StreamConfig::Nested {
                cd: CdTableRef {
                    ptr: 0x1000,
                    format,
                    cdmax_log2,
                },
                s1dss,
            })
        };
        // 5.2: the reserved S1Fmt behaves as linear, the reserved S1DSS
        // as terminate.
        let linear = nested(CdFormat::Linear, 1, S1Dss::Terminate);
        assert_eq!(decode(&s1_ste(0x1000, 3, 1, 0), CD2L, 8), linear);
        assert_eq!(decode(&s1_ste(0x1000, 0, 1, 3), CD2L, 8), linear);
        // With S1CDMax = 0, S1Fmt is IGNORED (one CD), even a 2-level one
        // the SMMU lacks.
        let one = nested(CdFormat::Linear, 0, S1Dss::Terminate);
        assert_eq!(decode(&s1_ste(0x1000, 1, 0, 0), 0, 8), one);
        assert_eq!(decode(&s1_ste(0x1000, 2, 0, 3), CD2L, 8), one);
        for dss in [ste::S1DSS_BYPASS, ste::S1DSS_SSID0] {
            assert_eq!(decode(&s1_ste(0x1000, 0, 0, dss), CD2L, 8), one, "{dss}");
        }
        // Without substreams (SSIDSIZE = 0) S1CDMax is IGNORED.
        assert_eq!(decode(&s1_ste(0x1000, 1, 5, 0), CD2L, 0), one);
    }

    #[test]
    fn hidden_or_reserved_configurations_are_refused() {
        for config in [ste::CONFIG_S2, ste::CONFIG_NESTED] {
            let mut w = [0u64; 8];
            w[0] = ste::V.make(1) | ste::CONFIG.make(config);
            assert_eq!(decode(&w, CD2L, 8), Lookup::Bad, "config {config:#b}");
        }
        // The reserved Config values behave as abort (5.2): no event.
        for config in [0b001, 0b010, 0b011] {
            let mut w = [0u64; 8];
            w[0] = ste::V.make(1) | ste::CONFIG.make(config);
            assert_eq!(decode(&w, CD2L, 8), Lookup::Silent, "config {config:#b}");
        }
        // Too many substream bits, 2-level CD tables (either leaf size)
        // the SMMU lacks, and StreamWorld EL2.
        assert_eq!(decode(&s1_ste(0x1000, 0, 9, 0), CD2L, 8), Lookup::Bad);
        assert_eq!(decode(&s1_ste(0x1000, 1, 1, 0), 0, 8), Lookup::Bad);
        assert_eq!(decode(&s1_ste(0x1000, 2, 1, 0), 0, 8), Lookup::Bad);
        let mut w = s1_ste(0x1000, 0, 0, 0);
        w[1] |= ste::STRW.make(2);
        assert_eq!(decode(&w, CD2L, 8), Lookup::Bad);
    }
}
