//! How a pool slot's memory returns to its snapshot between requests.
//!
//! Every request runs in a fresh instance, whose pool slot wasmtime resets
//! when the instance is dropped. Two ways are offered (`--slot-reset`):
//!
//! - **Whole region** (`whole-region`): the first `--keep-resident-mib` of
//!   the slot are copied back from the image after every request, whatever
//!   the request touched, and the rest is unmapped. Works on any Linux.
//! - **Dirty pages** (`dirty-pages`): wasmtime asks the kernel which pages
//!   the instance made private (`PAGEMAP_SCAN`, Linux 6.7 and later) and
//!   copies back only those, up to `--keep-resident-mib` of them. A Go
//!   hello writes about 110 pages, so the reset copies ~450 KiB instead of
//!   8 MiB, and the next instance in the slot takes no page fault.
//!
//! wasmtime 48's dirty-page reset keeps at most 32 runs of pages; from the
//! 33rd on it unmaps the rest of memory, so the next request faults it all
//! in again. Go scatters its writes (a hello dirties ~50 runs across 5 MiB),
//! so [`DirtyPages::prepare`] merges runs before each reset: it scans the
//! memory itself, with room for every run, and when there are more than
//! [`MERGE_ABOVE_RUNS`] it rewrites one byte (with its own value) in each
//! page of the smallest gaps between them. Those pages become private copies
//! holding the image's bytes, the runs join, and wasmtime resets them with
//! everything else. A merged page stays private while its slot keeps the
//! same module, so this costs a few faults once per slot, not per request.
//!
//! Scanning a slot's page tables costs about as much as the reset itself
//! (it walks every present page of memory, written or not), and wasmtime
//! scans them again for the reset. [`SlotScans`] skips the first scan when
//! the instance took no page fault: only a fault makes a page private, so
//! the slot's private pages are those its last scan found. A hello in a
//! warm slot takes none. Skipping it never weakens the reset, which rests
//! on wasmtime's own scan alone.
//!
//! The reset is only as good as the kernel's answer. A private page that
//! was swapped out is not reported as present, and wasmtime 48 neither
//! copies it back nor unmaps it, so the next instance could read what the
//! previous one wrote. `auto` therefore picks dirty pages only when swap is
//! off (`/proc/swaps` lists nothing) and the kernel answers a probe scan;
//! otherwise it falls back to the whole region and says why in the log.
//! Do not turn swap on under a running edge host.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// wasmtime 48 collects at most this many runs of dirty pages per reset.
const WASMTIME_SCAN_RUNS: usize = 32;

/// [`DirtyPages::prepare`] merges runs once there are more than this many,
/// leaving room under [`WASMTIME_SCAN_RUNS`] for places a later request
/// writes that this one did not.
pub const MERGE_ABOVE_RUNS: usize = 24;

/// What merging leaves, so that a handful of new runs later does not
/// trigger it again at once.
const MERGE_DOWN_TO_RUNS: usize = 16;

const _: () =
    assert!(MERGE_DOWN_TO_RUNS < MERGE_ABOVE_RUNS && MERGE_ABOVE_RUNS < WASMTIME_SCAN_RUNS);

const PAGE_SIZE: u64 = 4096;

/// How slots are reset, as asked for on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SlotReset {
    /// Dirty pages when the kernel can report them and swap is off;
    /// otherwise the whole region.
    #[default]
    Auto,
    /// Copy back only the pages each instance wrote; refuse to start when
    /// the kernel cannot report them or swap is on.
    DirtyPages,
    /// Copy back the whole kept region after every request.
    WholeRegion,
}

/// The reset a runner settled on, and why.
#[derive(Clone, Debug)]
pub struct ResetChoice {
    /// The page-map reader that readies each slot for its reset, when
    /// slots are reset by their dirty pages; `None` for the whole region.
    pub dirty_pages: Option<Arc<DirtyPages>>,
    /// Why, for the log.
    pub reason: String,
}

impl ResetChoice {
    /// The `--slot-reset` value this choice amounts to.
    pub fn strategy(&self) -> &'static str {
        match self.dirty_pages {
            Some(_) => "dirty-pages",
            None => "whole-region",
        }
    }
}

/// Why the dirty-page reset was asked for and cannot be had.
#[derive(Debug, thiserror::Error)]
#[error("--slot-reset dirty-pages is unavailable: {0}")]
pub struct Unavailable(String);

/// Settles `asked` against what this host offers; `keep_resident` is
/// wasmtime's budget for the dirty-page reset (see [`DirtyPages::open`]).
pub fn choose(asked: SlotReset, keep_resident: u64) -> Result<ResetChoice, Unavailable> {
    if asked == SlotReset::WholeRegion {
        return Ok(ResetChoice {
            dirty_pages: None,
            reason: "asked for".into(),
        });
    }
    let offered = match (DirtyPages::open(keep_resident), swap_in_use()) {
        (Err(e), _) => Err(format!("the kernel cannot scan page maps ({e})")),
        (Ok(_), Some(swap)) => Err(format!(
            "swap is on ({swap}), and a swapped-out page would escape the reset"
        )),
        (Ok(pages), None) => Ok(pages),
    };
    match (asked, offered) {
        (_, Ok(pages)) => Ok(ResetChoice {
            dirty_pages: Some(Arc::new(pages)),
            reason: "the kernel reports written pages and swap is off".into(),
        }),
        (SlotReset::DirtyPages, Err(why)) => Err(Unavailable(why)),
        (_, Err(why)) => Ok(ResetChoice {
            dirty_pages: None,
            reason: why,
        }),
    }
}

/// The first active swap area in `/proc/swaps`, if any.
fn swap_in_use() -> Option<String> {
    // Unreadable counts as on: the safe side.
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_else(|_| "?\n?".into());
    swaps
        .lines()
        .nth(1)
        .map(|line| line.split_whitespace().next().unwrap_or("?").to_string())
}

/// What [`DirtyPages::prepare`] found and did for one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetWork {
    /// Bytes the slot's reset copies back: every private page, merged
    /// ones included.
    pub bytes: u64,
    /// Runs of private pages wasmtime's scan will see.
    pub runs: usize,
    /// Pages made private now to merge runs.
    pub merged_pages: u64,
}

/// Reads which pages of a linear memory are private to its slot.
#[derive(Debug)]
pub struct DirtyPages {
    pagemap: File,
    budget_pages: u64,
}

impl DirtyPages {
    /// Opens this process's page map and checks that the kernel answers
    /// `PAGEMAP_SCAN`. `keep_resident` is wasmtime's budget: the most bytes
    /// it resets in place, so merging never grows the set past it.
    pub fn open(keep_resident: u64) -> std::io::Result<Self> {
        let pagemap = File::open("/proc/self/pagemap")?;
        scan::private_runs(&pagemap, 0..0)?;
        Ok(Self {
            pagemap,
            budget_pages: keep_resident / PAGE_SIZE,
        })
    }

    /// Merges the runs of private pages in `memory` (an instance's whole
    /// linear memory, which the instance no longer runs in) until
    /// wasmtime's reset holds them all, and reports what the reset will
    /// copy. Never changes a byte's value.
    pub fn prepare(&self, memory: &mut [u8]) -> std::io::Result<ResetWork> {
        let base = memory.as_ptr() as u64;
        let len = memory.len() as u64 / PAGE_SIZE * PAGE_SIZE;
        let runs = scan::private_runs(&self.pagemap, base..base + len)?;
        let private: u64 = runs.iter().map(|r| r.end - r.start).sum();
        let gaps = gaps_to_fill(&runs, self.budget_pages, private);
        let mut merged_pages = 0;
        for gap in &gaps {
            for page in gap.clone() {
                let offset = usize::try_from(page * PAGE_SIZE - base).expect("inside memory");
                let byte = &mut memory[offset];
                // A write of the byte's own value: the page becomes a
                // private copy of the image with its contents unchanged.
                // Volatile, so it is not dropped as a no-op.
                // SAFETY: `byte` is a valid, exclusive reference.
                unsafe { std::ptr::write_volatile(byte, std::ptr::read_volatile(byte)) };
                merged_pages += 1;
            }
        }
        Ok(ResetWork {
            bytes: (private + merged_pages) * PAGE_SIZE,
            runs: runs.len() - gaps.len(),
            merged_pages,
        })
    }
}

/// One function's [`DirtyPages`], with what each of its slots' last scan
/// found, so that an instance whose slot cannot have changed is not
/// scanned again.
#[derive(Debug)]
pub struct SlotScans {
    pages: Arc<DirtyPages>,
    /// By the address of the slot's linear memory. At most one entry per
    /// pool slot; another function's use of a slot in between maps the
    /// slot afresh, which the next instance of this one faults on.
    last: Mutex<HashMap<usize, ResetWork>>,
}

impl SlotScans {
    /// Nothing scanned yet.
    pub fn new(pages: Arc<DirtyPages>) -> Self {
        Self {
            pages,
            last: Mutex::default(),
        }
    }

    /// [`DirtyPages::prepare`], unless `unchanged` says that the instance
    /// made no page private (it took no page fault) and this slot was
    /// scanned before: then what that scan found, with nothing merged now.
    pub fn prepare(&self, memory: &mut [u8], unchanged: bool) -> std::io::Result<ResetWork> {
        let slot = memory.as_ptr() as usize;
        if unchanged && let Some(found) = self.last.lock().unwrap().get(&slot).copied() {
            return Ok(ResetWork {
                merged_pages: 0,
                ..found
            });
        }
        // Not locked while scanning: other slots' instances end meanwhile.
        let work = self.pages.prepare(memory)?;
        self.last.lock().unwrap().insert(slot, work);
        Ok(work)
    }
}

/// Page faults the calling thread has taken so far, minor and major;
/// `None` when the kernel does not say.
pub fn thread_page_faults() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `getrusage` fills the whole struct when it returns 0, and
    // only then is it read.
    let usage = unsafe {
        (libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) == 0).then(|| usage.assume_init())
    }?;
    Some(usage.ru_minflt as u64 + usage.ru_majflt as u64)
}

/// The gaps between `runs` (sorted, disjoint page ranges) to fill so that
/// at most [`MERGE_DOWN_TO_RUNS`] remain, smallest first, without growing
/// the `private` pages past `budget`. Nothing while there are at most
/// [`MERGE_ABOVE_RUNS`] runs.
fn gaps_to_fill(runs: &[Range<u64>], budget: u64, private: u64) -> Vec<Range<u64>> {
    if runs.len() <= MERGE_ABOVE_RUNS {
        return Vec::new();
    }
    let mut gaps: Vec<Range<u64>> = runs.windows(2).map(|w| w[0].end..w[1].start).collect();
    gaps.sort_by_key(|g| (g.end - g.start, g.start));
    let mut spent = private;
    let mut chosen = Vec::new();
    for gap in gaps {
        if runs.len() - chosen.len() <= MERGE_DOWN_TO_RUNS {
            break;
        }
        let cost = gap.end - gap.start;
        if spent + cost > budget {
            break;
        }
        spent += cost;
        chosen.push(gap);
    }
    chosen.sort_by_key(|g| g.start);
    chosen
}

/// The `PAGEMAP_SCAN` ioctl.
mod scan {
    use std::fs::File;
    use std::ops::Range;
    use std::os::fd::AsRawFd;

    use linux_raw_sys::general::{
        PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_WRITTEN, page_region, pm_scan_arg,
    };

    use super::PAGE_SIZE;

    /// `_IOWR('f', 16, struct pm_scan_arg)`.
    const PAGEMAP_SCAN: u64 =
        (3 << 30) | ((std::mem::size_of::<pm_scan_arg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

    /// The pages wasmtime's reset copies back: present, written, and
    /// neither the shared zero page nor a page of the image file (those
    /// were only read). The same query wasmtime makes.
    const MASK: u64 = (PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_FILE) as u64;
    const INVERTED: u64 = (PAGE_IS_PFNZERO | PAGE_IS_FILE) as u64;

    /// Regions read per call; the scan resumes where a full batch stopped.
    const BATCH: usize = 64;

    /// The runs of private pages within `range` (page-aligned addresses
    /// of this process), as sorted, disjoint, maximal page-number ranges.
    pub fn private_runs(pagemap: &File, range: Range<u64>) -> std::io::Result<Vec<Range<u64>>> {
        let mut runs: Vec<Range<u64>> = Vec::new();
        let mut regions = [page_region {
            start: 0,
            end: 0,
            categories: 0,
        }; BATCH];
        let mut start = range.start;
        loop {
            let mut arg = pm_scan_arg {
                size: std::mem::size_of::<pm_scan_arg>() as u64,
                flags: 0,
                start,
                end: range.end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: BATCH as u64,
                max_pages: 0,
                category_inverted: INVERTED,
                category_mask: MASK,
                category_anyof_mask: 0,
                return_mask: 0,
            };
            // SAFETY: PAGEMAP_SCAN only reads this process's page tables;
            // it writes `arg.walk_end` and at most `vec_len` entries of
            // `regions`, both valid and exclusively borrowed for the call.
            let found = unsafe {
                libc::ioctl(
                    pagemap.as_raw_fd(),
                    PAGEMAP_SCAN as _,
                    &mut arg as *mut pm_scan_arg,
                )
            };
            if found < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for region in &regions[..found as usize] {
                let pages = region.start / PAGE_SIZE..region.end / PAGE_SIZE;
                match runs.last_mut() {
                    // A batch boundary can split one run in two.
                    Some(last) if last.end == pages.start => last.end = pages.end,
                    _ => runs.push(pages),
                }
            }
            if arg.walk_end >= range.end || (found as usize) < BATCH {
                return Ok(runs);
            }
            start = arg.walk_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(count: u64, gap: impl Fn(u64) -> u64) -> Vec<Range<u64>> {
        let mut at = 0;
        (0..count)
            .map(|i| {
                let run = at..at + 1;
                at += 1 + gap(i);
                run
            })
            .collect()
    }

    #[test]
    fn few_runs_are_left_alone() {
        let few = runs(MERGE_ABOVE_RUNS as u64, |_| 5);
        assert!(gaps_to_fill(&few, 1 << 20, 24).is_empty());
    }

    #[test]
    fn many_runs_are_merged_through_their_smallest_gaps() {
        // Gaps of 1, 2, 3, ... pages.
        let many = runs(50, |i| i + 1);
        let filled = gaps_to_fill(&many, 1 << 20, 50);
        assert_eq!(many.len() - filled.len(), MERGE_DOWN_TO_RUNS);
        let sizes: Vec<u64> = filled.iter().map(|g| g.end - g.start).collect();
        let expected: Vec<u64> = (1..=(50 - MERGE_DOWN_TO_RUNS) as u64).collect();
        assert_eq!(sizes, expected, "smallest gaps first, in address order");
        // Every filled range lies strictly between two runs.
        for gap in &filled {
            assert!(many.iter().any(|r| r.end == gap.start));
            assert!(many.iter().any(|r| r.start == gap.end));
        }
    }

    #[test]
    fn merging_stays_within_the_budget() {
        let many = runs(50, |_| 10);
        let filled = gaps_to_fill(&many, 50 + 35, 50);
        assert_eq!(filled.len(), 3, "only three 10-page gaps fit in 35 pages");
    }

    /// A fresh private anonymous mapping of our own (a heap buffer could
    /// hold pages an earlier test wrote): untouched pages are absent, and
    /// written ones are private.
    struct Mapping {
        base: *mut libc::c_void,
        len: usize,
    }

    impl Mapping {
        fn new(pages: usize) -> Self {
            let len = pages * PAGE_SIZE as usize;
            // SAFETY: a new private anonymous mapping; no existing memory
            // is affected.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            Self { base, len }
        }

        fn memory(&mut self) -> &mut [u8] {
            // SAFETY: the mapping is `len` bytes, readable and writable,
            // and lives as long as `self`, which this borrow holds.
            unsafe { std::slice::from_raw_parts_mut(self.base.cast::<u8>(), self.len) }
        }

        fn write_pages(&mut self, pages: impl Iterator<Item = usize>) {
            let memory = self.memory();
            for page in pages {
                // Volatile, so that rewriting a page is not optimised away.
                // SAFETY: inside the mapping (indexing checks it).
                unsafe { std::ptr::write_volatile(&mut memory[page * PAGE_SIZE as usize], 1) };
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: nothing borrows the mapping once its owner drops.
            assert_eq!(unsafe { libc::munmap(self.base, self.len) }, 0);
        }
    }

    #[test]
    fn a_scan_finds_the_pages_written_in_a_fresh_mapping() {
        let pages = DirtyPages::open(1 << 30).expect("PAGEMAP_SCAN needs Linux 6.7 or later");
        let mut mapping = Mapping::new(64);
        mapping.write_pages((0..64).step_by(2));
        let work = pages.prepare(mapping.memory()).unwrap();
        assert_eq!(work.runs, MERGE_DOWN_TO_RUNS);
        assert_eq!(work.merged_pages, 32 - MERGE_DOWN_TO_RUNS as u64);
        assert_eq!(work.bytes, (32 + work.merged_pages) * PAGE_SIZE);
        let after = pages.prepare(mapping.memory()).unwrap();
        assert_eq!(after.merged_pages, 0, "merged pages stay private");
        assert_eq!(after.bytes, work.bytes);
    }

    #[test]
    fn only_a_page_fault_makes_a_page_private() {
        // What lets `SlotScans` skip a scan: rewriting private pages takes
        // no fault, and making a new page private takes one.
        let mut mapping = Mapping::new(16);
        let before = thread_page_faults().expect("the kernel counts page faults");
        mapping.write_pages(0..8);
        let first_touch = thread_page_faults().unwrap() - before;
        assert!(first_touch >= 8, "{first_touch} faults for 8 new pages");
        let before = thread_page_faults().unwrap();
        mapping.write_pages(0..8);
        assert_eq!(thread_page_faults().unwrap() - before, 0);
        mapping.write_pages(8..9);
        assert!(thread_page_faults().unwrap() - before >= 1);
    }

    #[test]
    fn a_slot_is_scanned_again_only_after_a_fault() {
        let scans = SlotScans::new(Arc::new(DirtyPages::open(1 << 30).unwrap()));
        let mut mapping = Mapping::new(64);
        mapping.write_pages(0..4);
        // Never scanned: scanned whatever the instance says.
        let first = scans.prepare(mapping.memory(), true).unwrap();
        assert_eq!(first.bytes, 4 * PAGE_SIZE);
        // Four more private pages, but reported as unchanged: the scan is
        // skipped, so it still says four. (An instance never lies here:
        // these pages took faults.)
        mapping.write_pages(10..14);
        assert_eq!(scans.prepare(mapping.memory(), true).unwrap(), first);
        let rescanned = scans.prepare(mapping.memory(), false).unwrap();
        assert_eq!(rescanned.bytes, 8 * PAGE_SIZE);
        assert_eq!(rescanned.runs, 2);
        // Another slot of the same function has a scan of its own.
        let mut other = Mapping::new(8);
        other.write_pages(0..1);
        assert_eq!(
            scans.prepare(other.memory(), true).unwrap().bytes,
            PAGE_SIZE
        );
    }
}
