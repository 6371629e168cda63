//! Typed commands: encoding to and decoding from the 16-byte queue format.
//!
//! Pure functions with no environment: a hypervisor can build commands with
//! these and push them through its own queue.

use core::fmt;

use crate::bits::Field;
use crate::layout::cmd::{self as c, op};

/// Errors from building or decoding a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A value does not fit its field.
    #[error("value {value:#x} does not fit command field {field}")]
    FieldOverflow {
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: u64,
    },
    /// The opcode is not one the driver knows.
    #[error("unknown command opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A field holds a value the architecture reserves or makes ILLEGAL
    /// on the Non-secure command queue (CERROR_ILL on hardware).
    #[error("command field {field} = {value:#x} is reserved on the Non-secure queue")]
    Reserved {
        /// Field name.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A range invalidation request is malformed.
    #[error("bad invalidation range {iova:#x}+{size:#x} (granule 2^{granule_log2})")]
    BadRange {
        /// Start of the range.
        iova: u64,
        /// Size of the range.
        size: u64,
        /// log2 of the granule.
        granule_log2: u8,
    },
}

/// Address operand of TLBI-by-address commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbiAddr {
    /// First address (VA or IPA), granule aligned.
    pub addr: u64,
    /// Invalidate only leaf entries.
    pub leaf: bool,
    /// Level hint (0: any level; 1..3: the level of the leaf).
    pub ttl: u8,
    /// Granule of a range invalidation (0: not a range; 1: 4K, 2: 16K, 3: 64K).
    pub tg: u8,
    /// Range page count scale (range = (num + 1) << scale granules).
    pub scale: u8,
    /// Range page count minus one, in units of 2^scale granules.
    pub num: u8,
}

impl TlbiAddr {
    /// Returns the bytes this operand covers, given the table's granule (log2)
    /// for non-range forms.
    ///
    /// Saturates at `u64::MAX` for operands no command can hold.
    pub fn span(&self, granule_log2: u8) -> u64 {
        let shl = |v: u64, by: u32| {
            if by >= 64 || v.leading_zeros() < by {
                u64::MAX
            } else {
                v << by
            }
        };
        if self.tg == 0 {
            shl(1, granule_log2.into())
        } else {
            let tg = 10 + 2 * u32::from(self.tg);
            shl(u64::from(self.num) + 1, u32::from(self.scale) + tg)
        }
    }
}

/// How a CMD_SYNC signals completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncSignal {
    /// Software polls CMDQ_CONS.
    None,
    /// An MSI write of `data` to `addr`.
    Msi {
        /// Physical address (4-byte aligned).
        addr: u64,
        /// Data written.
        data: u32,
    },
    /// A SEV (WFE wake-up) when the sync completes.
    Sev,
}

/// A command-queue command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // Field names follow the architecture and are self-describing.
pub enum Command {
    /// Prefetch the configuration of a stream (and substream).
    PrefetchConfig { sid: u32, ssid: Option<u32> },
    /// Prefetch the translation of `addr`.
    PrefetchAddr {
        sid: u32,
        ssid: Option<u32>,
        addr: u64,
        size_log2: u8,
    },
    /// Invalidate the cached STE of `sid`.
    CfgiSte { sid: u32, leaf: bool },
    /// Invalidate 2^(range+1) STEs from `sid` (range 31: all).
    CfgiSteRange { sid: u32, range: u8 },
    /// Invalidate one cached CD.
    CfgiCd { sid: u32, ssid: u32, leaf: bool },
    /// Invalidate all cached CDs of a stream.
    CfgiCdAll { sid: u32 },
    /// Invalidate all non-secure EL1 entries of a VMID.
    TlbiNhAll { vmid: u16 },
    /// Invalidate stage-1 entries of an ASID.
    TlbiNhAsid { vmid: u16, asid: u16 },
    /// Invalidate stage-1 entries by VA.
    TlbiNhVa { vmid: u16, asid: u16, at: TlbiAddr },
    /// Invalidate stage-1 entries by VA, all ASIDs.
    TlbiNhVaa { vmid: u16, at: TlbiAddr },
    /// Invalidate all EL2 entries.
    TlbiEl2All,
    /// Invalidate EL2 entries of an ASID.
    TlbiEl2Asid { asid: u16 },
    /// Invalidate EL2 entries by VA.
    TlbiEl2Va { asid: u16, at: TlbiAddr },
    /// Invalidate all stage-1 and stage-2 entries of a VMID.
    TlbiS12Vmall { vmid: u16 },
    /// Invalidate stage-2 entries by IPA.
    TlbiS2Ipa { vmid: u16, at: TlbiAddr },
    /// Invalidate all non-secure non-hypervisor entries.
    TlbiNsnhAll,
    /// Invalidate a device's ATC for a naturally aligned span.
    AtcInv {
        sid: u32,
        ssid: Option<u32>,
        global: bool,
        addr: u64,
        size_log2: u8,
    },
    /// Respond to a PRI page request group.
    PriResp {
        sid: u32,
        ssid: Option<u32>,
        prgi: u16,
        resp: u8,
    },
    /// Retry (`abort` false) or abort a stalled transaction (Action 0b01 /
    /// 0b10; a decoded terminate, 0b00, reads as abort, and 0b11 as retry:
    /// the Ac bit decides, Ab only matters when terminating).
    Resume { sid: u32, stag: u16, abort: bool },
    /// Terminate all stalled transactions of a stream.
    StallTerm { sid: u32 },
    /// Complete when every earlier command has.
    Sync { signal: SyncSignal },
}

/// CMD_RESUME Action: retry the transaction.
const RESUME_RETRY: u64 = 0b01;
/// CMD_RESUME Action: abort the transaction.
const RESUME_ABORT: u64 = 0b10;

fn put(w: u64, f: Field, v: u64, name: &'static str) -> Result<u64, CommandError> {
    if !f.fits(v) {
        return Err(CommandError::FieldOverflow {
            field: name,
            value: v,
        });
    }
    Ok(f.set(w, v))
}

fn ssid_bits(w: u64, ssid: Option<u32>) -> Result<u64, CommandError> {
    match ssid {
        None => Ok(w),
        Some(s) => Ok(c::SSV.set(put(w, c::SSID, s.into(), "SSID")?, 1)),
    }
}

fn tlbi_words(
    opcode: u8,
    vmid: u16,
    asid: Option<u16>,
    at: &TlbiAddr,
    addr_field: Field,
) -> Result<[u64; 2], CommandError> {
    let mut w0 = c::OPCODE.make(opcode.into());
    w0 = c::VMID.set(w0, vmid.into());
    if let Some(a) = asid {
        w0 = c::ASID.set(w0, a.into());
    }
    w0 = put(w0, c::NUM, at.num.into(), "NUM")?;
    w0 = put(w0, c::SCALE, at.scale.into(), "SCALE")?;
    let mut w1 = c::LEAF.make(at.leaf.into());
    w1 = put(w1, c::TTL, at.ttl.into(), "TTL")?;
    w1 = put(w1, c::TG, at.tg.into(), "TG")?;
    if at.addr & !addr_field.mask() != 0 {
        return Err(CommandError::FieldOverflow {
            field: "address",
            value: at.addr,
        });
    }
    w1 |= at.addr;
    Ok([w0, w1])
}

fn tlbi_addr(w0: u64, w1: u64, addr_field: Field) -> TlbiAddr {
    TlbiAddr {
        addr: w1 & addr_field.mask(),
        leaf: c::LEAF.get(w1) != 0,
        ttl: c::TTL.get(w1) as u8,
        tg: c::TG.get(w1) as u8,
        scale: c::SCALE.get(w0) as u8,
        num: c::NUM.get(w0) as u8,
    }
}

impl Command {
    /// Returns the command that invalidates every cached STE and CD.
    pub const CFGI_ALL: Command = Command::CfgiSteRange { sid: 0, range: 31 };

    /// Returns the opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Self::PrefetchConfig { .. } => op::PREFETCH_CONFIG,
            Self::PrefetchAddr { .. } => op::PREFETCH_ADDR,
            Self::CfgiSte { .. } => op::CFGI_STE,
            Self::CfgiSteRange { .. } => op::CFGI_STE_RANGE,
            Self::CfgiCd { .. } => op::CFGI_CD,
            Self::CfgiCdAll { .. } => op::CFGI_CD_ALL,
            Self::TlbiNhAll { .. } => op::TLBI_NH_ALL,
            Self::TlbiNhAsid { .. } => op::TLBI_NH_ASID,
            Self::TlbiNhVa { .. } => op::TLBI_NH_VA,
            Self::TlbiNhVaa { .. } => op::TLBI_NH_VAA,
            Self::TlbiEl2All => op::TLBI_EL2_ALL,
            Self::TlbiEl2Asid { .. } => op::TLBI_EL2_ASID,
            Self::TlbiEl2Va { .. } => op::TLBI_EL2_VA,
            Self::TlbiS12Vmall { .. } => op::TLBI_S12_VMALL,
            Self::TlbiS2Ipa { .. } => op::TLBI_S2_IPA,
            Self::TlbiNsnhAll => op::TLBI_NSNH_ALL,
            Self::AtcInv { .. } => op::ATC_INV,
            Self::PriResp { .. } => op::PRI_RESP,
            Self::Resume { .. } => op::RESUME,
            Self::StallTerm { .. } => op::STALL_TERM,
            Self::Sync { .. } => op::SYNC,
        }
    }

    /// Returns the architectural name of the command.
    pub fn name(&self) -> &'static str {
        opcode_name(self.opcode()).unwrap_or("?")
    }

    /// Returns whether the command invalidates TLB entries.
    pub fn is_tlbi(&self) -> bool {
        (0x10..0x40).contains(&self.opcode())
    }

    /// Returns the two little-endian words of the command.
    ///
    /// # Errors
    ///
    /// [`CommandError::FieldOverflow`] when an operand does not fit.
    pub fn encode(&self) -> Result<[u64; 2], CommandError> {
        let w0 = c::OPCODE.make(self.opcode().into());
        let sid = |w: u64, s: u32| c::SID.set(w, s.into());
        Ok(match *self {
            Self::PrefetchConfig { sid: s, ssid } => [ssid_bits(sid(w0, s), ssid)?, 0],
            Self::PrefetchAddr {
                sid: s,
                ssid,
                addr,
                size_log2,
            } => {
                let w1 = put(0, c::PREFETCH_SIZE, size_log2.into(), "Size")?;
                [
                    ssid_bits(sid(w0, s), ssid)?,
                    w1 | (addr & c::ATC_ADDR.mask()),
                ]
            }
            Self::CfgiSte { sid: s, leaf } => [sid(w0, s), c::LEAF.make(leaf.into())],
            Self::CfgiSteRange { sid: s, range } => {
                [sid(w0, s), put(0, c::RANGE, range.into(), "Range")?]
            }
            Self::CfgiCd { sid: s, ssid, leaf } => [
                put(sid(w0, s), c::SSID, ssid.into(), "SSID")?,
                c::LEAF.make(leaf.into()),
            ],
            Self::CfgiCdAll { sid: s } => [sid(w0, s), 0],
            Self::TlbiNhAll { vmid } | Self::TlbiS12Vmall { vmid } => {
                [c::VMID.set(w0, vmid.into()), 0]
            }
            Self::TlbiNhAsid { vmid, asid } => {
                [c::ASID.set(c::VMID.set(w0, vmid.into()), asid.into()), 0]
            }
            Self::TlbiNhVa { vmid, asid, at } => {
                tlbi_words(op::TLBI_NH_VA, vmid, Some(asid), &at, c::VA)?
            }
            Self::TlbiNhVaa { vmid, at } => tlbi_words(op::TLBI_NH_VAA, vmid, None, &at, c::VA)?,
            Self::TlbiEl2All | Self::TlbiNsnhAll => [w0, 0],
            Self::TlbiEl2Asid { asid } => [c::ASID.set(w0, asid.into()), 0],
            Self::TlbiEl2Va { asid, at } => tlbi_words(op::TLBI_EL2_VA, 0, Some(asid), &at, c::VA)?,
            Self::TlbiS2Ipa { vmid, at } => tlbi_words(op::TLBI_S2_IPA, vmid, None, &at, c::IPA)?,
            Self::AtcInv {
                sid: s,
                ssid,
                global,
                addr,
                size_log2,
            } => {
                let w = c::ATC_GLOBAL.set(ssid_bits(sid(w0, s), ssid)?, global.into());
                let w1 = put(0, c::ATC_SIZE, size_log2.into(), "Size")?;
                [w, w1 | (addr & c::ATC_ADDR.mask())]
            }
            Self::PriResp {
                sid: s,
                ssid,
                prgi,
                resp,
            } => {
                let w1 = put(0, Field::new(8, 0), prgi.into(), "PRGI")?;
                let w1 = put(w1, Field::new(13, 12), resp.into(), "Resp")?;
                [ssid_bits(sid(w0, s), ssid)?, w1]
            }
            Self::Resume {
                sid: s,
                stag,
                abort,
            } => {
                let action = if abort { RESUME_ABORT } else { RESUME_RETRY };
                [c::RESUME_ACTION.set(sid(w0, s), action), stag.into()]
            }
            Self::StallTerm { sid: s } => [sid(w0, s), 0],
            Self::Sync { signal } => match signal {
                SyncSignal::None => [c::SYNC_CS.set(w0, c::CS_NONE), 0],
                SyncSignal::Sev => [c::SYNC_CS.set(w0, c::CS_SEV), 0],
                SyncSignal::Msi { addr, data } => {
                    let w = c::SYNC_MSIDATA.set(c::SYNC_CS.set(w0, c::CS_IRQ), data.into());
                    // Inner-shareable, write-back MSI write.
                    let w = c::SYNC_MSIATTR.set(c::SYNC_MSH.set(w, 3), 0xf);
                    if addr & 3 != 0 || addr & !c::SYNC_MSIADDR.mask() != 0 {
                        return Err(CommandError::FieldOverflow {
                            field: "MSIAddress",
                            value: addr,
                        });
                    }
                    [w, addr]
                }
            },
        })
    }

    /// Returns the command held in two queue words, as a Non-secure
    /// command queue consumes them.
    ///
    /// # Errors
    ///
    /// [`CommandError::UnknownOpcode`] for opcodes outside [`op`];
    /// [`CommandError::Reserved`] for CMD_SYNC's reserved CS (0b11) and
    /// for SSec = 1 (IHI 0070 4.1.6, 4.7.3).
    pub fn decode(w: [u64; 2]) -> Result<Self, CommandError> {
        let [w0, w1] = w;
        let opc = c::OPCODE.get(w0) as u8;
        let reserved = |field, value| Err(CommandError::Reserved { field, value });
        let has_ssec = matches!(
            opc,
            op::PREFETCH_CONFIG
                | op::PREFETCH_ADDR
                | op::CFGI_STE
                | op::CFGI_STE_RANGE
                | op::CFGI_CD
                | op::CFGI_CD_ALL
        );
        if has_ssec && c::SSEC.get(w0) != 0 {
            return reserved("SSec", 1);
        }
        if opc == op::SYNC && c::SYNC_CS.get(w0) == 0b11 {
            return reserved("CMD_SYNC.CS", 0b11);
        }
        let sid = c::SID.get(w0) as u32;
        let ssid = (c::SSV.get(w0) != 0).then(|| c::SSID.get(w0) as u32);
        let vmid = c::VMID.get(w0) as u16;
        let asid = c::ASID.get(w0) as u16;
        let leaf = c::LEAF.get(w1) != 0;
        Ok(match opc {
            op::PREFETCH_CONFIG => Self::PrefetchConfig { sid, ssid },
            op::PREFETCH_ADDR => Self::PrefetchAddr {
                sid,
                ssid,
                addr: w1 & c::ATC_ADDR.mask(),
                size_log2: c::PREFETCH_SIZE.get(w1) as u8,
            },
            op::CFGI_STE => Self::CfgiSte { sid, leaf },
            op::CFGI_STE_RANGE => Self::CfgiSteRange {
                sid,
                range: c::RANGE.get(w1) as u8,
            },
            op::CFGI_CD => Self::CfgiCd {
                sid,
                ssid: c::SSID.get(w0) as u32,
                leaf,
            },
            op::CFGI_CD_ALL => Self::CfgiCdAll { sid },
            op::TLBI_NH_ALL => Self::TlbiNhAll { vmid },
            op::TLBI_NH_ASID => Self::TlbiNhAsid { vmid, asid },
            op::TLBI_NH_VA => Self::TlbiNhVa {
                vmid,
                asid,
                at: tlbi_addr(w0, w1, c::VA),
            },
            op::TLBI_NH_VAA => Self::TlbiNhVaa {
                vmid,
                at: tlbi_addr(w0, w1, c::VA),
            },
            op::TLBI_EL2_ALL => Self::TlbiEl2All,
            op::TLBI_EL2_ASID => Self::TlbiEl2Asid { asid },
            op::TLBI_EL2_VA => Self::TlbiEl2Va {
                asid,
                at: tlbi_addr(w0, w1, c::VA),
            },
            op::TLBI_S12_VMALL => Self::TlbiS12Vmall { vmid },
            op::TLBI_S2_IPA => Self::TlbiS2Ipa {
                vmid,
                at: tlbi_addr(w0, w1, c::IPA),
            },
            op::TLBI_NSNH_ALL => Self::TlbiNsnhAll,
            op::ATC_INV => Self::AtcInv {
                sid,
                ssid,
                global: c::ATC_GLOBAL.get(w0) != 0,
                addr: w1 & c::ATC_ADDR.mask(),
                size_log2: c::ATC_SIZE.get(w1) as u8,
            },
            op::PRI_RESP => Self::PriResp {
                sid,
                ssid,
                prgi: Field::new(8, 0).get(w1) as u16,
                resp: Field::new(13, 12).get(w1) as u8,
            },
            op::RESUME => Self::Resume {
                sid,
                stag: w1 as u16,
                // Bit 12 (Ac) retries whatever bit 13 (Ab) says, so 0b11 is
                // a retry; terminate (0b00) ends the transaction like abort.
                abort: c::RESUME_ACTION.get(w0) & RESUME_RETRY == 0,
            },
            op::STALL_TERM => Self::StallTerm { sid },
            op::SYNC => Self::Sync {
                signal: match c::SYNC_CS.get(w0) {
                    c::CS_IRQ => SyncSignal::Msi {
                        addr: w1 & c::SYNC_MSIADDR.mask(),
                        data: c::SYNC_MSIDATA.get(w0) as u32,
                    },
                    c::CS_SEV => SyncSignal::Sev,
                    _ => SyncSignal::None,
                },
            },
            other => return Err(CommandError::UnknownOpcode(other)),
        })
    }
}

/// Returns the architectural name of an opcode.
pub fn opcode_name(opcode: u8) -> Option<&'static str> {
    Some(match opcode {
        op::PREFETCH_CONFIG => "CMD_PREFETCH_CONFIG",
        op::PREFETCH_ADDR => "CMD_PREFETCH_ADDR",
        op::CFGI_STE => "CMD_CFGI_STE",
        op::CFGI_STE_RANGE => "CMD_CFGI_STE_RANGE",
        op::CFGI_CD => "CMD_CFGI_CD",
        op::CFGI_CD_ALL => "CMD_CFGI_CD_ALL",
        op::CFGI_VMS_PIDM => "CMD_CFGI_VMS_PIDM",
        op::TLBI_NH_ALL => "CMD_TLBI_NH_ALL",
        op::TLBI_NH_ASID => "CMD_TLBI_NH_ASID",
        op::TLBI_NH_VA => "CMD_TLBI_NH_VA",
        op::TLBI_NH_VAA => "CMD_TLBI_NH_VAA",
        op::TLBI_EL3_ALL => "CMD_TLBI_EL3_ALL",
        op::TLBI_EL3_VA => "CMD_TLBI_EL3_VA",
        op::TLBI_EL2_ALL => "CMD_TLBI_EL2_ALL",
        op::TLBI_EL2_ASID => "CMD_TLBI_EL2_ASID",
        op::TLBI_EL2_VA => "CMD_TLBI_EL2_VA",
        op::TLBI_EL2_VAA => "CMD_TLBI_EL2_VAA",
        op::TLBI_S12_VMALL => "CMD_TLBI_S12_VMALL",
        op::TLBI_S2_IPA => "CMD_TLBI_S2_IPA",
        op::TLBI_NSNH_ALL => "CMD_TLBI_NSNH_ALL",
        op::ATC_INV => "CMD_ATC_INV",
        op::PRI_RESP => "CMD_PRI_RESP",
        op::RESUME => "CMD_RESUME",
        op::STALL_TERM => "CMD_STALL_TERM",
        op::SYNC => "CMD_SYNC",
        _ => return None,
    })
}

impl fmt::Display for TlbiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "addr={:#x} leaf={} ttl={}",
            self.addr, self.leaf, self.ttl
        )?;
        if self.tg != 0 {
            // NUM as encoded; the span is (NUM + 1) << SCALE granules.
            write!(
                f,
                " range: tg={} ({}) num={} scale={} ({} granules)",
                self.tg,
                ["", "4K", "16K", "64K"][usize::from(self.tg & 3)],
                self.num,
                self.scale,
                (u64::from(self.num) + 1) << self.scale
            )?;
        }
        Ok(())
    }
}

fn ssid_str(f: &mut fmt::Formatter<'_>, ssid: Option<u32>) -> fmt::Result {
    match ssid {
        Some(s) => write!(f, " ssid={s:#x}"),
        None => Ok(()),
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match *self {
            Self::PrefetchConfig { sid, ssid } => {
                write!(f, " sid={sid:#x}")?;
                ssid_str(f, ssid)
            }
            Self::PrefetchAddr {
                sid,
                ssid,
                addr,
                size_log2,
            } => {
                write!(f, " sid={sid:#x}")?;
                ssid_str(f, ssid)?;
                write!(f, " addr={addr:#x} size=2^{size_log2} pages")
            }
            Self::CfgiSte { sid, leaf } => write!(f, " sid={sid:#x} leaf={leaf}"),
            Self::CfgiSteRange { sid, range } if range >= 31 => write!(f, " sid={sid:#x} (all)"),
            Self::CfgiSteRange { sid, range } => {
                write!(f, " sid={sid:#x} count={}", 1u64 << (range + 1))
            }
            Self::CfgiCd { sid, ssid, leaf } => {
                write!(f, " sid={sid:#x} ssid={ssid:#x} leaf={leaf}")
            }
            Self::CfgiCdAll { sid } | Self::StallTerm { sid } => write!(f, " sid={sid:#x}"),
            Self::TlbiNhAll { vmid } | Self::TlbiS12Vmall { vmid } => write!(f, " vmid={vmid}"),
            Self::TlbiNhAsid { vmid, asid } => write!(f, " vmid={vmid} asid={asid}"),
            Self::TlbiNhVa { vmid, asid, at } => write!(f, " vmid={vmid} asid={asid} {at}"),
            Self::TlbiNhVaa { vmid, at } | Self::TlbiS2Ipa { vmid, at } => {
                write!(f, " vmid={vmid} {at}")
            }
            Self::TlbiEl2All | Self::TlbiNsnhAll => Ok(()),
            Self::TlbiEl2Asid { asid } => write!(f, " asid={asid}"),
            Self::TlbiEl2Va { asid, at } => write!(f, " asid={asid} {at}"),
            Self::AtcInv {
                sid,
                ssid,
                global,
                addr,
                size_log2,
            } => {
                write!(f, " sid={sid:#x}")?;
                ssid_str(f, ssid)?;
                write!(
                    f,
                    " global={global} addr={addr:#x} span=2^{size_log2} pages"
                )
            }
            Self::PriResp {
                sid,
                ssid,
                prgi,
                resp,
            } => {
                write!(f, " sid={sid:#x}")?;
                ssid_str(f, ssid)?;
                write!(f, " prgi={prgi} resp={resp}")
            }
            Self::Resume { sid, stag, abort } => {
                write!(
                    f,
                    " sid={sid:#x} stag={stag} action={}",
                    if abort { "abort" } else { "retry" }
                )
            }
            Self::Sync { signal } => match signal {
                SyncSignal::None => write!(f, " cs=none"),
                SyncSignal::Sev => write!(f, " cs=sev"),
                SyncSignal::Msi { addr, data } => {
                    write!(f, " cs=msi addr={addr:#x} data={data:#x}")
                }
            },
        }
    }
}

/// Returns the ATC_INV command covering `[iova, iova + size)` for a stream:
/// the smallest naturally aligned power-of-two span of 4 KiB pages that
/// contains the range (size 0 means the whole address space).
pub fn atc_inv(sid: u32, ssid: Option<u32>, iova: u64, size: u64) -> Command {
    if size == 0 || iova.checked_add(size - 1).is_none() {
        return Command::AtcInv {
            sid,
            ssid,
            global: false,
            addr: 0,
            size_log2: 52,
        };
    }
    let first = iova >> 12;
    let last = (iova + size - 1) >> 12;
    let span_log2 = 64 - (first ^ last).leading_zeros();
    let span_log2 = span_log2.min(52);
    let base = if span_log2 >= 52 {
        0
    } else {
        (first & !((1u64 << span_log2) - 1)) << 12
    };
    Command::AtcInv {
        sid,
        ssid,
        global: false,
        addr: base,
        size_log2: span_log2 as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn roundtrip(cmd: Command) {
        let w = cmd.encode().unwrap();
        assert_eq!(c::OPCODE.get(w[0]) as u8, cmd.opcode());
        assert_eq!(Command::decode(w).unwrap(), cmd, "{cmd}");
    }

    #[test]
    fn every_command_roundtrips() {
        let at = TlbiAddr {
            addr: 0x1234_5000,
            leaf: true,
            ttl: 3,
            tg: 1,
            scale: 4,
            num: 30,
        };
        for cmd in [
            Command::PrefetchConfig {
                sid: 7,
                ssid: Some(3),
            },
            Command::PrefetchAddr {
                sid: 7,
                ssid: None,
                addr: 0x4000,
                size_log2: 2,
            },
            Command::CfgiSte {
                sid: 0xffff_ffff,
                leaf: true,
            },
            Command::CFGI_ALL,
            Command::CfgiCd {
                sid: 1,
                ssid: 0xf_ffff,
                leaf: true,
            },
            Command::CfgiCdAll { sid: 9 },
            Command::TlbiNhAll { vmid: 3 },
            Command::TlbiNhAsid {
                vmid: 1,
                asid: 0xffff,
            },
            Command::TlbiNhVa {
                vmid: 1,
                asid: 2,
                at,
            },
            Command::TlbiNhVaa { vmid: 1, at },
            Command::TlbiEl2All,
            Command::TlbiEl2Asid { asid: 4 },
            Command::TlbiEl2Va { asid: 4, at },
            Command::TlbiS12Vmall { vmid: 0xffff },
            Command::TlbiS2Ipa {
                vmid: 5,
                at: TlbiAddr {
                    addr: 0x000f_ffff_ffff_f000,
                    ..Default::default()
                },
            },
            Command::TlbiNsnhAll,
            Command::AtcInv {
                sid: 3,
                ssid: Some(1),
                global: true,
                addr: 0x10_0000,
                size_log2: 8,
            },
            Command::PriResp {
                sid: 2,
                ssid: None,
                prgi: 0x1ff,
                resp: 1,
            },
            Command::Resume {
                sid: 2,
                stag: 0xabcd,
                abort: true,
            },
            Command::StallTerm { sid: 2 },
            Command::Sync {
                signal: SyncSignal::None,
            },
            Command::Sync {
                signal: SyncSignal::Sev,
            },
            Command::Sync {
                signal: SyncSignal::Msi {
                    addr: 0x8000_1004,
                    data: 0xdead,
                },
            },
        ] {
            roundtrip(cmd);
        }
    }

    #[test]
    fn architectural_encodings() {
        // TLBI_NH_VA vmid 1 asid 2 at 0x1000, 4K range of 3 pages, leaf TTL 3.
        let w = Command::TlbiNhVa {
            vmid: 1,
            asid: 2,
            at: TlbiAddr {
                addr: 0x1000,
                leaf: true,
                ttl: 3,
                tg: 1,
                scale: 0,
                num: 2,
            },
        }
        .encode()
        .unwrap();
        assert_eq!(w[0], 0x0002_0001_0000_2012);
        assert_eq!(w[1], 0x1000 | (1 << 10) | (3 << 8) | 1);
        let w = Command::CfgiSte {
            sid: 0x42,
            leaf: true,
        }
        .encode()
        .unwrap();
        assert_eq!(w, [0x42_0000_0003, 1]);
        let w = Command::CFGI_ALL.encode().unwrap();
        assert_eq!(w, [0x04, 31]);
        let w = Command::Sync {
            signal: SyncSignal::Sev,
        }
        .encode()
        .unwrap();
        assert_eq!(w, [0x2046, 0]);
    }

    #[test]
    fn resume_actions() {
        let enc = |abort| {
            Command::Resume {
                sid: 1,
                stag: 2,
                abort,
            }
            .encode()
            .unwrap()[0]
                >> 12
                & 3
        };
        assert_eq!(enc(false), 0b01, "retry");
        assert_eq!(enc(true), 0b10, "abort");
        let terminate = [u64::from(op::RESUME), 0];
        assert!(matches!(
            Command::decode(terminate),
            Ok(Command::Resume { abort: true, .. })
        ));
        // Ac = 1 retries whatever Ab says.
        let retry_ab = [u64::from(op::RESUME) | 0b11 << 12, 0];
        assert!(matches!(
            Command::decode(retry_ab),
            Ok(Command::Resume { abort: false, .. })
        ));
    }

    #[test]
    fn reserved_sync_signals_and_secure_streams_do_not_decode() {
        // CS = 0b11 is reserved (it read as "no signal"); SSec = 1 names
        // the Secure StreamID space, ILLEGAL on a Non-secure queue (it was
        // ignored, so the command acted on the Non-secure stream).
        let sync = [u64::from(op::SYNC) | 0b11 << 12, 0];
        assert_eq!(
            Command::decode(sync),
            Err(CommandError::Reserved {
                field: "CMD_SYNC.CS",
                value: 3
            })
        );
        for opc in [
            op::PREFETCH_CONFIG,
            op::PREFETCH_ADDR,
            op::CFGI_STE,
            op::CFGI_STE_RANGE,
            op::CFGI_CD,
            op::CFGI_CD_ALL,
        ] {
            let w = [u64::from(opc) | 1 << 10, 0];
            assert_eq!(
                Command::decode(w),
                Err(CommandError::Reserved {
                    field: "SSec",
                    value: 1
                }),
                "{opc:#x}"
            );
            assert!(Command::decode([u64::from(opc), 0]).is_ok(), "{opc:#x}");
        }
        // Bit 10 of other commands is another field (TLBI TG) or RES0.
        assert!(Command::decode([u64::from(op::TLBI_NH_ALL) | 1 << 10, 0]).is_ok());
    }

    #[test]
    fn bad_operands_are_refused() {
        let bad = Command::TlbiNhVa {
            vmid: 0,
            asid: 0,
            at: TlbiAddr {
                addr: 0x1001,
                ..Default::default()
            },
        };
        assert!(matches!(
            bad.encode(),
            Err(CommandError::FieldOverflow { .. })
        ));
        let bad = Command::TlbiS2Ipa {
            vmid: 0,
            at: TlbiAddr {
                addr: 1 << 52,
                ..Default::default()
            },
        };
        assert!(bad.encode().is_err());
        let bad = Command::CfgiCd {
            sid: 0,
            ssid: 1 << 20,
            leaf: false,
        };
        assert!(bad.encode().is_err());
        assert_eq!(
            Command::decode([0xff, 0]),
            Err(CommandError::UnknownOpcode(0xff))
        );
    }

    #[test]
    fn display_is_readable() {
        let s = Command::CfgiSte { sid: 8, leaf: true }.to_string();
        assert_eq!(s, "CMD_CFGI_STE sid=0x8 leaf=true");
        assert_eq!(
            Command::CFGI_ALL.to_string(),
            "CMD_CFGI_STE_RANGE sid=0x0 (all)"
        );
    }

    #[test]
    fn atc_inv_spans() {
        let Command::AtcInv {
            addr, size_log2, ..
        } = atc_inv(1, None, 0x5000, 0x1000)
        else {
            unreachable!()
        };
        assert_eq!((addr, size_log2), (0x5000, 0));
        // Crossing 0x7fff/0x8000 needs a span aligned to 16 pages.
        let Command::AtcInv {
            addr, size_log2, ..
        } = atc_inv(1, None, 0x7000, 0x2000)
        else {
            unreachable!()
        };
        assert_eq!((addr, size_log2), (0, 4));
        let Command::AtcInv { size_log2, .. } = atc_inv(1, None, 0, 0) else {
            unreachable!()
        };
        assert_eq!(size_log2, 52);
    }
}
