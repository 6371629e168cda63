//! Arm SMMUv3 driver core.
//!
//! One code base for every environment that drives an SMMUv3: a kernel-like
//! host, a hypervisor, a bare-metal test kernel, and the in-process software
//! model. The environment is a register frame ([`env::RegisterFrame`]; an
//! [`env::MmioFrame`] over `safe-mmio` for hardware), a clock for bounded waits
//! ([`env::Clock`]), and memory: io-pgtable's `TableMemory` and
//! `CacheMaintenance` (the same seam the page tables use) plus
//! [`env::CacheInvalidate`] for what the SMMU writes. `no_std` + `alloc`.
//!
//! # Layers, each usable alone
//!
//! * [`regs`] and [`layout`]: register, STE, CD, command and event layouts
//!   (field positions tested against the architecture);
//! * [`probe`]: ID registers to typed [`probe::Features`], with the IIDR
//!   errata of MMU-600/700/L1/S3, refusing unusable hardware;
//! * [`command`]: every command, encoded and decoded, with a readable
//!   `Display`; [`command::atc_inv`];
//! * [`tlbi`]: the range invalidation planner (RIL: fewest commands;
//!   without: per leaf, switching to ASID/VMID-wide);
//! * [`config`] and [`entry`]: STE/CD building and the hitless used-bits
//!   update planner, with its sync count;
//! * [`event`]: event records to typed values with descriptions;
//! * [`driver`]: [`Smmu`] (bring-up, command queue, event queue, GERROR,
//!   stream and CD tables, attach) and [`Domain`] (an io-pgtable, an
//!   ASID/VMID, map/unmap with the invalidation they need).
//!
//! A hypervisor that keeps its own queue can use the pure layers only: e.g.
//! [`cmdq::Producer`] over its queue memory (encode, publish with the device
//! barrier, bounded wait on CONS, CMDQ_CONS.ERR handling, no allocation),
//! `probe::parse` on the ID registers, `tlbi::plan` for stage-2 IPA
//! invalidation at its VMID, `config::try_build_ste` and
//! `entry::plan_update` + `entry::apply` to rewrite STEs hitlessly.
//!
//! # Waiting
//!
//! Every wait on the device polls with a deadline from [`env::Clock`]
//! ([`SmmuConfig::timeout_us`]); a device that stops responding yields
//! [`Error::Timeout`], never a hang. Queue pointers the device reports are
//! checked before they are trusted.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bits;
pub mod cmdq;
pub mod command;
pub mod config;
pub mod entry;
pub mod env;
mod error;
pub mod event;
pub mod layout;
pub(crate) mod mem;
pub mod probe;
pub mod queue;
pub mod regs;
pub mod sync;
pub mod tlbi;

pub use error::{CmdqErrorKind, Error};
pub mod driver;

pub use driver::{AttachOptions, Domain, DomainKind, Smmu, SmmuConfig, Update};
