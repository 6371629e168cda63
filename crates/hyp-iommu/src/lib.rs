//! A protected hypervisor's DMA isolation on Arm SMMUv3: who owns each
//! page of physical memory, and a host stage-2 shadow that every SMMU
//! walks and that follows ownership, so a page given away is out of reach
//! of every host device before the call that gives it returns.
//!
//! `no_std` + `alloc`, over the `smmuv3` driver core and `io-pgtable`.
//!
//! * [`Ownership`]: 4 KiB pages owned by the host, the hypervisor or a
//!   guest; shares (ownership stays with the host); DMA pins. Requests are
//!   validated over the whole range and refused with a typed [`Error`]
//!   that changed nothing.
//! * [`Shadow`]: one stage-2 io-pgtable at VMID 0 for all SMMUs (geometry:
//!   the intersection of theirs; coherent only if all are), identity
//!   mapping host RAM (read/write, cacheable) and MMIO (device), without
//!   the hypervisor's ranges. [`Mode::Block`] maps RAM with the largest
//!   blocks and splits one in a single store (io-pgtable's `BBML2`), only
//!   when every SMMU has `IDR3.BBML == 2`; otherwise [`Mode::Leaf`] maps
//!   RAM with 4 KiB pages and never splits.
//! * [`ShadowEnv`]: the shadow's environment; its TLB hooks invalidate on
//!   every SMMU that is on (TLBI_S2_IPA at VMID 0 + CMD_SYNC, TLBI_NH_ALL
//!   at VMID 0 + CMD_SYNC). One invalidation per operation, whatever its
//!   page count.
//! * [`HypIommu`]: the operations (donate, reclaim with scrubbing, share,
//!   pin), host stream attachment, power off/on.
//!
//! ```text
//! let mut hyp = HypIommu::new(&map, vec![smmu0, smmu1], table_mem, scrubber, Options::default())?;
//! hyp.attach_host_stream(0, 0x10)?;
//! hyp.donate_to_guest(page, 4096, 1)?; // the device at 0x10 now faults on `page`
//! hyp.reclaim_from_guest(page, 4096, 1)?; // scrubbed, reachable again
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod error;
pub mod hyp;
pub mod invalidate;
pub mod memmap;
pub mod owner;
pub mod scrub;
pub mod shadow;
pub mod vsmmu;

pub use error::Error;
pub use hyp::{HypIommu, Options};
pub use invalidate::{HOST_VMID, ShadowEnv, ShadowStats};
pub use memmap::{MemoryMap, PAGE, Range};
pub use owner::{MAX_GUEST, Owner, Ownership, ShareTarget};
pub use scrub::{Scrub, ScrubError};
pub use shadow::{Geometry, MMIO_PROT, Mode, RAM_PROT, Shadow};
pub use vsmmu::{
    AccessError, EmulationOptions, EmulationStats, Emulator, EventIrq, HostIrqs, HostMemory,
    HostMemoryError, StreamConfig,
};
