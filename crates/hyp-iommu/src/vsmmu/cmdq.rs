//! Command queue shadowing: the host's commands, read from host memory at
//! its CMDQ_PROD write, validated, translated and issued on the real SMMU
//! with one CMD_SYNC.

use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::command::{Command, SyncSignal, TlbiAddr};
use smmuv3::env::SmmuEnv;
use smmuv3::regs::{cmdq_cons, cr0, gerror, idr0, idr1, idr3, q_base};

use super::streams::Reshadowed;
use super::{Emulator, HostMemory};
use crate::scrub::Scrub;

/// Bytes per command.
const CMD_BYTES: u64 = 16;
/// Commands issued to the real queue at a time (without a sync), so a
/// large host batch never needs more real queue space than this.
const CHUNK: usize = 64;

/// What one host command becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Issued on the real SMMU, translated.
    Forward(Command),
    /// Re-shadows 2^`log2` streams from `first`, then forwards `cfgi` so
    /// the real SMMU drops what it cached of them.
    Reshadow {
        first: u32,
        log2: u32,
        cfgi: Command,
    },
    /// A host CMD_SYNC: completes with the batch.
    Sync(SyncSignal),
    /// Accepted, nothing to do (prefetches).
    Nothing,
    /// CERROR_ILL.
    Illegal,
}

/// What the host's view of an SMMU says about command legality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    sid_bits: u32,
    ssid_bits: u32,
    /// IDR3.RIL: range invalidation and the level hint.
    ril: bool,
    /// IDR0.STALL_MODEL is stall forced (0b10): CMD_RESUME and
    /// CMD_STALL_TERM are legal.
    stalls: bool,
}

/// Whether a TLBI's address operand is an encoding IHI 0070 4.4.1.1
/// reserves on the host's view (CERROR_ILL): a range with NUM, SCALE and
/// TTL all zero, where TTL = 0b01 of a 16 KiB granule counts as zero
/// without IDR5.DS (hidden).
fn reserved_range(at: &TlbiAddr, ril: bool) -> bool {
    at.tg != 0
        && ril
        && at.num == 0
        && at.scale == 0
        && (at.ttl == 0 || (at.tg == 2 && at.ttl == 1))
}

/// Returns what a host command becomes on an SMMU the host sees as `view`.
fn translate(w: [u64; 2], view: View) -> Action {
    let View {
        sid_bits,
        ssid_bits,
        ril,
        stalls,
    } = view;
    // Unknown opcodes, SSec = 1 and CMD_SYNC's reserved CS are all
    // CERROR_ILL (the decoder refuses them).
    let Ok(cmd) = Command::decode(w) else {
        return Action::Illegal;
    };
    let sid_ok = |sid: u32| u64::from(sid) >> sid_bits == 0;
    let forward = |c: Command| {
        // Re-encoding checks every field; what cannot be encoded is illegal.
        if c.encode().is_ok() {
            Action::Forward(c)
        } else {
            Action::Illegal
        }
    };
    match cmd {
        // An out-of-range StreamID or SubstreamID makes a command have no
        // effect, one of the two outcomes 4.1.7 allows (CERROR_ILL is not
        // one of them).
        Command::PrefetchConfig { .. } | Command::PrefetchAddr { .. } => Action::Nothing,
        Command::CfgiSte { sid, .. } if sid_ok(sid) => Action::Reshadow {
            first: sid,
            log2: 0,
            cfgi: Command::CfgiSte { sid, leaf: true },
        },
        Command::CfgiSte { .. } => Action::Nothing,
        // Every Range (0-31) is valid: 2^(Range + 1) StreamIDs, aligned,
        // the bits below ignored (4.3.2); those past SIDSIZE do not exist.
        Command::CfgiSteRange { sid, range } => {
            let span = u32::from(range) + 1;
            // At most `sid`, so a u32.
            let first = (u64::from(sid) & !((1u64 << span) - 1)) as u32;
            if !sid_ok(first) {
                return Action::Nothing;
            }
            Action::Reshadow {
                first,
                log2: span.min(sid_bits),
                cfgi: Command::CfgiSteRange { sid: first, range },
            }
        }
        Command::CfgiCd { sid, ssid, leaf } if sid_ok(sid) && u64::from(ssid) >> ssid_bits == 0 => {
            forward(Command::CfgiCd { sid, ssid, leaf })
        }
        Command::CfgiCd { .. } => Action::Nothing,
        Command::CfgiCdAll { sid } if sid_ok(sid) => forward(Command::CfgiCdAll { sid }),
        Command::CfgiCdAll { .. } => Action::Nothing,
        // The host's stage-1 entries are tagged with VMID 0 (they are
        // nested on the shadow); whatever VMID it wrote is ignored, as a
        // stage-1-only SMMU ignores the field.
        Command::TlbiNhAsid { asid, .. } => forward(Command::TlbiNhAsid { vmid: 0, asid }),
        // Forwarded, a reserved range would stop the real queue instead of
        // the host's.
        Command::TlbiNhVa { asid, at, .. } if !reserved_range(&at, ril) => {
            forward(Command::TlbiNhVa { vmid: 0, asid, at })
        }
        Command::TlbiNhVaa { at, .. } if !reserved_range(&at, ril) => {
            forward(Command::TlbiNhVaa { vmid: 0, at })
        }
        // "All non-hypervisor entries" of a stage-1-only SMMU: the host's.
        Command::TlbiNsnhAll => forward(Command::TlbiNhAll { vmid: 0 }),
        Command::Sync { signal } => Action::Sync(signal),
        // Legal where the host is shown forced stalls (4.7.1, 4.7.2); the
        // hypervisor terminates every stall and no stall tag reaches the
        // host, so they match no stalled transaction: no effect.
        Command::Resume { .. } | Command::StallTerm { .. } if stalls => Action::Nothing,
        // Stage 2, EL2, ATS, PRI and stalls are hidden; reserved ranges
        // fall here too.
        _ => Action::Illegal,
    }
}

impl<M, E, S, H> Emulator<M, E, S, H>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    /// Consumes the host's commands from CONS to PROD (queue enabled, no
    /// command error pending).
    pub(super) fn run_cmdq(&mut self, smmu: usize) {
        let v = &self.vs[smmu];
        let cmdq_err = gerror::CMDQ_ERR.mask() as u32;
        if !v.cr0_has(cr0::CMDQEN) || (v.gerror ^ v.gerrorn) & cmdq_err != 0 {
            return;
        }
        let Some(real) = self.hyp.smmu(smmu) else {
            return;
        };
        let ring = v.cmdq_ring();
        let size = CMD_BYTES << ring.log2;
        let base = (v.cmdq.base & q_base::ADDR.mask()) & !(size - 1);
        let sid_bits = self.sid_bits(smmu);
        let view = View {
            sid_bits,
            ssid_bits: idr1::SSIDSIZE.get(v.idr[1].into()) as u32,
            ril: idr3::RIL.get(v.idr[3].into()) != 0,
            stalls: idr0::STALL_MODEL.get(v.idr[0].into()) == 0b10,
        };
        let prod = ring.bits(v.cmdq.prod);
        let start = ring.bits(v.cmdq.cons);
        let mut cons = start;
        let mut batch = core::mem::take(&mut self.vs[smmu].batch);
        batch.clear();
        let mut error = None;
        let mut failed = false;
        let mut sev = false;
        let mut irq = false;
        let mut consumed = 0u64;
        let mut syncs = 0u64;
        let mut forwarded = 0u64;
        let mut refused = 0u64;
        // Streams re-read in this doorbell (see `reshadow_span`).
        let mut done = Reshadowed::default();
        let mut all_done = false;
        // Bounded by the queue size: each step consumes one entry.
        while !ring.empty(prod, cons) {
            let at = base + u64::from(ring.index(cons)) * CMD_BYTES;
            let Some(w) = self.host_words::<2>(at) else {
                error = Some(cmdq_cons::CERROR_ABT);
                break;
            };
            let op = &mut self.vs[smmu].opcodes[(w[0] & 0xff) as usize];
            *op = op.saturating_add(1);
            match translate(w, view) {
                Action::Forward(c) => {
                    batch.push(c);
                    forwarded += 1;
                }
                // After a CFGI_ALL, the doorbell's configuration
                // invalidations are done: every stream was re-read and the
                // real SMMU's configuration caches are invalidated.
                Action::Reshadow { .. } if all_done => {}
                Action::Reshadow { first, log2, cfgi } => {
                    // Earlier invalidations first, in the host's order.
                    failed |= !batch.is_empty() && real.issue(&batch, false).is_err();
                    batch.clear();
                    self.reshadow_span(smmu, first, log2, &mut done);
                    all_done = log2 >= sid_bits;
                    batch.push(cfgi);
                    forwarded += 1;
                }
                Action::Sync(signal) => {
                    syncs += 1;
                    match signal {
                        SyncSignal::None => {}
                        SyncSignal::Sev => sev = true,
                        // SIG_IRQ: the wired CMD_SYNC interrupt, whatever
                        // the MSI address (4.7.3); an MSI the host aims is
                        // never written (MSIs are hidden).
                        SyncSignal::Msi { .. } => irq = true,
                    }
                }
                Action::Nothing => {}
                Action::Illegal => {
                    error = Some(cmdq_cons::CERROR_ILL);
                    refused += 1;
                    break;
                }
            }
            consumed += 1;
            cons = ring.next(cons);
            if batch.len() >= CHUNK {
                failed |= real.issue(&batch, false).is_err();
                batch.clear();
            }
        }
        let mut real_syncs = 0;
        if !batch.is_empty() || failed {
            failed |= real.issue(&batch, true).is_err();
            real_syncs = 1;
        }
        batch.clear();
        let v = &mut self.vs[smmu];
        v.batch = batch;
        v.stats.real_syncs += real_syncs;
        if failed {
            // The real SMMU did not complete: the host sees no progress and
            // times out as on a hung SMMU (a retry consumes the same
            // commands again, so they are not counted yet).
            v.stats.real_failures += 1;
            return;
        }
        v.stats.commands += consumed;
        v.stats.forwarded += forwarded;
        v.stats.refused_commands += refused;
        v.stats.host_syncs += syncs;
        v.cmdq.cons = cons;
        if let Some(code) = error {
            if code == cmdq_cons::CERROR_ABT {
                v.stats.aborted_commands += 1;
                v.stats.refused_pointers += 1;
            }
            v.cmdq_err = code as u32;
            v.raise_gerror(cmdq_err);
        }
        // Completion signals are observed after CONS shows the CMD_SYNC
        // consumed. SIG_SEV sends an event only where IDR0.SEV says so
        // (4.7.3).
        if irq {
            v.irqs.cmd_sync = true;
        }
        if sev && idr0::SEV.get(v.idr[0].into()) != 0 {
            self.host.send_event();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smmuv3::command::TlbiAddr;
    use smmuv3::layout::cmd as c;

    const V: View = View {
        sid_bits: 16,
        ssid_bits: 8,
        ril: true,
        stalls: false,
    };

    fn enc(c: Command) -> [u64; 2] {
        c.encode().unwrap()
    }

    #[test]
    fn stage1_invalidations_are_forwarded_at_vmid_0() {
        let at = TlbiAddr {
            addr: 0x4000,
            leaf: true,
            ..TlbiAddr::default()
        };
        assert_eq!(
            translate(
                enc(Command::TlbiNhVa {
                    vmid: 7,
                    asid: 3,
                    at
                }),
                V
            ),
            Action::Forward(Command::TlbiNhVa {
                vmid: 0,
                asid: 3,
                at
            })
        );
        assert_eq!(
            translate(enc(Command::TlbiNhAsid { vmid: 9, asid: 3 }), V),
            Action::Forward(Command::TlbiNhAsid { vmid: 0, asid: 3 })
        );
        assert_eq!(
            translate(enc(Command::TlbiNsnhAll), V),
            Action::Forward(Command::TlbiNhAll { vmid: 0 })
        );
    }

    #[test]
    fn stage2_hypervisor_ats_pri_and_stall_commands_are_illegal() {
        let at = TlbiAddr::default();
        for c in [
            Command::TlbiNhAll { vmid: 0 },
            Command::TlbiS2Ipa { vmid: 0, at },
            Command::TlbiS12Vmall { vmid: 0 },
            Command::TlbiEl2All,
            Command::TlbiEl2Asid { asid: 1 },
            Command::TlbiEl2Va { asid: 1, at },
            smmuv3::command::atc_inv(1, None, 0, 4096),
            Command::Resume {
                sid: 1,
                stag: 0,
                abort: true,
            },
            Command::StallTerm { sid: 1 },
        ] {
            assert_eq!(translate(enc(c), V), Action::Illegal, "{c:?}");
        }
        // Unknown opcodes.
        assert_eq!(translate([0x7f, 0], V), Action::Illegal);
        // CMD_SYNC with the reserved CS (4.7.3).
        let sync = enc(Command::Sync {
            signal: SyncSignal::None,
        });
        assert_eq!(translate(sync, V), Action::Sync(SyncSignal::None));
        let reserved = [c::SYNC_CS.set(sync[0], 0b11), sync[1]];
        assert_eq!(translate(reserved, V), Action::Illegal);
    }

    #[test]
    fn reserved_ranges_are_illegal_and_stall_commands_follow_the_view() {
        let range = |tg, ttl, num, scale| TlbiAddr {
            addr: 0x4000,
            tg,
            ttl,
            num,
            scale,
            ..TlbiAddr::default()
        };
        let va = |at| {
            enc(Command::TlbiNhVa {
                vmid: 0,
                asid: 1,
                at,
            })
        };
        let vaa = |at| enc(Command::TlbiNhVaa { vmid: 0, at });
        for at in [range(1, 0, 0, 0), range(3, 0, 0, 0), range(2, 1, 0, 0)] {
            assert_eq!(translate(va(at), V), Action::Illegal, "{at:?}");
            assert_eq!(translate(vaa(at), V), Action::Illegal, "{at:?}");
        }
        for at in [range(1, 0, 1, 0), range(1, 0, 0, 1), range(2, 2, 0, 0)] {
            let want = Command::TlbiNhVa {
                vmid: 0,
                asid: 1,
                at,
            };
            assert_eq!(translate(va(at), V), Action::Forward(want), "{at:?}");
        }
        // Without RIL the fields are RES0, as on the real SMMU (whose RIL
        // the host sees).
        let no_ril = View { ril: false, ..V };
        assert!(matches!(
            translate(va(range(1, 0, 0, 0)), no_ril),
            Action::Forward(_)
        ));
        let stalls = View { stalls: true, ..V };
        for c in [
            Command::Resume {
                sid: 1,
                stag: 2,
                abort: true,
            },
            Command::StallTerm { sid: 1 },
        ] {
            assert_eq!(translate(enc(c), V), Action::Illegal, "{c:?}");
            assert_eq!(translate(enc(c), stalls), Action::Nothing, "{c:?}");
        }
    }

    #[test]
    fn out_of_range_ids_make_a_command_a_no_op() {
        // 4.1.7: no effect (or an UNPREDICTABLE in-range value), never
        // CERROR_ILL.
        for c in [
            Command::CfgiSte {
                sid: 1 << 16,
                leaf: true,
            },
            Command::CfgiCd {
                sid: 1,
                ssid: 1 << 8,
                leaf: true,
            },
            Command::CfgiCd {
                sid: 1 << 16,
                ssid: 0,
                leaf: true,
            },
            Command::CfgiCdAll { sid: 1 << 16 },
            Command::CfgiSteRange {
                sid: 1 << 20,
                range: 3,
            },
            Command::PrefetchConfig {
                sid: 1 << 16,
                ssid: None,
            },
        ] {
            assert_eq!(translate(enc(c), V), Action::Nothing, "{c:?}");
        }
    }

    #[test]
    fn ssec_set_is_illegal_on_the_non_secure_queue() {
        // 4.1.6: whether or not Secure state exists.
        for c in [
            Command::CfgiSte { sid: 1, leaf: true },
            Command::CFGI_ALL,
            Command::CfgiCdAll { sid: 1 },
            Command::PrefetchConfig { sid: 1, ssid: None },
        ] {
            let w = enc(c);
            assert_ne!(translate(w, V), Action::Illegal, "{c:?}");
            assert_eq!(translate([c::SSEC.set(w[0], 1), w[1]], V), Action::Illegal);
        }
    }

    #[test]
    fn configuration_invalidations_reshadow_their_span() {
        assert_eq!(
            translate(enc(Command::CFGI_ALL), V),
            Action::Reshadow {
                first: 0,
                log2: 16,
                cfgi: Command::CFGI_ALL
            }
        );
        // A Range at or past SIDSIZE covers every stream (4.3.2): valid.
        assert_eq!(
            translate(
                enc(Command::CfgiSteRange {
                    sid: 0x1234,
                    range: 20
                }),
                V
            ),
            Action::Reshadow {
                first: 0,
                log2: 16,
                cfgi: Command::CfgiSteRange { sid: 0, range: 20 }
            }
        );
        assert_eq!(
            translate(
                enc(Command::CfgiSteRange {
                    sid: 0x13,
                    range: 3
                }),
                V
            ),
            Action::Reshadow {
                first: 0x10,
                log2: 4,
                cfgi: Command::CfgiSteRange {
                    sid: 0x10,
                    range: 3
                }
            }
        );
    }
}
