//! Page-state arrays on the host's transparent huge pages.
//!
//! A touch reads one random entry of an array of hundreds of MiB: with 4 KiB host pages
//! nearly every touch also misses the TLB and walks the host's page table. Asking for huge
//! pages (madvise(MADV_HUGEPAGE), which matters where THP is `madvise`, Debian's default)
//! before the array is first written covers it with a few hundred TLB entries.

/// Makes room in `v` for exactly `additional` more elements, the new memory advised for
/// huge pages before anything writes it.
pub fn reserve_exact_huge<T>(v: &mut Vec<T>, additional: usize) {
    if v.len() + additional > v.capacity() {
        v.reserve_exact(additional);
        advise_huge(v.as_ptr().cast(), v.capacity() * std::mem::size_of::<T>());
    }
}

/// The host page size THP maps (x86-64 and arm64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *const u8, bytes: usize) {
    if bytes < HUGE_PAGE {
        return;
    }
    // madvise() wants a page-aligned start; the page before the array belongs to the same
    // allocation's mapping (a large allocation is a mapping of its own) or to the heap,
    // neither harmed by the advice.
    let start = ptr as usize & !4095;
    let len = ptr as usize + bytes - start;
    // SAFETY: MADV_HUGEPAGE changes how the host backs the range, never its contents; the
    // range lies in mappings this process owns. A kernel without THP returns EINVAL, which
    // leaves 4 KiB pages: only slower.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_: *const u8, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_exactly_and_keeps_the_contents() {
        let mut v: Vec<u16> = vec![3; 5];
        reserve_exact_huge(&mut v, 3 << 20);
        assert_eq!(v, [3; 5]);
        assert!(v.capacity() >= 5 + (3 << 20));
        let cap = v.capacity();
        v.resize(5 + (3 << 20), 7);
        assert_eq!(v.capacity(), cap, "no reallocation within the reservation");
        assert_eq!(&v[..6], &[3, 3, 3, 3, 3, 7]);
    }
}
