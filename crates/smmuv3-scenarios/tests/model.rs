//! The scenarios against our own software SMMU (`smmuv3-model`), with a
//! simulated device standing in for QEMU's edu: the same code that runs on
//! QEMU's SMMUv3 in `baremetal/`, so a difference between the two SMMU
//! implementations shows up as a scenario passing on one and failing on
//! the other.
//!
//! Three machines: the model configured like QEMU's `virt` and `virt-9.1`
//! (same ID registers, so the probe asserts the same values), and the
//! model's default rich configuration over non-coherent memory, where a
//! missing cache clean anywhere in the driver or page tables would corrupt
//! the DMA.

use std::sync::Arc;

use sim_memory::{Coherency, SimMemory};
use smmuv3_hosted::{ModelFrame, PollClock, SimDmaMemory};
use smmuv3_model::{DmaRequest, ModelConfig, SmmuModel};
use smmuv3_scenarios::{
    DeviceError, DmaDevice, IdProfile, Platform, Problem, QEMU_VIRT, QEMU_VIRT_9_1, run_one,
};

/// Simulated RAM: base and size (room for the 2 MiB scatter-gather chunks).
const RAM_BASE: u64 = 0x8000_0000;
const RAM_SIZE: u64 = 32 << 20;
/// The stream ID edu gets on QEMU (00:01.0).
const SID: u32 = 0x8;
/// Size of the device's internal buffer (as edu).
const DEV_BUF: usize = 4096;

/// An edu-like device: copies between its buffer and bus addresses through
/// the model. Like edu under QEMU, a transfer goes out as 4-byte beats (so a
/// faulting transfer raises one event per beat), and a transfer the SMMU
/// terminates still "completes": the evidence is the event queue and the
/// untouched memory.
struct SimDevice {
    model: Arc<SmmuModel>,
    buf: Vec<u8>,
}

/// Bytes per bus beat.
const BEAT: usize = 4;

fn range(offset: usize, len: usize) -> Result<std::ops::Range<usize>, DeviceError> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= DEV_BUF && len > 0)
        .ok_or(DeviceError::OutOfBuffer)?;
    Ok(offset..end)
}

impl DmaDevice for SimDevice {
    fn stream_id(&self) -> u32 {
        SID
    }

    fn buffer_size(&self) -> usize {
        DEV_BUF
    }

    fn read_from_bus(&mut self, iova: u64, offset: usize, len: usize) -> Result<(), DeviceError> {
        let r = range(offset, len)?;
        for (i, chunk) in self.buf[r].chunks_mut(BEAT).enumerate() {
            let at = iova + (i * BEAT) as u64;
            let mut beat = [0u8; BEAT];
            let beat = &mut beat[..chunk.len()];
            if self
                .model
                .dma_read(&DmaRequest::read(SID, at, beat.len() as u64), beat)
                .is_ok()
            {
                chunk.copy_from_slice(beat);
            }
        }
        Ok(())
    }

    fn write_to_bus(&mut self, offset: usize, iova: u64, len: usize) -> Result<(), DeviceError> {
        let r = range(offset, len)?;
        for (i, chunk) in self.buf[r].chunks(BEAT).enumerate() {
            let at = iova + (i * BEAT) as u64;
            let _ = self
                .model
                .dma_write(&DmaRequest::write(SID, at, chunk.len() as u64), chunk);
        }
        Ok(())
    }
}

struct ModelPlatform {
    mem: Arc<SimMemory>,
    model: Arc<SmmuModel>,
    dev: SimDevice,
    profile: Option<IdProfile>,
}

impl ModelPlatform {
    fn new(cfg: ModelConfig, coherency: Coherency, profile: Option<IdProfile>) -> Self {
        let mem =
            Arc::new(SimMemory::new(RAM_BASE, RAM_SIZE, coherency).expect("simulated memory"));
        let model = Arc::new(SmmuModel::new(cfg, mem.clone()).expect("model configuration"));
        let dev = SimDevice {
            model: model.clone(),
            buf: vec![0; DEV_BUF],
        };
        Self {
            mem,
            model,
            dev,
            profile,
        }
    }
}

impl Platform for ModelPlatform {
    type Regs = ModelFrame;
    type Mem = SimDmaMemory;
    type Clock = PollClock;
    type Device = SimDevice;

    fn regs(&self) -> ModelFrame {
        ModelFrame::new(self.model.clone())
    }

    fn mem(&self) -> SimDmaMemory {
        SimDmaMemory::new(self.mem.clone())
    }

    fn clock(&self) -> PollClock {
        PollClock::default()
    }

    fn device(&mut self) -> &mut SimDevice {
        &mut self.dev
    }

    fn expected_ids(&self) -> Option<IdProfile> {
        self.profile
    }

    fn ram(&self) -> (u64, u64) {
        (RAM_BASE, RAM_SIZE)
    }

    fn log(&self, args: std::fmt::Arguments<'_>) {
        println!("{args}");
    }
}

/// What a scenario must report on a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Pass,
    Skip,
}

fn check(mut p: ModelPlatform, name: &str, want: Want) {
    let outcome = run_one(&mut p, name).unwrap_or_else(|| panic!("no scenario {name}"));
    match (&outcome, want) {
        (Ok(detail), Want::Pass) => println!("{name}: PASS {detail}"),
        (Err(Problem::Skip(why)), Want::Skip) => println!("{name}: SKIP {why}"),
        _ => panic!("{name}: want {want:?}, got {outcome:?}"),
    }
    // Every scenario ends with its driver torn down: no command or global
    // error may be left behind in the model.
    let stats = p.model.stats();
    assert_eq!(
        stats.total_gerrors(),
        0,
        "{name}: global errors in the model: {stats:?}"
    );
}

fn qemu_virt() -> ModelPlatform {
    ModelPlatform::new(
        ModelConfig::qemu_like(),
        Coherency::Coherent,
        Some(QEMU_VIRT),
    )
}

/// The model as QEMU's stage-1-only `virt-9.1` (IDR3 0x1404: no XNX).
fn qemu_virt_9_1() -> ModelPlatform {
    ModelPlatform::new(
        ModelConfig::qemu_stage1_only(),
        Coherency::Coherent,
        Some(QEMU_VIRT_9_1),
    )
}

fn non_coherent() -> ModelPlatform {
    ModelPlatform::new(ModelConfig::default(), Coherency::NonCoherent, None)
}

/// One test per scenario per machine. `s2` scenarios are skipped (with an
/// explicit reason) on the stage-1-only machine.
macro_rules! scenarios {
    ($( $kind:ident $test:ident = $name:literal; )*) => {
        mod like_qemu_virt {
            use super::*;
            $( #[test] fn $test() { check(qemu_virt(), $name, Want::Pass); } )*
        }
        mod like_qemu_virt_9_1 {
            use super::*;
            $( #[test] fn $test() { check(qemu_virt_9_1(), $name, scenarios!(@s1only $kind)); } )*
        }
        mod non_coherent_walker {
            use super::*;
            $( #[test] fn $test() { check(non_coherent(), $name, Want::Pass); } )*
        }

        /// The list above is the crate's whole list, in order.
        #[test]
        fn every_scenario_has_a_test() {
            assert_eq!(smmuv3_scenarios::SCENARIOS, &[$($name),*]);
        }
    };
    (@s1only pass) => { Want::Pass };
    (@s1only s2) => { Want::Skip };
}

scenarios! {
    pass probe = "probe";
    pass bypass_dma = "bypass-dma";
    pass abort_dma = "abort-dma";
    pass linear_stream_table = "linear-stream-table";
    pass stage1_dma = "stage1-dma";
    s2 stage2_dma = "stage2-dma";
    s2 nested_dma = "nested-dma";
    s2 nested_s2_unmap = "nested-s2-unmap";
    pass two_level_stream_table = "two-level-stream-table";
    pass fault_translation = "fault-translation";
    pass fault_permission = "fault-permission";
    pass stale_tlb_range_tlbi = "stale-tlb-range-tlbi";
    pass unmap_then_fault = "unmap-then-fault";
    pass scatter_gather_blocks = "scatter-gather-blocks";
    pass granules_dma = "granules-dma";
    pass event_overflow = "event-overflow";
    pass ste_transitions = "ste-transitions";
    pass ste_switch_under_dma = "ste-switch-under-dma";
    s2 hyp_shadow = "hyp-shadow";
    s2 hyp_trap = "hyp-trap";
}
