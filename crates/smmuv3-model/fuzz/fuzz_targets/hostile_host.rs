//! A hostile host against hyp-iommu's trap-and-emulate: the bytes decode
//! into register writes, command words, STE and level-1 contents, host
//! memory stores, donations and device DMA (the interpreter of
//! hyp-iommu's `tests/hostile.rs`). Any device reaching memory the host
//! does not own, any hypervisor access outside host memory, any panic or
//! hang is a finding.
#![no_main]

#[path = "../../../hyp-iommu/tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (mut w, data) = common::hostile::World::for_input(data);
    for op in w.decode(data) {
        w.apply(&op);
        if let Err(e) = w.check() {
            panic!("{op:?}: {e}");
        }
    }
});
