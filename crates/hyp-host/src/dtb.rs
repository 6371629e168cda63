//! A device-tree rewriter: the host gets QEMU's tree with `/chosen` set
//! (bootargs, initrd) and the hypervisor's memory cut out of every memory
//! node, so Linux never learns that memory exists.
//!
//! The flattened format (Devicetree Specification v0.4, chapter 5) is
//! rewritten in one pass into a new buffer: header, the unchanged memory
//! reservation block, the structure block with the edits, and the strings
//! block with any new property names appended. NOP tokens are dropped.

/// Flattened device-tree layout.
pub mod layout {
    /// The header's magic.
    pub const MAGIC: u32 = 0xd00d_feed;
    /// Header length in bytes (version 17).
    pub const HEADER_LEN: usize = 40;
    /// Byte offset of `totalsize` in the header.
    pub const TOTALSIZE: usize = 4;
    /// Byte offset of `off_dt_struct`.
    pub const OFF_STRUCT: usize = 8;
    /// Byte offset of `off_dt_strings`.
    pub const OFF_STRINGS: usize = 12;
    /// Byte offset of `off_mem_rsvmap`.
    pub const OFF_RSVMAP: usize = 16;
    /// Byte offset of `version`.
    pub const VERSION: usize = 20;
    /// Byte offset of `last_comp_version`.
    pub const LAST_COMP_VERSION: usize = 24;
    /// Byte offset of `boot_cpuid_phys`.
    pub const BOOT_CPUID: usize = 28;
    /// Byte offset of `size_dt_strings`.
    pub const SIZE_STRINGS: usize = 32;
    /// Byte offset of `size_dt_struct`.
    pub const SIZE_STRUCT: usize = 36;
    /// Structure token: start of a node.
    pub const BEGIN_NODE: u32 = 1;
    /// Structure token: end of a node.
    pub const END_NODE: u32 = 2;
    /// Structure token: a property.
    pub const PROP: u32 = 3;
    /// Structure token: nothing.
    pub const NOP: u32 = 4;
    /// Structure token: end of the structure block.
    pub const END: u32 = 9;
}

use layout::*;

/// Why a device tree could not be read or rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtbError {
    /// No FDT magic.
    #[error("not a flattened device tree (magic {0:#010x})")]
    BadMagic(u32),
    /// An offset or length points outside the blob.
    #[error("device tree truncated or inconsistent at byte {0}")]
    Truncated(usize),
    /// A version before 17 (no structure-block size).
    #[error("device tree version {0} is older than 17")]
    OldVersion(u32),
    /// An unknown structure token.
    #[error("unknown structure token {token:#x} at structure offset {offset}")]
    BadToken {
        /// The token.
        token: u32,
        /// Where, in the structure block.
        offset: usize,
    },
    /// Node nesting does not close properly.
    #[error("unbalanced nodes in the structure block")]
    Unbalanced,
    /// `#address-cells` / `#size-cells` the editor cannot carve (not 1 or 2).
    #[error("memory reg with #address-cells {addr} / #size-cells {size} is not supported")]
    Cells {
        /// `#address-cells` of the root.
        addr: u32,
        /// `#size-cells` of the root.
        size: u32,
    },
    /// The output buffer is too small.
    #[error("output buffer too small")]
    NoRoom,
}

/// One contiguous range of physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bank {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

/// What to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct Patch<'a> {
    /// Properties of `/chosen` to set (same-named ones are replaced; the node
    /// is created when missing).
    pub chosen: &'a [(&'a str, &'a [u8])],
    /// Memory to remove from every memory node's `reg`.
    pub carve: Option<Bank>,
}

fn be32(b: &[u8], at: usize) -> Result<u32, DtbError> {
    let w = b.get(at..at + 4).ok_or(DtbError::Truncated(at))?;
    Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// Returns the `totalsize` of the tree whose header starts `header`.
///
/// # Errors
///
/// [`DtbError::BadMagic`] or [`DtbError::Truncated`].
pub fn total_size(header: &[u8]) -> Result<usize, DtbError> {
    let magic = be32(header, 0)?;
    if magic != MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    Ok(be32(header, TOTALSIZE)? as usize)
}

/// A structure-block token.
enum Token<'a> {
    Begin(&'a str),
    End,
    Prop(&'a str, &'a [u8]),
    Nop,
    EndTree,
}

/// A parsed, bounds-checked tree.
struct Tree<'a> {
    blob: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
    rsvmap: usize,
    boot_cpuid: u32,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn cstr(b: &[u8], at: usize) -> Result<&str, DtbError> {
    let rest = b.get(at..).ok_or(DtbError::Truncated(at))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or(DtbError::Truncated(at))?;
    core::str::from_utf8(&rest[..end]).map_err(|_| DtbError::Truncated(at))
}

impl<'a> Tree<'a> {
    fn parse(blob: &'a [u8]) -> Result<Self, DtbError> {
        let total = total_size(blob)?;
        let blob = blob.get(..total).ok_or(DtbError::Truncated(total))?;
        let version = be32(blob, VERSION)?;
        if version < 17 {
            return Err(DtbError::OldVersion(version));
        }
        let range = |off: usize, len: usize| -> Result<&'a [u8], DtbError> {
            let o = be32(blob, off)? as usize;
            let l = be32(blob, len)? as usize;
            blob.get(o..o.checked_add(l).ok_or(DtbError::Truncated(o))?)
                .ok_or(DtbError::Truncated(o))
        };
        Ok(Self {
            blob,
            structs: range(OFF_STRUCT, SIZE_STRUCT)?,
            strings: range(OFF_STRINGS, SIZE_STRINGS)?,
            rsvmap: be32(blob, OFF_RSVMAP)? as usize,
            boot_cpuid: be32(blob, BOOT_CPUID)?,
        })
    }

    /// Returns the memory reservation block, terminator included.
    fn rsvmap(&self) -> Result<&'a [u8], DtbError> {
        let mut at = self.rsvmap;
        loop {
            let entry = self.blob.get(at..at + 16).ok_or(DtbError::Truncated(at))?;
            at += 16;
            if entry.iter().all(|&b| b == 0) {
                return Ok(&self.blob[self.rsvmap..at]);
            }
        }
    }

    fn next(&self, pos: &mut usize) -> Result<Token<'a>, DtbError> {
        let s = self.structs;
        let at = *pos;
        let token = be32(s, at)?;
        *pos += 4;
        match token {
            BEGIN_NODE => {
                let name = cstr(s, *pos)?;
                *pos = align4(*pos + name.len() + 1);
                Ok(Token::Begin(name))
            }
            END_NODE => Ok(Token::End),
            PROP => {
                let len = be32(s, *pos)? as usize;
                let name_off = be32(s, *pos + 4)? as usize;
                let start = *pos + 8;
                let value = s
                    .get(start..start.checked_add(len).ok_or(DtbError::Truncated(start))?)
                    .ok_or(DtbError::Truncated(start))?;
                *pos = align4(start + len);
                Ok(Token::Prop(cstr(self.strings, name_off)?, value))
            }
            NOP => Ok(Token::Nop),
            END => Ok(Token::EndTree),
            token => Err(DtbError::BadToken { token, offset: at }),
        }
    }

    /// Returns the offset of `name` in the strings block, if present.
    fn find_string(&self, name: &str) -> Option<usize> {
        let mut at = 0;
        while at < self.strings.len() {
            let end = self.strings[at..].iter().position(|&c| c == 0)? + at;
            if &self.strings[at..end] == name.as_bytes() {
                return Some(at);
            }
            at = end + 1;
        }
        None
    }
}

fn is_memory_node(name: &str) -> bool {
    name == "memory" || name.starts_with("memory@")
}

/// Reads `cells` big-endian 32-bit cells (1 or 2) as one number.
fn read_cells(b: &[u8], cells: usize) -> u64 {
    b.chunks(4).take(cells).fold(0, |acc, c| {
        (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    })
}

/// Walks the memory banks of every memory node, calling `f` for each.
fn for_each_bank(
    value: &[u8],
    addr_cells: u32,
    size_cells: u32,
    mut f: impl FnMut(Bank) -> Result<(), DtbError>,
) -> Result<(), DtbError> {
    if !(1..=2).contains(&addr_cells) || !(1..=2).contains(&size_cells) {
        return Err(DtbError::Cells {
            addr: addr_cells,
            size: size_cells,
        });
    }
    let entry = 4 * (addr_cells + size_cells) as usize;
    for e in value.chunks_exact(entry) {
        let (a, s) = e.split_at(4 * addr_cells as usize);
        f(Bank {
            base: read_cells(a, addr_cells as usize),
            size: read_cells(s, size_cells as usize),
        })?;
    }
    Ok(())
}

/// Copies the memory banks of `dtb` (every memory node's `reg`) into `out`.
///
/// Returns how many banks there are (banks beyond `out.len()` are counted but
/// not stored).
///
/// # Errors
///
/// A [`DtbError`] when the tree is malformed.
pub fn memory_banks(dtb: &[u8], out: &mut [Bank]) -> Result<usize, DtbError> {
    let tree = Tree::parse(dtb)?;
    let (mut pos, mut depth, mut in_memory) = (0, 0u32, false);
    let (mut addr_cells, mut size_cells) = (2, 1);
    let mut n = 0;
    loop {
        match tree.next(&mut pos)? {
            Token::Begin(name) => {
                depth += 1;
                if depth == 2 {
                    in_memory = is_memory_node(name);
                }
            }
            Token::End => {
                depth = depth.checked_sub(1).ok_or(DtbError::Unbalanced)?;
                if depth < 2 {
                    in_memory = false;
                }
            }
            Token::Prop(name, value) => match (depth, name) {
                (1, "#address-cells") => addr_cells = read_cells(value, 1) as u32,
                (1, "#size-cells") => size_cells = read_cells(value, 1) as u32,
                (2, "reg") if in_memory => {
                    for_each_bank(value, addr_cells, size_cells, |b| {
                        if let Some(slot) = out.get_mut(n) {
                            *slot = b;
                        }
                        n += 1;
                        Ok(())
                    })?;
                }
                _ => {}
            },
            Token::Nop => {}
            Token::EndTree => {
                return if depth == 0 {
                    Ok(n)
                } else {
                    Err(DtbError::Unbalanced)
                };
            }
        }
    }
}

/// An output buffer that refuses to overflow.
struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Out<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), DtbError> {
        let end = self.len.checked_add(b.len()).ok_or(DtbError::NoRoom)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(DtbError::NoRoom)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    fn u32(&mut self, v: u32) -> Result<(), DtbError> {
        self.bytes(&v.to_be_bytes())
    }

    fn pad4(&mut self) -> Result<(), DtbError> {
        while self.len % 4 != 0 {
            self.bytes(&[0])?;
        }
        Ok(())
    }

    fn set_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn begin(&mut self, name: &str) -> Result<(), DtbError> {
        self.u32(BEGIN_NODE)?;
        self.bytes(name.as_bytes())?;
        self.bytes(&[0])?;
        self.pad4()
    }

    fn prop(&mut self, name_off: usize, value: &[u8]) -> Result<(), DtbError> {
        self.u32(PROP)?;
        self.u32(value.len() as u32)?;
        self.u32(name_off as u32)?;
        self.bytes(value)?;
        self.pad4()
    }

    /// Writes `reg` with `carve` removed from each bank.
    fn carved_reg(
        &mut self,
        name_off: usize,
        value: &[u8],
        cells: (u32, u32),
        carve: Bank,
    ) -> Result<(), DtbError> {
        self.u32(PROP)?;
        let len_at = self.len;
        self.u32(0)?;
        self.u32(name_off as u32)?;
        let start = self.len;
        let cut_end = carve.base.saturating_add(carve.size);
        for_each_bank(value, cells.0, cells.1, |b| {
            let end = b.base.saturating_add(b.size);
            if cut_end <= b.base || carve.base >= end {
                return self.bank(b, cells);
            }
            if b.base < carve.base {
                self.bank(
                    Bank {
                        base: b.base,
                        size: carve.base - b.base,
                    },
                    cells,
                )?;
            }
            if cut_end < end {
                self.bank(
                    Bank {
                        base: cut_end,
                        size: end - cut_end,
                    },
                    cells,
                )?;
            }
            Ok(())
        })?;
        let len = self.len - start;
        self.set_u32(len_at, len as u32);
        Ok(())
    }

    fn bank(&mut self, b: Bank, (addr, size): (u32, u32)) -> Result<(), DtbError> {
        for (v, cells) in [(b.base, addr), (b.size, size)] {
            if cells == 2 {
                self.u32((v >> 32) as u32)?;
            }
            self.u32(v as u32)?;
        }
        Ok(())
    }
}

/// Writes `dtb` with `patch` applied into `out`.
///
/// Returns the length of the new tree (its `totalsize`).
///
/// # Errors
///
/// A [`DtbError`] when the input is malformed, a memory node's cells are not
/// 1 or 2, or `out` is too small; `out` then holds no valid tree.
pub fn rewrite(dtb: &[u8], patch: &Patch<'_>, out: &mut [u8]) -> Result<usize, DtbError> {
    let tree = Tree::parse(dtb)?;
    let rsvmap = tree.rsvmap()?;
    let mut o = Out { buf: out, len: 0 };
    o.bytes(&[0; HEADER_LEN])?;
    while o.len % 8 != 0 {
        o.bytes(&[0])?;
    }
    let rsv_at = o.len;
    o.bytes(rsvmap)?;

    // New names go after the old strings; resolve every name's offset first.
    let mut extra = 0;
    let mut chosen_offs = [0usize; 16];
    if patch.chosen.len() > chosen_offs.len() {
        return Err(DtbError::NoRoom);
    }
    for (i, (name, _)) in patch.chosen.iter().enumerate() {
        chosen_offs[i] = match tree.find_string(name) {
            Some(off) => off,
            None => {
                // A name repeated in the patch reuses its first offset.
                match patch.chosen[..i].iter().position(|(n, _)| n == name) {
                    Some(j) => chosen_offs[j],
                    None => {
                        let off = tree.strings.len() + extra;
                        extra += name.len() + 1;
                        off
                    }
                }
            }
        };
    }
    let emit_chosen = |o: &mut Out<'_>| -> Result<(), DtbError> {
        for (i, (_, value)) in patch.chosen.iter().enumerate() {
            o.prop(chosen_offs[i], value)?;
        }
        Ok(())
    };

    let struct_at = o.len;
    let (mut pos, mut depth) = (0, 0u32);
    let (mut in_chosen, mut in_memory, mut seen_chosen) = (false, false, false);
    let (mut addr_cells, mut size_cells) = (2, 1);
    loop {
        match tree.next(&mut pos)? {
            Token::Begin(name) => {
                depth += 1;
                if depth == 2 {
                    in_chosen = name == "chosen";
                    in_memory = is_memory_node(name);
                    seen_chosen |= in_chosen;
                }
                o.begin(name)?;
            }
            Token::Prop(name, value) => {
                let name_off = tree.find_string(name).ok_or(DtbError::Truncated(pos))?;
                match (depth, name) {
                    (1, "#address-cells") => addr_cells = read_cells(value, 1) as u32,
                    (1, "#size-cells") => size_cells = read_cells(value, 1) as u32,
                    _ => {}
                }
                if depth == 2 && in_chosen && patch.chosen.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                match patch.carve {
                    Some(carve) if depth == 2 && in_memory && name == "reg" => {
                        o.carved_reg(name_off, value, (addr_cells, size_cells), carve)?
                    }
                    _ => o.prop(name_off, value)?,
                }
            }
            Token::End => {
                if depth == 2 && in_chosen {
                    emit_chosen(&mut o)?;
                }
                if depth == 1 && !seen_chosen && !patch.chosen.is_empty() {
                    o.begin("chosen")?;
                    emit_chosen(&mut o)?;
                    o.u32(END_NODE)?;
                }
                if depth == 2 {
                    in_chosen = false;
                    in_memory = false;
                }
                depth = depth.checked_sub(1).ok_or(DtbError::Unbalanced)?;
                o.u32(END_NODE)?;
            }
            Token::Nop => {}
            Token::EndTree => {
                if depth != 0 {
                    return Err(DtbError::Unbalanced);
                }
                o.u32(END)?;
                break;
            }
        }
    }
    let struct_len = o.len - struct_at;
    let strings_at = o.len;
    o.bytes(tree.strings)?;
    for (i, (name, _)) in patch.chosen.iter().enumerate() {
        if chosen_offs[i] == o.len - strings_at {
            o.bytes(name.as_bytes())?;
            o.bytes(&[0])?;
        }
    }
    let strings_len = o.len - strings_at;
    let total = o.len;
    for (at, v) in [
        (0, MAGIC),
        (TOTALSIZE, total as u32),
        (OFF_STRUCT, struct_at as u32),
        (OFF_STRINGS, strings_at as u32),
        (OFF_RSVMAP, rsv_at as u32),
        (VERSION, 17),
        (LAST_COMP_VERSION, 16),
        (BOOT_CPUID, tree.boot_cpuid),
        (SIZE_STRINGS, strings_len as u32),
        (SIZE_STRUCT, struct_len as u32),
    ] {
        o.set_u32(at, v);
    }
    Ok(total)
}
