//! The device-tree rewriter against trees built here by an independent
//! writer, with the result read back by the `fdt` crate.

use hyp_host::dtb::{self, Bank, DtbError, Patch};

/// A minimal flattened-tree writer (test-only, written from the spec).
#[derive(Default)]
struct Builder {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn word(&mut self, v: u32) {
        self.structs.extend_from_slice(&v.to_be_bytes());
    }
    fn pad(&mut self) {
        while self.structs.len() % 4 != 0 {
            self.structs.push(0);
        }
    }
    fn begin(&mut self, name: &str) -> &mut Self {
        self.word(1);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }
    fn end(&mut self) -> &mut Self {
        self.word(2);
        self
    }
    fn nop(&mut self) -> &mut Self {
        self.word(4);
        self
    }
    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.word(3);
        self.word(value.len() as u32);
        self.word(off);
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }
    fn finish(&mut self) -> Vec<u8> {
        self.word(9);
        let rsv_at = 40;
        let struct_at = rsv_at + 32;
        let strings_at = struct_at + self.structs.len();
        let total = strings_at + self.strings.len();
        let mut b = Vec::new();
        for v in [
            0xd00d_feed,
            total as u32,
            struct_at as u32,
            strings_at as u32,
            rsv_at as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structs.len() as u32,
        ] {
            b.extend_from_slice(&u32::to_be_bytes(v));
        }
        // One reservation (0x4800_0000 + 4 KiB), then the terminator.
        b.extend_from_slice(&0x4800_0000u64.to_be_bytes());
        b.extend_from_slice(&0x1000u64.to_be_bytes());
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&self.structs);
        b.extend_from_slice(&self.strings);
        b
    }
}

fn cells(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// QEMU virt's shape: 2/2 cells, a 1 GiB memory node, /chosen with stdout.
fn qemu_like(with_chosen: bool) -> Vec<u8> {
    let mut b = Builder::default();
    b.begin("")
        .prop("#address-cells", &cells(&[2]))
        .prop("#size-cells", &cells(&[2]))
        .prop("compatible", b"linux,dummy-virt\0");
    b.begin("memory@40000000")
        .prop("reg", &cells(&[0, 0x4000_0000, 0, 0x4000_0000]))
        .nop()
        .prop("device_type", b"memory\0")
        .end();
    if with_chosen {
        b.begin("chosen")
            .prop("bootargs", b"old\0")
            .prop("stdout-path", b"/pl011@9000000\0")
            .end();
    }
    b.begin("pl011@9000000")
        .prop("reg", &cells(&[0, 0x0900_0000, 0, 0x1000]))
        .end();
    b.end().finish()
}

const HYP: Bank = Bank {
    base: 0x7f00_0000,
    size: 0x100_0000,
};

fn patch_and_read(input: &[u8], patch: &Patch<'_>) -> Vec<u8> {
    let mut out = vec![0u8; input.len() + 4096];
    let n = dtb::rewrite(input, patch, &mut out).expect("rewrite");
    out.truncate(n);
    assert_eq!(dtb::total_size(&out), Ok(n));
    out
}

fn regs(fdt: &fdt::Fdt<'_>, path: &str) -> Vec<(u64, u64)> {
    fdt.find_node(path)
        .unwrap_or_else(|| panic!("no {path}"))
        .reg()
        .expect("reg")
        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
        .collect()
}

#[test]
fn chosen_props_replace_and_memory_loses_the_hypervisor() {
    let input = qemu_like(true);
    let start = 0x4800_0000u64.to_be_bytes();
    let end = 0x480f_4240u64.to_be_bytes();
    let patch = Patch {
        chosen: &[
            ("bootargs", b"console=ttyAMA0 rdinit=/init\0"),
            ("linux,initrd-start", &start),
            ("linux,initrd-end", &end),
        ],
        carve: Some(HYP),
    };
    let out = patch_and_read(&input, &patch);
    let fdt = fdt::Fdt::new(&out).expect("fdt reads the result");
    let chosen = fdt.find_node("/chosen").unwrap();
    assert_eq!(
        chosen.property("bootargs").unwrap().as_str(),
        Some("console=ttyAMA0 rdinit=/init")
    );
    // The untouched property survives; the old bootargs is gone (one only).
    assert_eq!(
        chosen.property("stdout-path").unwrap().as_str(),
        Some("/pl011@9000000")
    );
    assert_eq!(
        chosen.properties().filter(|p| p.name == "bootargs").count(),
        1
    );
    assert_eq!(
        chosen.property("linux,initrd-start").unwrap().as_usize(),
        Some(0x4800_0000)
    );
    assert_eq!(
        chosen.property("linux,initrd-end").unwrap().as_usize(),
        Some(0x480f_4240)
    );
    assert_eq!(regs(&fdt, "/memory@40000000"), [(0x4000_0000, 0x3f00_0000)]);
    // Other nodes' reg is untouched, and so is the reservation block.
    assert_eq!(regs(&fdt, "/pl011@9000000"), [(0x0900_0000, 0x1000)]);
    let rsv: Vec<_> = fdt
        .memory_reservations()
        .map(|r| (r.address() as u64, r.size()))
        .collect();
    assert_eq!(rsv, [(0x4800_0000, 0x1000)]);
    let mut banks = [Bank { base: 0, size: 0 }; 4];
    assert_eq!(dtb::memory_banks(&out, &mut banks), Ok(1));
    assert_eq!(
        banks[0],
        Bank {
            base: 0x4000_0000,
            size: 0x3f00_0000
        }
    );
}

#[test]
fn a_missing_chosen_is_created() {
    let input = qemu_like(false);
    let patch = Patch {
        chosen: &[
            ("bootargs", b"quiet\0"),
            ("linux,new-name", b"\x00\x00\x00\x01"),
        ],
        carve: None,
    };
    let out = patch_and_read(&input, &patch);
    let fdt = fdt::Fdt::new(&out).unwrap();
    let chosen = fdt.find_node("/chosen").expect("created");
    assert_eq!(chosen.property("bootargs").unwrap().as_str(), Some("quiet"));
    assert_eq!(
        chosen.property("linux,new-name").unwrap().as_usize(),
        Some(1)
    );
    assert_eq!(regs(&fdt, "/memory@40000000"), [(0x4000_0000, 0x4000_0000)]);
}

#[test]
fn a_carve_in_the_middle_splits_the_bank() {
    let input = qemu_like(true);
    let patch = Patch {
        chosen: &[],
        carve: Some(Bank {
            base: 0x5000_0000,
            size: 0x20_0000,
        }),
    };
    let out = patch_and_read(&input, &patch);
    let mut banks = [Bank { base: 0, size: 0 }; 4];
    assert_eq!(dtb::memory_banks(&out, &mut banks), Ok(2));
    assert_eq!(
        banks[0],
        Bank {
            base: 0x4000_0000,
            size: 0x1000_0000
        }
    );
    assert_eq!(
        banks[1],
        Bank {
            base: 0x5020_0000,
            size: 0x2fe0_0000
        }
    );
    // Memory the carve does not touch keeps its bank whole.
    let far = Patch {
        chosen: &[],
        carve: Some(Bank {
            base: 0x1_0000_0000,
            size: 0x1000,
        }),
    };
    let out = patch_and_read(&input, &far);
    assert_eq!(dtb::memory_banks(&out, &mut banks), Ok(1));
    assert_eq!(
        banks[0],
        Bank {
            base: 0x4000_0000,
            size: 0x4000_0000
        }
    );
}

#[test]
fn bad_input_is_refused_and_small_output_too() {
    let input = qemu_like(true);
    let mut out = vec![0u8; 64];
    assert_eq!(
        dtb::rewrite(&input, &Patch::default(), &mut out),
        Err(DtbError::NoRoom)
    );
    let mut bad = input.clone();
    bad[0] = 0;
    assert!(matches!(
        dtb::rewrite(&bad, &Patch::default(), &mut vec![0; 8192]),
        Err(DtbError::BadMagic(_))
    ));
    let mut short = input.clone();
    short.truncate(input.len() - 8);
    assert!(matches!(
        dtb::rewrite(&short, &Patch::default(), &mut vec![0; 8192]),
        Err(DtbError::Truncated(_))
    ));
    // A token that is not one: the first BEGIN_NODE replaced by 7.
    let mut token = input.clone();
    token[72..76].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        dtb::rewrite(&token, &Patch::default(), &mut vec![0; 8192]),
        Err(DtbError::BadToken {
            token: 7,
            offset: 0
        })
    );
}

proptest::proptest! {
    /// Whatever the carve, the banks that come out are exactly the input bank
    /// minus the carve.
    #[test]
    fn carving_is_set_difference(base in 0x3000_0000u64..0x9000_0000, size in 0u64..0x5000_0000) {
        let input = qemu_like(true);
        let carve = Bank { base, size };
        let out = patch_and_read(&input, &Patch { chosen: &[], carve: Some(carve) });
        let mut banks = [Bank { base: 0, size: 0 }; 4];
        let n = dtb::memory_banks(&out, &mut banks).unwrap();
        let inside = |a: u64| (0x4000_0000..0x8000_0000).contains(&a) && !(base..base + size).contains(&a);
        for probe in (0x3f00_0000u64..0x8100_0000).step_by(0x80_0000).chain([base, base + size, base.wrapping_sub(1)]) {
            let covered = banks[..n].iter().any(|b| (b.base..b.base + b.size).contains(&probe));
            proptest::prop_assert_eq!(covered, inside(probe), "probe {:#x}", probe);
        }
        proptest::prop_assert!(banks[..n].iter().all(|b| b.size > 0));
    }
}
