//! Events: the real SMMUs' events sorted between the host and the
//! hypervisor, and the host's event queue in host memory.

use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::env::RegisterFrame;
use smmuv3::env::SmmuEnv;
use smmuv3::event::{Event, EventType, FaultClass};
use smmuv3::layout::event::{self as ev, EVENT_BYTES, ty};
use smmuv3::regs::{self, cr0, cr2, evtq, gerror, irq_ctrl, q_base};

use super::streams::{Lookup, StreamConfig};
use super::{Emulator, HYP_EVENT_LOG, HostIrqs, HostMemory, host_owned};
use crate::error::Error;
use crate::scrub::Scrub;

/// What a real event recording traffic on an aborted stream means for
/// the host.
enum Traffic {
    /// The event is not one of those (sorted by [`host_record`]).
    NotAborted,
    /// The host's event for it.
    Host([u64; 4]),
    /// Nothing: the host's configuration aborts it without an event.
    Quiet,
    /// The hypervisor's: it does not match the host's configuration now.
    Stale,
}

/// Returns word 0 of a configuration event `code` for a transaction of
/// stream `sid` (and substream `ssid`).
fn config_word(code: u8, sid: u32, ssid: Option<u32>) -> u64 {
    let w0 = ev::TYPE.make(code.into()) | ev::SID.make(sid.into());
    match ssid {
        Some(s) => w0 | ev::SSV.make(1) | ev::SSID.make(s.into()),
        None => w0,
    }
}

/// Returns the host's copy of a real event when it is the host's to see:
/// rebuilt from its decoded fields, so nothing of the real record (stage-2
/// addresses, the hypervisor's fetch addresses) passes through.
pub(super) fn host_record(e: &Event) -> Option<[u64; 4]> {
    let code = match e.ty {
        EventType::Translation => ty::F_TRANSLATION,
        EventType::AddressSize => ty::F_ADDR_SIZE,
        EventType::AccessFlag => ty::F_ACCESS,
        EventType::Permission => ty::F_PERMISSION,
        EventType::BadCd => ty::C_BAD_CD,
        EventType::BadSubstreamId => ty::C_BAD_SUBSTREAMID,
        EventType::StreamDisabled => ty::F_STREAM_DISABLED,
        EventType::UnsupportedUpstream => ty::F_UUT,
        // Fetch and walk aborts, bad STEs and conflicts concern the
        // hypervisor's own structures.
        _ => return None,
    };
    let mut w0 = ev::TYPE.make(code.into()) | ev::SID.make(e.sid.into());
    if let Some(s) = e.ssid {
        w0 |= ev::SSV.make(1) | ev::SSID.make(s.into());
    }
    let (w1, w2) = match &e.fault {
        // A stage-2 fault is the hypervisor's, whatever its type.
        Some(f) if f.stage2 => return None,
        Some(f) => {
            let class = match f.class {
                FaultClass::CdFetch => 0,
                FaultClass::TableWalk => 1,
                FaultClass::Input => 2,
            };
            (
                ev::RNW.make(f.read.into())
                    | ev::PNU.make(f.privileged.into())
                    | ev::IND.make(f.instruction.into())
                    | ev::CLASS.make(class),
                f.addr,
            )
        }
        None => (0, 0),
    };
    Some([w0, w1, w2, 0])
}

/// What the hypervisor does after a real SMMU's event interrupt
/// ([`Emulator::event_irq`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventIrq {
    /// Interrupts to inject into the host now: every one pending on that
    /// virtual SMMU, as [`Emulator::take_irqs`] returns them.
    pub host: HostIrqs,
    /// The real event queue still held events after the bounded drain (a
    /// device recorded faster than the drain took them). Its interrupt
    /// fires only when the queue goes from empty to non-empty, so it will
    /// not fire for these: call [`Emulator::event_irq`] again, later (a
    /// deferred task or the next tick), not in a loop here.
    pub more: bool,
}

/// Whether a real event queue holds records its consumer has not taken.
fn real_events_pending(regs: &impl RegisterFrame) -> bool {
    let prod = regs.read32(regs::EVENTQ_PROD);
    let cons = regs.read32(regs::EVENTQ_CONS);
    // WR and RD (index and wrap bits) only: bits above the wrap bit read
    // as zero, OVFLG / OVACKFLG say nothing about records.
    (prod ^ cons) & !(evtq::OVFLG.mask() as u32) != 0
}

impl<M, E, S, H> Emulator<M, E, S, H>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    /// Drains every real event queue (as host reads of EVENTQ_PROD do)
    /// and returns how many events were taken. Host interrupts it raises
    /// wait in [`Emulator::take_irqs`]; an SMMU's event interrupt is
    /// [`Emulator::event_irq`].
    pub fn poll_events(&mut self) -> usize {
        (0..self.vs.len()).map(|k| self.forward_events(k)).sum()
    }

    /// Handles the event interrupt of real SMMU `smmu`: the hypervisor
    /// calls it from that interrupt's handler (the emulator enables the
    /// real source, IRQ_CTRL.EVENTQ_IRQEN). Drains the real queue (a
    /// bounded number of passes), gives the host its events, and returns
    /// the host interrupts to inject and whether to call again.
    pub fn event_irq(&mut self, smmu: usize) -> EventIrq {
        self.forward_events(smmu);
        let more = self
            .hyp
            .smmu(smmu)
            .is_some_and(|real| real_events_pending(real.regs()));
        EventIrq {
            host: self.take_irqs(smmu),
            more,
        }
    }

    /// Enables real SMMU `smmu`'s event interrupt, then drains its queue:
    /// records already there would otherwise keep it from ever going
    /// from empty to non-empty, the interrupt's trigger.
    ///
    /// # Errors
    ///
    /// [`Error::Driver`] when the SMMU does not acknowledge.
    pub(super) fn arm_event_irq(&mut self, smmu: usize) -> Result<(), Error> {
        if let Some(real) = self.hyp.smmu(smmu) {
            real.set_interrupts(irq_ctrl::EVENTQ_IRQEN.mask() as u32)
                .map_err(|error| Error::Driver { smmu, error })?;
        }
        self.forward_events(smmu);
        Ok(())
    }

    /// Drains SMMU `smmu`'s real event queue, giving the host what is
    /// the host's; returns how many events were taken.
    pub(super) fn forward_events(&mut self, smmu: usize) -> usize {
        let Some(real) = self.hyp.smmu(smmu) else {
            return 0;
        };
        let Ok(batch) = real.drain_events() else {
            return 0;
        };
        let n = batch.events.len();
        if batch.overflowed {
            // Not the host's overflow: its OVFLG may toggle only when its
            // own queue was full (IHI 0070 7.4).
            self.vs[smmu].stats.real_overflows += 1;
        }
        for e in batch.events {
            let rec = match self.traffic(smmu, &e) {
                Traffic::NotAborted => host_record(&e),
                Traffic::Host(rec) => {
                    self.vs[smmu].stats.traffic_events += 1;
                    Some(rec)
                }
                Traffic::Quiet => continue,
                Traffic::Stale => None,
            };
            match rec {
                Some(rec) => self.post_host_event(smmu, rec),
                None => {
                    let v = &mut self.vs[smmu];
                    v.stats.hyp_events += 1;
                    if v.hyp_log.len() == HYP_EVENT_LOG {
                        v.hyp_log.remove(0);
                    }
                    v.hyp_log.push(e);
                }
            }
        }
        n
    }

    /// Returns what the host sees of real event `e` when it records
    /// traffic on a stream the emulator aborts with an invalid STE: the
    /// event the host's own configuration (read now) gives that traffic.
    ///
    /// A stream the host aborts silently records nothing for the host, and
    /// is made silent on the real SMMU too, so that a device that keeps
    /// trying does not flood the real event queue.
    fn traffic(&mut self, smmu: usize, e: &Event) -> Traffic {
        let recorded = matches!(e.ty, EventType::BadSte | EventType::BadStreamId);
        if !recorded || self.stream(smmu, e.sid) != StreamConfig::Abort {
            return Traffic::NotAborted;
        }
        let code = match self.lookup(smmu, e.sid) {
            Lookup::Silent => {
                self.apply(smmu, e.sid, StreamConfig::SilentAbort);
                if self.stream(smmu, e.sid) == StreamConfig::SilentAbort {
                    self.vs[smmu].stats.silenced_streams += 1;
                }
                return Traffic::Quiet;
            }
            Lookup::OutsideTable => {
                // Invalid StreamIDs are recorded only when the host asks.
                if self.vs[smmu].cr2 & (cr2::RECINVSID.mask() as u32) == 0 {
                    return Traffic::Quiet;
                }
                ty::C_BAD_STREAMID
            }
            Lookup::Invalid | Lookup::Bad => ty::C_BAD_STE,
            Lookup::Unreadable(at) => {
                let w0 = config_word(ty::F_STE_FETCH, e.sid, e.ssid);
                return Traffic::Host([w0, 0, 0, at & ev::FETCH_ADDR.mask()]);
            }
            // The host's STE changed without a CFGI since: the record is
            // of a configuration the host no longer has.
            Lookup::Config(_) => return Traffic::Stale,
        };
        Traffic::Host([config_word(code, e.sid, e.ssid), 0, 0, 0])
    }

    /// Writes `rec` to the host's event queue, with the architecture's
    /// disabled, full (overflow), abort and unacknowledged-abort
    /// behaviour.
    pub(super) fn post_host_event(&mut self, smmu: usize, rec: [u64; 4]) {
        let v = &self.vs[smmu];
        // Not writable while disabled or while an event queue abort is
        // unacknowledged (7.2.1): the record is discarded.
        let abt = gerror::EVTQ_ABT_ERR.mask() as u32;
        if !v.cr0_has(cr0::EVENTQEN) || (v.gerror ^ v.gerrorn) & abt != 0 {
            self.vs[smmu].stats.dropped_events += 1;
            return;
        }
        let ring = v.evtq_ring();
        let (prod, cons) = (v.evtq.prod, v.evtq.cons);
        let ovf = evtq::OVFLG.mask() as u32;
        if ring.full(prod, cons) {
            let v = &mut self.vs[smmu];
            v.stats.overflows += 1;
            // The flag toggles once per overflow, until acknowledged.
            if (prod ^ cons) & ovf == 0 {
                v.evtq.prod ^= ovf;
            }
            return;
        }
        let size = (EVENT_BYTES as u64) << ring.log2;
        let base = (v.evtq.base & q_base::ADDR.mask()) & !(size - 1);
        let at = base + u64::from(ring.index(prod)) * EVENT_BYTES as u64;
        let mut bytes = [0u8; EVENT_BYTES];
        for (i, w) in rec.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let written =
            host_owned(&self.hyp, at, EVENT_BYTES as u64) && self.host.write(at, &bytes).is_ok();
        let v = &mut self.vs[smmu];
        if !written {
            v.stats.dropped_events += 1;
            v.stats.refused_pointers += 1;
            v.raise_gerror(abt);
            return;
        }
        v.evtq.prod = ring.next(prod) | (prod & ovf);
        v.stats.host_events += 1;
        // The interrupt's trigger is the queue going from empty to
        // non-empty (IHI 0070 3.18.2), not every record.
        if ring.empty(prod, cons) && v.irq_ctrl & (irq_ctrl::EVENTQ_IRQEN.mask() as u32) != 0 {
            v.irqs.eventq = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage2_faults_and_hypervisor_structures_stay_hidden() {
        let s2 = [
            ev::TYPE.make(ty::F_TRANSLATION.into()) | ev::SID.make(3),
            ev::S2.make(1) | ev::CLASS.make(2),
            0x1000,
            0x4000_0000,
        ];
        assert_eq!(host_record(&Event::decode(s2)), None);
        for code in [
            ty::C_BAD_STE,
            ty::F_STE_FETCH,
            ty::F_WALK_EABT,
            ty::F_CD_FETCH,
        ] {
            let raw = [ev::TYPE.make(code.into()), 0, 0, 0x4000_0000];
            assert_eq!(host_record(&Event::decode(raw)), None, "{code:#x}");
        }
    }

    #[test]
    fn a_stage1_fault_is_rebuilt_from_its_fields() {
        let raw = [
            ev::TYPE.make(ty::F_PERMISSION.into())
                | ev::SID.make(9)
                | ev::SSV.make(1)
                | ev::SSID.make(5),
            ev::RNW.make(1) | ev::CLASS.make(2) | ev::STAG.make(0x55),
            0xdead_b000,
            0xffff_ffff_ffff,
        ];
        let r = host_record(&Event::decode(raw)).unwrap();
        assert_eq!(ev::TYPE.get(r[0]), ty::F_PERMISSION.into());
        assert_eq!(ev::SID.get(r[0]), 9);
        assert_eq!(ev::SSID.get(r[0]), 5);
        assert_eq!(ev::RNW.get(r[1]), 1);
        assert_eq!(ev::STAG.get(r[1]), 0, "stall tags are not forwarded");
        assert_eq!(r[2], 0xdead_b000);
        assert_eq!(r[3], 0, "word 3 never reaches the host");
    }
}
