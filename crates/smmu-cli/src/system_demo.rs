//! The main job: a whole simulated system, end to end.
//!
//! The driver (`smmuv3`) brings up the software SMMU (`smmuv3-model`) on
//! simulated memory, attaches devices in stage-1, stage-2, nested,
//! substream and bypass configurations, and runs a scatter-gather DMA
//! workload through them: map (io-pgtable), DMA in both directions through
//! the model's own walker and TLB, data checked, unmap with range TLB
//! invalidation, then a probe that the old IOVA now faults. The model keeps
//! stale TLB entries until invalidated and, in non-coherent mode, sees only
//! cleaned memory, so a missing invalidation or clean shows up as wrong data
//! or a missing fault, never silently. Faults are then provoked on purpose
//! and their events decoded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::event::Event;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

/// IOVA where every device's buffers are mapped (reused by every operation,
/// so a stale TLB entry would hand out the previous operation's buffer).
const IOVA: u64 = 0x4000_0000;
/// Largest scatter-gather segment.
const MAX_SEG: u64 = 64 << 10;
/// Segments per scatter-gather list, at most.
const MAX_SEGS: u64 = 8;

/// Demo options.
#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    /// Scatter-gather operations to run.
    pub ops: u64,
    /// Whether the SMMU's accesses snoop CPU caches.
    pub coherency: Coherency,
    /// Seed of the workload.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Simulated RAM in bytes (at least 64 MiB).
    pub ram: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            ops: 2000,
            coherency: Coherency::NonCoherent,
            seed: 0x5eed,
            progress: true,
            ram: 256 << 20,
        }
    }
}

/// What the demo did and saw.
#[derive(Debug, Default)]
pub struct DemoReport {
    /// Bring-up and feature lines.
    pub bring_up: Vec<String>,
    /// Devices: (name, stream ID, configuration, syncs to attach).
    pub devices: Vec<(String, u32, String, u32)>,
    /// Scatter-gather operations completed.
    pub ops: u64,
    /// Segments mapped.
    pub segments: u64,
    /// Bytes moved by DMA (both directions).
    pub dma_bytes: u64,
    /// Data mismatches (must be 0).
    pub data_errors: u64,
    /// Unmapped IOVAs that still translated (must be 0).
    pub stale_translations: u64,
    /// The model's cache audit at the end: (entries checked, stale ones
    /// found: translations, walk-cache entries, stage-2 entries,
    /// configurations; must be 0).
    pub audit: (usize, usize),
    /// Events by name.
    pub events: BTreeMap<String, u64>,
    /// Decoded events of the provoked faults.
    pub provoked: Vec<String>,
    /// Provoked faults whose event did not match (must be 0).
    pub provoked_mismatches: u64,
    /// Commands by name.
    pub commands: Vec<(&'static str, u64)>,
    /// CMD_SYNCs.
    pub syncs: u64,
    /// STE + CD updates and the syncs they took.
    pub updates: (u64, u64, u64),
    /// Cache maintenance: clean calls, lines cleaned, redundant lines.
    pub cleans: (u64, u64, u64),
    /// Model: translations, TLB hits, TLB misses, walks, descriptor reads.
    pub translation: (u64, u64, u64, u64, u64),
    /// Model: STE/CD config cache (hits, misses).
    pub config_cache: (u64, u64, u64, u64),
    /// Wall time of the workload, seconds.
    pub seconds: f64,
    /// Where the workload's time went.
    pub phases: Phases,
}

/// Workload time by phase, seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    /// Driver + io-pgtable mapping the scatter-gather list.
    pub map: f64,
    /// Device DMA through the model (translation, TLB, walks, copies of
    /// the probes).
    pub dma: f64,
    /// Unmap with range TLB invalidation, the stale-translation probe and
    /// draining its event.
    pub unmap: f64,
    /// The CPU side on simulated memory: filling, cleaning, invalidating
    /// and checking the probes.
    pub cpu: f64,
}

impl Phases {
    /// Returns the SMMU stack's time (map + DMA + unmap).
    pub fn stack(&self) -> f64 {
        self.map + self.dma + self.unmap
    }
}

impl DemoReport {
    /// Returns whether everything the demo checks held.
    pub fn ok(&self) -> bool {
        self.data_errors == 0
            && self.stale_translations == 0
            && self.provoked_mismatches == 0
            && self.audit.1 == 0
    }
}

/// A tiny deterministic generator (xorshift64*), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One attached device.
struct Device {
    name: &'static str,
    sid: u32,
    ssid: Option<u32>,
    domain: Option<HostedDomain>,
    /// A stage-2 domain the device's stage-1 domain nests in (kept alive).
    _parent: Option<HostedDomain>,
}

impl Device {
    fn req(&self, write: bool, iova: u64, len: u64) -> DmaRequest {
        let r = if write {
            DmaRequest::write(self.sid, iova, len)
        } else {
            DmaRequest::read(self.sid, iova, len)
        };
        match self.ssid {
            Some(s) => r.with_ssid(s),
            None => r,
        }
    }
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

/// Runs the demo.
///
/// # Errors
///
/// Returns a message when the system cannot be brought up or an operation
/// that must succeed fails (data or translation problems are counted in the
/// report instead, so they can be shown).
pub fn run(opts: DemoOptions) -> Result<DemoReport, String> {
    let mut rep = DemoReport::default();
    let sys = System::new(
        opts.ram.max(64 << 20),
        opts.coherency,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .map_err(err("bring-up"))?;
    let f = sys.smmu.features();
    rep.bring_up.push(format!(
        "SMMU up: stage1 {} stage2 {} nesting {} RIL {} coherent walker {} ({}), {}-level stream table",
        f.stage1,
        f.stage2,
        f.nesting,
        f.ril,
        f.coherent,
        match opts.coherency {
            Coherency::Coherent => "coherent memory",
            Coherency::NonCoherent => "non-coherent memory: the SMMU sees only cleaned lines",
        },
        if sys.smmu.strtab_two_level() { 2 } else { 1 },
    ));
    rep.bring_up.push(format!(
        "bring-up commands: {}",
        sys.smmu
            .stats()
            .named()
            .iter()
            .map(|(n, c)| format!("{n} x{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let mut devices = attach_devices(&sys, &mut rep, sys.mem.size())?;

    // Buffer pool: physical pages the workload scatters over.
    let pool_pages = 4096u64;
    let pool = sys
        .mem
        .alloc(pool_pages * 4096)
        .map_err(err("buffer pool"))?;

    let bar = if opts.progress {
        indicatif::ProgressBar::new(opts.ops)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} scatter-gather DMA ops {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rng = Rng(opts.seed | 1);
    let started = Instant::now();
    for op in 0..opts.ops {
        let dev = &mut devices[(op % 5) as usize];
        one_op(&sys, dev, &mut rng, pool, pool_pages, &mut rep)?;
        if op % 64 == 0 {
            bar.set_position(op);
        }
    }
    bar.finish_and_clear();
    rep.seconds = started.elapsed().as_secs_f64();
    rep.ops = opts.ops;

    provoke_faults(&sys, &mut devices, pool, &mut rep)?;

    let d = sys.smmu.stats();
    rep.commands = d.named();
    rep.syncs = d.syncs;
    rep.updates = (d.ste_updates, d.cd_updates, d.update_syncs);
    let c = sys.mem.cache_stats();
    rep.cleans = (c.clean_calls, c.lines_cleaned, c.redundant_lines);
    let m = sys.model.stats();
    rep.translation = (
        m.translations,
        m.tlb_hits,
        m.tlb_misses,
        m.walks,
        m.descriptor_reads,
    );
    rep.config_cache = (m.ste_hits, m.ste_misses, m.cd_hits, m.cd_misses);
    // Everything the model still caches, against the tables in memory.
    let a = sys.model.audit_caches();
    let stale = a.stale.len() + a.stale_walks.len() + a.stale_stage2.len() + a.stale_configs.len();
    rep.audit = (a.checked, stale);
    sys.smmu.shutdown().map_err(err("shutdown"))?;
    Ok(rep)
}

fn attach_devices(sys: &System, rep: &mut DemoReport, ram: u64) -> Result<Vec<Device>, String> {
    let smmu = &sys.smmu;
    let none = AttachOptions::default();

    let s1 = HostedDomain::new_stage1(smmu, Granule::K4, 48).map_err(err("stage-1 domain"))?;
    let up = smmu
        .attach(0x10, None, &s1, none)
        .map_err(err("attach s1"))?;
    rep.devices.push((
        "nic".into(),
        0x10,
        "stage 1, 4K granule, 48-bit VA".into(),
        up.syncs(),
    ));

    let s2 = HostedDomain::new_stage2(smmu, Granule::K64, 40).map_err(err("stage-2 domain"))?;
    let up = smmu
        .attach(0x20, None, &s2, none)
        .map_err(err("attach s2"))?;
    rep.devices.push((
        "disk".into(),
        0x20,
        "stage 2, 64K granule, 40-bit IPA".into(),
        up.syncs(),
    ));

    // Nested: the guest's IPA space maps RAM one to one, so its CD and
    // stage-1 tables are reachable at their physical addresses.
    let guest_s2 = HostedDomain::new_stage2(smmu, Granule::K4, 40).map_err(err("nested s2"))?;
    guest_s2
        .map(sys.mem.base(), sys.mem.base(), ram, RW)
        .map_err(err("guest RAM at stage 2"))?;
    let guest_s1 =
        HostedDomain::new_nested_stage1(&guest_s2, Granule::K16, 48).map_err(err("nested s1"))?;
    let a = smmu
        .attach(0x30, None, &guest_s2, none)
        .map_err(err("attach nested s2"))?;
    let b = smmu
        .attach(0x30, None, &guest_s1, none)
        .map_err(err("attach nested s1"))?;
    rep.devices.push((
        "gpu (guest)".into(),
        0x30,
        "nested: stage 1 16K granule over stage 2 4K".into(),
        a.syncs() + b.syncs(),
    ));

    let opts = AttachOptions {
        ssid_bits: 8,
        ..Default::default()
    };
    let pasid = HostedDomain::new_stage1(smmu, Granule::K4, 48).map_err(err("pasid domain"))?;
    let up = smmu
        .attach(0x40, Some(7), &pasid, opts)
        .map_err(err("attach ssid"))?;
    rep.devices.push((
        "accelerator".into(),
        0x40,
        "stage 1 on substream 7 (2-level CD table, 256 SSIDs)".into(),
        up.syncs(),
    ));

    let up = smmu.set_bypass(0x50).map_err(err("bypass"))?;
    rep.devices
        .push(("legacy".into(), 0x50, "bypass".into(), up.syncs()));

    let dev = |name, sid, ssid, domain, parent| Device {
        name,
        sid,
        ssid,
        domain,
        _parent: parent,
    };
    Ok(vec![
        dev("nic", 0x10, None, Some(s1), None),
        dev("disk", 0x20, None, Some(s2), None),
        dev("gpu", 0x30, None, Some(guest_s1), Some(guest_s2)),
        dev("accelerator", 0x40, Some(7), Some(pasid), None),
        dev("legacy", 0x50, None, None, None),
    ])
}

/// Bytes the device moves in each direction per mapped page: enough to
/// tell every page's buffer apart, little enough that the simulated memory
/// does not dominate what is measured.
const PROBE: u64 = 64;

/// Returns the pattern byte of page `page` of segment `seg` in operation
/// `tag` (distinct per page, so a wrong translation reads wrong data).
fn pattern(tag: u8, seg: usize, page: u64) -> u8 {
    tag ^ (seg as u8).wrapping_mul(31) ^ (page as u8).wrapping_mul(7)
}

/// Maps a random scatter-gather list, lets the device read and write a
/// probe in every mapped page, checks both directions, unmaps, and checks
/// the IOVA faults afterwards. The SMMU stack's phases are timed apart
/// from the CPU side's simulated-memory work.
// Kept out of line so profiles (callgrind --toggle-collect) can isolate it.
#[inline(never)]
fn one_op(
    sys: &System,
    dev: &mut Device,
    rng: &mut Rng,
    pool: u64,
    pool_pages: u64,
    rep: &mut DemoReport,
) -> Result<(), String> {
    let granule = match &dev.domain {
        Some(d) => d.page_table().config().granule.size(),
        None => 4096,
    };
    // Segments: whole granules in distinct slots of the pool (a DMA list
    // never names the same memory twice), at random offsets inside a slot.
    let slot = 16 * granule.max(4096);
    let slots = pool_pages * 4096 / slot;
    let nsegs = (1 + rng.below(MAX_SEGS)).min(slots);
    let mut used = Vec::new();
    let mut segs = Vec::new();
    while segs.len() < nsegs as usize {
        let s = rng.below(slots);
        if used.contains(&s) {
            continue;
        }
        used.push(s);
        let pages = 1 + rng.below((MAX_SEG / granule.max(4096)).clamp(1, 15));
        let len = pages * granule;
        let offset = rng.below(16 - pages + 1) * granule;
        segs.push((pool + s * slot + offset, len));
    }
    let total: u64 = segs.iter().map(|s| s.1).sum();
    // One probe per page, at a random line of the page.
    let tag = rng.next() as u8;
    let mut probes = Vec::new();
    for (i, &(_, len)) in segs.iter().enumerate() {
        for page in 0..len / granule {
            let off = page * granule + rng.below(granule / PROBE) * PROBE;
            probes.push((i, off, pattern(tag, i, page)));
        }
    }

    // CPU fills the probes and, as a DMA API would for a non-coherent
    // device, cleans them.
    let t0 = Instant::now();
    for &(i, off, p) in &probes {
        let pa = segs[i].0 + off;
        sys.mem
            .cpu_write(pa, &[p; PROBE as usize])
            .map_err(err("cpu write"))?;
        sys.mem.clean(pa, PROBE).map_err(err("clean buffer"))?;
    }
    let t1 = Instant::now();

    // Map back to back from IOVA (bypass: the device uses physical addresses).
    let mut iovas = Vec::new();
    let mut iova = IOVA;
    for &(pa, len) in &segs {
        match &dev.domain {
            Some(d) => {
                d.map(iova, pa, len, RW).map_err(err("map"))?;
                iovas.push(iova);
                iova += len;
            }
            None => iovas.push(pa),
        }
    }
    rep.segments += nsegs;
    let t2 = Instant::now();

    // Device reads every probe, then writes the inverted pattern back.
    let mut got = [0u8; PROBE as usize];
    for &(i, off, p) in &probes {
        let va = iovas[i] + off;
        let ok = sys
            .model
            .dma_read(&dev.req(false, va, PROBE), &mut got)
            .is_ok();
        if !ok || got != [p; PROBE as usize] {
            rep.data_errors += 1;
        }
        if sys
            .model
            .dma_write(&dev.req(true, va, PROBE), &[!p; PROBE as usize])
            .is_err()
        {
            rep.data_errors += 1;
        }
        rep.dma_bytes += 2 * PROBE;
    }
    let t3 = Instant::now();
    for &(i, off, p) in &probes {
        let pa = segs[i].0 + off;
        sys.mem.invalidate(pa, PROBE).map_err(err("invalidate"))?;
        sys.mem.cpu_read(pa, &mut got).map_err(err("cpu read"))?;
        if got != [!p; PROBE as usize] {
            rep.data_errors += 1;
        }
    }
    let t4 = Instant::now();

    // Unmap; the old IOVA must now fault even though the model's TLB held it.
    if let Some(d) = dev.domain.as_mut() {
        let done = d.unmap(IOVA, total).map_err(err("unmap"))?;
        if done != total {
            return Err(format!("{}: unmapped {done:#x} of {total:#x}", dev.name));
        }
        let probe = IOVA + rng.below(total / 8) * 8;
        if sys.model.translate(&dev.req(false, probe, 8)).is_ok() {
            rep.stale_translations += 1;
        }
        drain(sys, rep)?;
    }
    let t5 = Instant::now();
    let d = |a: Instant, b: Instant| (b - a).as_secs_f64();
    rep.phases.map += d(t1, t2);
    rep.phases.dma += d(t2, t3);
    rep.phases.unmap += d(t4, t5);
    rep.phases.cpu += d(t0, t1) + d(t3, t4);
    Ok(())
}

fn drain(sys: &System, rep: &mut DemoReport) -> Result<Vec<Event>, String> {
    let batch = sys.smmu.drain_events().map_err(err("drain events"))?;
    for e in &batch.events {
        *rep.events.entry(e.ty.name().to_string()).or_default() += 1;
    }
    if batch.overflowed {
        *rep.events
            .entry("(event queue overflow)".into())
            .or_default() += 1;
    }
    Ok(batch.events)
}

/// Provokes one fault of each kind and checks the decoded event.
fn provoke_faults(
    sys: &System,
    devices: &mut [Device],
    pool: u64,
    rep: &mut DemoReport,
) -> Result<(), String> {
    use smmuv3::event::EventType as T;
    drain(sys, rep)?;
    let nic = &devices[0];
    let dom = nic.domain.as_ref().ok_or("nic has no domain")?;
    let mut cases: Vec<(&str, DmaRequest, T)> = Vec::new();

    // 1. DMA to an IOVA nobody mapped.
    cases.push((
        "unmapped IOVA",
        nic.req(true, 0x7_0000_0000, 4),
        T::Translation,
    ));
    // 2. A write to a read-only mapping.
    dom.map(0x5000_0000, pool, 4096, Prot::READ | Prot::CACHE)
        .map_err(err("map read-only"))?;
    cases.push((
        "write to read-only page",
        nic.req(true, 0x5000_0000, 4),
        T::Permission,
    ));
    // 3. A stream ID no STE describes: its level-2 stream table was never
    // made, so the level-1 descriptor has SPAN 0 (C_BAD_STREAMID).
    cases.push((
        "stream without a level-2 table",
        DmaRequest::write(0xbeef, 0x1000, 4),
        T::BadStreamId,
    ));
    // 4. Stage 2: an IPA beyond the mapped guest memory.
    let disk = &devices[1];
    cases.push((
        "stage-2 hole",
        disk.req(false, 0x10_0000_0000, 4),
        T::Translation,
    ));

    for (what, req, want) in cases {
        let fault = sys.model.dma_write(&req, &[0; 4]).err();
        let events = drain(sys, rep)?;
        let line = match (fault, events.first()) {
            (Some(_), Some(ev)) if ev.ty == want => format!("{what}: {ev}"),
            (f, ev) => {
                rep.provoked_mismatches += 1;
                format!(
                    "{what}: UNEXPECTED fault {f:?}, event {ev:?}, wanted {}",
                    want.name()
                )
            }
        };
        rep.provoked.push(line);
    }
    Ok(())
}

/// Returns the report as text.
pub fn render(rep: &DemoReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== bring-up");
    for l in &rep.bring_up {
        let _ = writeln!(s, "  {l}");
    }
    let _ = writeln!(s, "== devices");
    for (name, sid, cfg, syncs) in &rep.devices {
        let _ = writeln!(
            s,
            "  sid {sid:#06x} {name:<12} {cfg} (attach: {syncs} syncs)"
        );
    }
    let _ = writeln!(s, "== scatter-gather DMA workload");
    let _ = writeln!(
        s,
        "  {} operations, {} segments, {:.1} MiB moved ({PROBE}-byte probes per page), {:.0} ops/s",
        rep.ops,
        rep.segments,
        rep.dma_bytes as f64 / (1 << 20) as f64,
        rep.ops as f64 / rep.seconds.max(1e-9)
    );
    let ph = &rep.phases;
    let pct = |x: f64| 100.0 * x / rep.seconds.max(1e-9);
    let _ = writeln!(
        s,
        "  SMMU stack {:.0}% of the workload time (map {:.0}%, DMA through the model {:.0}%, unmap + TLBI + probe {:.0}%); CPU side on simulated memory {:.0}%",
        pct(ph.stack()),
        pct(ph.map),
        pct(ph.dma),
        pct(ph.unmap),
        pct(ph.cpu)
    );
    let _ = writeln!(
        s,
        "  data errors: {}   stale translations after unmap: {}",
        rep.data_errors, rep.stale_translations
    );
    let _ = writeln!(s, "== provoked faults (decoded events)");
    for l in &rep.provoked {
        let _ = writeln!(s, "  {l}");
    }
    let _ = writeln!(s, "== commands");
    let cmds: Vec<String> = rep
        .commands
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    for chunk in cmds.chunks(4) {
        let _ = writeln!(s, "  {}", chunk.join(", "));
    }
    let _ = writeln!(
        s,
        "  CMD_SYNCs completed: {}; STE updates {}, CD updates {}, syncs spent on them {}",
        rep.syncs, rep.updates.0, rep.updates.1, rep.updates.2
    );
    let _ = writeln!(s, "== cache maintenance");
    let _ = writeln!(
        s,
        "  {} clean calls, {} lines cleaned, {} of them already clean",
        rep.cleans.0, rep.cleans.1, rep.cleans.2
    );
    let _ = writeln!(s, "== model");
    let (t, h, m, w, d) = rep.translation;
    let _ = writeln!(
        s,
        "  {t} translations: TLB hits {h}, misses {m} ({:.1}% hit), {w} walks, {d} descriptor reads",
        100.0 * h as f64 / (h + m).max(1) as f64
    );
    let (sh, sm, ch, cm) = rep.config_cache;
    let _ = writeln!(
        s,
        "  config cache: STE hits {sh} misses {sm}, CD hits {ch} misses {cm}"
    );
    let _ = writeln!(
        s,
        "  cache audit: {} cached entries checked against the tables in memory, {} stale",
        rep.audit.0, rep.audit.1
    );
    let _ = writeln!(s, "== events");
    for (name, n) in &rep.events {
        let _ = writeln!(s, "  {name}: {n}");
    }
    let _ = write!(
        s,
        "== result: {}",
        if rep.ok() {
            "OK"
        } else {
            "FAILED (see data errors, stale translations, cache audit, provoked faults)"
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(coherency: Coherency) -> DemoReport {
        run(DemoOptions {
            ops: 60,
            coherency,
            seed: 7,
            progress: false,
            ram: 64 << 20,
        })
        .unwrap()
    }

    #[test]
    fn demo_moves_data_and_sees_no_stale_translation() {
        for coh in [Coherency::Coherent, Coherency::NonCoherent] {
            let r = small(coh);
            assert!(r.ok(), "{}", render(&r));
            assert_eq!(r.ops, 60);
            // The audit saw the devices' remaining cached entries.
            assert_eq!(r.audit.1, 0);
            assert!(r.audit.0 > 0, "{:?}", r.audit);
            assert!(r.dma_bytes > 0);
            // Each translated op ends with one probe fault (4 of 5 devices)
            // and the provoked faults add their own.
            let faults: u64 = r.events.values().sum();
            assert!(faults >= 48, "{:?}", r.events);
            assert_eq!(r.provoked.len(), 4);
            // Every phase ran and the split accounts for the workload.
            let ph = r.phases;
            assert!(ph.map > 0.0 && ph.dma > 0.0 && ph.unmap > 0.0 && ph.cpu > 0.0);
            assert!(
                ph.stack() + ph.cpu <= r.seconds * 1.01,
                "{ph:?} {}",
                r.seconds
            );
            // One probe per mapped page, each moved both ways.
            assert!(r.dma_bytes >= 2 * PROBE * r.segments);
            let tlbi: u64 = r
                .commands
                .iter()
                .filter(|(n, _)| n.contains("TLBI"))
                .map(|c| c.1)
                .sum();
            assert!(tlbi >= 48, "one invalidation per unmap at least");
            if coh == Coherency::NonCoherent {
                assert!(r.cleans.1 > 0);
            }
        }
    }
}
