//! Arm SMMUv3 driver core.
//!
//! One code base for every environment that drives an SMMUv3: a kernel-like
//! host, a hypervisor, a bare-metal test kernel, and the in-process software
//! model. The environment is a register frame ([`env::RegisterFrame`]), a
//! clock for bounded waits ([`env::Clock`]), and io-pgtable's table-memory and
//! cache-maintenance traits.
//!
//! Layers, each usable alone:
//! * [`regs`] and [`layout`]: register and descriptor layouts;
//! * [`probe`]: ID registers to typed [`probe::Features`] with errata;
//! * [`command`] and [`tlbi`]: command encoding and the range-invalidation
//!   planner (pure, for hypervisors);
//! * [`event`]: event record decoding;
//! * the driver proper: queues, stream table, STE/CD writers and domains.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bits;
pub mod command;
pub mod config;
pub mod entry;
pub mod env;
mod error;
pub mod event;
pub mod layout;
pub mod mem;
pub mod probe;
pub mod queue;
pub mod regs;
pub mod sync;
pub mod tlbi;

pub use error::{CmdqErrorKind, Error};
pub mod driver;

pub use driver::{AttachOptions, Domain, DomainKind, Smmu, SmmuConfig, Update};
