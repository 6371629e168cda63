//! The page-ownership tracker: who owns each 4 KiB page of RAM, with whom
//! the host shares it, and how many host DMA mappings pin it.
//!
//! Pure bookkeeping, no hardware: every request is validated over its whole
//! range first and applied only when every page passes, so a refused
//! request changes nothing. The shadow stage 2 follows what this says.
//! Every page's state, pin count included, is allocated once up front, so
//! no request allocates.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::Error;
use crate::memmap::{MemoryMap, PAGE};

/// Who owns a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// The host (mapped in the shadow stage 2: its devices may reach it).
    Host,
    /// The hypervisor.
    Hyp,
    /// Guest (protected VM) `n`.
    Guest(u16),
}

/// With whom the host shares one of its pages (ownership stays with the
/// host; the SMMU view does not change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShareTarget {
    /// The hypervisor.
    Hyp,
    /// Guest `n`.
    Guest(u16),
}

/// Largest guest ID (the tag space is 16 bits, two tags are taken).
pub const MAX_GUEST: u16 = u16::MAX - 2;

/// A page's owner and share, packed: low half owner tag, high half share
/// tag. Tag 0 host / no share, 1 hypervisor, 2 + n guest n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed(u32);

impl Packed {
    const HOST: Self = Self(0);
    const HYP: Self = Self(1);

    fn owner(self) -> Owner {
        match self.0 as u16 {
            0 => Owner::Host,
            1 => Owner::Hyp,
            t => Owner::Guest(t - 2),
        }
    }

    fn share(self) -> Option<ShareTarget> {
        match (self.0 >> 16) as u16 {
            0 => None,
            1 => Some(ShareTarget::Hyp),
            t => Some(ShareTarget::Guest(t - 2)),
        }
    }

    fn with_owner(o: Owner) -> Self {
        Self(match o {
            Owner::Host => 0,
            Owner::Hyp => 1,
            Owner::Guest(n) => u32::from(n) + 2,
        })
    }

    fn with_share(self, s: Option<ShareTarget>) -> Self {
        let tag = match s {
            None => 0,
            Some(ShareTarget::Hyp) => 1,
            Some(ShareTarget::Guest(n)) => u32::from(n) + 2,
        };
        Self((self.0 & 0xffff) | tag << 16)
    }
}

/// One RAM range's pages.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bank {
    base: u64,
    pages: Vec<Packed>,
    /// DMA mapping count of each page: allocated with the bank, so that
    /// pinning every page cannot exhaust the hypervisor's heap.
    pins: Vec<u32>,
}

/// What a validated request will do to each page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// New owner.
    Own(Owner),
    /// New share state.
    Share(Option<ShareTarget>),
}

/// The page-ownership tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    banks: Vec<Bank>,
    /// Pages with at least one DMA mapping.
    pinned: usize,
}

/// A validated range inside one bank: bank index, first page index, pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    bank: usize,
    first: usize,
    count: usize,
}

impl Ownership {
    /// Returns a tracker for `map`: RAM owned by the host, the hypervisor's
    /// ranges owned by the hypervisor.
    pub fn new(map: &MemoryMap) -> Self {
        let mut banks: Vec<Bank> = map
            .ram()
            .iter()
            .map(|r| Bank {
                base: r.base,
                pages: vec![Packed::HOST; (r.len / PAGE) as usize],
                pins: vec![0; (r.len / PAGE) as usize],
            })
            .collect();
        for h in map.hyp() {
            for b in &mut banks {
                let end = b.base + (b.pages.len() as u64) * PAGE;
                if h.base >= b.base && h.base + h.len <= end {
                    let i = ((h.base - b.base) / PAGE) as usize;
                    let n = (h.len / PAGE) as usize;
                    b.pages[i..i + n].fill(Packed::HYP);
                }
            }
        }
        Self { banks, pinned: 0 }
    }

    /// Returns the owner of the page holding `addr`, or `None` outside RAM.
    pub fn owner(&self, addr: u64) -> Option<Owner> {
        self.packed(addr).map(Packed::owner)
    }

    /// Returns with whom the page holding `addr` is shared.
    pub fn share(&self, addr: u64) -> Option<ShareTarget> {
        self.packed(addr).and_then(Packed::share)
    }

    /// Returns the DMA mapping count of the page holding `addr`.
    pub fn pins(&self, addr: u64) -> u32 {
        match self.bank_of(addr) {
            Some(b) => {
                let bank = &self.banks[b];
                bank.pins[((addr - bank.base) / PAGE) as usize]
            }
            None => 0,
        }
    }

    /// Returns how many pages are pinned (at least one DMA mapping).
    pub fn pinned_pages(&self) -> usize {
        self.pinned
    }

    /// Returns how many pages `owner` owns.
    pub fn count(&self, owner: Owner) -> u64 {
        self.banks
            .iter()
            .flat_map(|b| b.pages.iter())
            .filter(|p| p.owner() == owner)
            .count() as u64
    }

    fn packed(&self, addr: u64) -> Option<Packed> {
        let b = self.bank_of(addr)?;
        let bank = &self.banks[b];
        Some(bank.pages[((addr - bank.base) / PAGE) as usize])
    }

    fn bank_of(&self, addr: u64) -> Option<usize> {
        self.banks
            .iter()
            .position(|b| addr >= b.base && addr - b.base < (b.pages.len() as u64) * PAGE)
    }

    /// Returns the span of `[addr, addr + len)`, which must be aligned,
    /// non-empty and inside one RAM range.
    pub(crate) fn span(&self, addr: u64, len: u64) -> Result<Span, Error> {
        if addr % PAGE != 0 {
            return Err(Error::Unaligned(addr));
        }
        if len % PAGE != 0 {
            return Err(Error::Unaligned(len));
        }
        if len == 0 {
            return Err(Error::Empty);
        }
        let end = addr.checked_add(len).ok_or(Error::Overflow)?;
        let b = self.bank_of(addr).ok_or(Error::NotRam(addr))?;
        let bank = &self.banks[b];
        let bank_end = bank.base + (bank.pages.len() as u64) * PAGE;
        if end > bank_end {
            return Err(Error::NotRam(bank_end));
        }
        Ok(Span {
            bank: b,
            first: ((addr - bank.base) / PAGE) as usize,
            count: (len / PAGE) as usize,
        })
    }

    fn pages(&self, s: Span) -> impl Iterator<Item = (u64, Packed)> + '_ {
        let bank = &self.banks[s.bank];
        bank.pages[s.first..s.first + s.count]
            .iter()
            .enumerate()
            .map(move |(k, p)| (bank.base + ((s.first + k) as u64) * PAGE, *p))
    }

    /// Checks that every page of `s` is the host's, unshared and unpinned:
    /// what a donation needs.
    pub(crate) fn check_donate(&self, s: Span) -> Result<(), Error> {
        let bank = &self.banks[s.bank];
        let pages = &bank.pages[s.first..s.first + s.count];
        let pins = &bank.pins[s.first..s.first + s.count];
        let addr = |k: usize| bank.base + ((s.first + k) as u64) * PAGE;
        // Two flat scans instead of one per-page test of all three: the
        // first page neither the host's nor unshared (`Packed::HOST` is
        // both), then any pin before it, which comes first.
        let bad = first_set(pages, |p| p.0);
        let upto = bad.unwrap_or(s.count);
        if let Some(k) = first_set(&pins[..upto], |c| c) {
            return Err(Error::Pinned {
                addr: addr(k),
                pins: pins[k],
            });
        }
        let Some(k) = bad else {
            return Ok(());
        };
        let p = pages[k];
        match p.share() {
            Some(with) if p.owner() == Owner::Host => Err(Error::Shared {
                addr: addr(k),
                with,
            }),
            // Not the host's (owner host and no share is `HOST` itself).
            _ => Err(Error::WrongOwner {
                addr: addr(k),
                owner: p.owner(),
                expected: Owner::Host,
            }),
        }
    }

    /// Checks that every page of `s` is owned by `owner`.
    pub(crate) fn check_owner(&self, s: Span, owner: Owner) -> Result<(), Error> {
        match self.pages(s).find(|(_, p)| p.owner() != owner) {
            Some((addr, p)) => Err(Error::WrongOwner {
                addr,
                owner: p.owner(),
                expected: owner,
            }),
            None => Ok(()),
        }
    }

    /// Checks that `s` can be shared with `with`: host-owned and unshared.
    pub(crate) fn check_share(&self, s: Span) -> Result<(), Error> {
        self.check_owner(s, Owner::Host)?;
        match self.pages(s).find_map(|(a, p)| p.share().map(|w| (a, w))) {
            Some((addr, with)) => Err(Error::Shared { addr, with }),
            None => Ok(()),
        }
    }

    /// Checks that every page of `s` is shared with `with`.
    pub(crate) fn check_unshare(&self, s: Span, with: ShareTarget) -> Result<(), Error> {
        match self.pages(s).find(|(_, p)| p.share() != Some(with)) {
            Some((addr, _)) => Err(Error::NotShared(addr)),
            None => Ok(()),
        }
    }

    /// Applies `change` to every page of `s` (validated by the caller).
    pub(crate) fn apply(&mut self, s: Span, change: Change) {
        let pages = &mut self.banks[s.bank].pages[s.first..s.first + s.count];
        for p in pages {
            *p = match change {
                Change::Own(o) => Packed::with_owner(o),
                Change::Share(t) => p.with_share(t),
            };
        }
    }

    /// Adds one DMA mapping to every page of `s`, which must be host-owned.
    pub(crate) fn pin(&mut self, s: Span) -> Result<(), Error> {
        self.check_owner(s, Owner::Host)?;
        let bank = &mut self.banks[s.bank];
        let base = bank.base;
        let pins = &mut bank.pins[s.first..s.first + s.count];
        if let Some(k) = pins.iter().position(|&c| c == u32::MAX) {
            return Err(Error::PinOverflow(base + ((s.first + k) as u64) * PAGE));
        }
        for c in pins {
            self.pinned += usize::from(*c == 0);
            *c += 1;
        }
        Ok(())
    }

    /// Drops one DMA mapping from every page of `s`.
    pub(crate) fn unpin(&mut self, s: Span) -> Result<(), Error> {
        let bank = &mut self.banks[s.bank];
        let base = bank.base;
        let pins = &mut bank.pins[s.first..s.first + s.count];
        if let Some(k) = pins.iter().position(|&c| c == 0) {
            return Err(Error::NotPinned(base + ((s.first + k) as u64) * PAGE));
        }
        for c in pins {
            *c -= 1;
            self.pinned -= usize::from(*c == 0);
        }
        Ok(())
    }
}

/// Returns the index of the first element whose `bits` are not zero.
///
/// A chunk at a time, OR-ed together (which vectorizes), then the one
/// chunk with a set element searched: a donation checks every page.
fn first_set<T: Copy>(xs: &[T], bits: impl Fn(T) -> u32) -> Option<usize> {
    const CHUNK: usize = 32;
    let mut base = 0;
    for c in xs.chunks(CHUNK) {
        if c.iter().fold(0, |a, &x| a | bits(x)) != 0 {
            return c.iter().position(|&x| bits(x) != 0).map(|k| base + k);
        }
        base += c.len();
    }
    None
}

/// Returns an error when `guest` cannot be represented.
pub(crate) fn check_guest(guest: u16) -> Result<(), Error> {
    if guest > MAX_GUEST {
        Err(Error::BadGuest(guest))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_count_at_its_limit_refuses_another_pin_and_changes_nothing() {
        let map = MemoryMap::new(
            &[crate::memmap::Range::new(0x4000_0000, 4 * PAGE)],
            &[],
            &[],
        )
        .unwrap();
        let mut o = Ownership::new(&map);
        let all = o.span(0x4000_0000, 4 * PAGE).unwrap();
        o.pin(all).unwrap();
        // Four billion pins are not counted one by one here.
        o.banks[0].pins[2] = u32::MAX;
        let before = o.clone();
        assert_eq!(o.pin(all), Err(Error::PinOverflow(0x4000_2000)));
        assert_eq!(o, before);
        assert_eq!(o.pins(0x4000_0000), 1);
        o.unpin(all).unwrap();
        assert_eq!(o.pins(0x4000_2000), u32::MAX - 1);
        assert_eq!(o.pinned_pages(), 1);
    }

    #[test]
    fn a_donation_check_names_the_first_offending_page_whatever_its_fault() {
        let base = 0x4000_0000;
        let map = MemoryMap::new(&[crate::memmap::Range::new(base, 200 * PAGE)], &[], &[]).unwrap();
        let mut o = Ownership::new(&map);
        let span = |o: &Ownership, k: u64, n: u64| o.span(base + k * PAGE, n * PAGE).unwrap();
        // Past the first chunk of the scans, and one page each: pinned at
        // 70, a guest's at 100, shared at 130.
        o.pin(span(&o, 70, 1)).unwrap();
        o.apply(span(&o, 100, 1), Change::Own(Owner::Guest(4)));
        o.apply(span(&o, 130, 1), Change::Share(Some(ShareTarget::Hyp)));
        let pinned = Error::Pinned {
            addr: base + 70 * PAGE,
            pins: 1,
        };
        let guest = Error::WrongOwner {
            addr: base + 100 * PAGE,
            owner: Owner::Guest(4),
            expected: Owner::Host,
        };
        let shared = Error::Shared {
            addr: base + 130 * PAGE,
            with: ShareTarget::Hyp,
        };
        assert_eq!(o.check_donate(span(&o, 0, 200)), Err(pinned));
        assert_eq!(o.check_donate(span(&o, 71, 129)), Err(guest));
        assert_eq!(o.check_donate(span(&o, 101, 99)), Err(shared));
        assert_eq!(o.check_donate(span(&o, 131, 69)), Ok(()));
        assert_eq!(o.check_donate(span(&o, 0, 70)), Ok(()));
        // A page both pinned and a guest's is never made; a pinned page
        // shared is: the share is named first, as before.
        o.pin(span(&o, 130, 1)).unwrap();
        assert_eq!(o.check_donate(span(&o, 101, 99)), Err(shared));
    }

    #[test]
    fn packing_round_trips() {
        for o in [
            Owner::Host,
            Owner::Hyp,
            Owner::Guest(0),
            Owner::Guest(MAX_GUEST),
        ] {
            for s in [None, Some(ShareTarget::Hyp), Some(ShareTarget::Guest(7))] {
                let p = Packed::with_owner(o).with_share(s);
                assert_eq!((p.owner(), p.share()), (o, s));
            }
        }
    }
}
