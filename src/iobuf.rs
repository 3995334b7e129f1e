//! Page-aligned buffers for bulk reads and writes through the kernel.
//!
//! Why this exists: on AMD Zen 3 (the project's development and CI
//! machines, EPYC family 25, with FSRM), the kernel copies between user and
//! kernel memory with `rep movsb`, which runs several times slower when the
//! destination sits a few bytes past the source modulo 4,096 (a known
//! store-to-load aliasing penalty; glibc's `memcpy` avoids it in user space,
//! the kernel's `copy_to_user` does not). The page cache, pipe buffers and
//! the page fragments of Unix-socket buffers all start on a page boundary,
//! and a `Vec` of more than a few pages starts 16 bytes into its first page
//! (the allocator's chunk header), which is exactly the slow case.
//!
//! Measured on the development machine (BENCHMARKS.md, issue 14, "Aligned
//! I/O buffers"): reading a 1 GiB file in `/dev/shm` with 256 KiB reads ran
//! at 7.4 GB/s into a page-aligned buffer, 2.0 GB/s at offset 16 and
//! 1.4 GB/s at offsets 1-8; offsets of 32 and more were fast again. In
//! `pilotctl connect < file` that read was two thirds of the process's CPU.
//!
//! [`PageBuf`] is a zeroed byte buffer whose first byte is on a page
//! boundary. It is built in safe code: it over-allocates a page and starts
//! at the first aligned byte. Use it for the long-lived buffers that bulk
//! data is read into or written from; small and one-off buffers gain nothing.

use std::ops::{Deref, DerefMut};

/// The x86-64 and aarch64 base page size (the granule the penalty above is
/// measured in).
pub const PAGE: usize = 4096;

/// A zeroed, page-aligned byte buffer of a fixed length.
pub struct PageBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuf {
    /// A zeroed buffer of `len` bytes starting on a page boundary.
    pub fn new(len: usize) -> Self {
        let mem = vec![0u8; len + PAGE - 1];
        let start = (PAGE - mem.as_ptr() as usize % PAGE) % PAGE;
        PageBuf { mem, start, len }
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_page_and_has_the_asked_length() {
        for len in [0, 1, 100, PAGE - 1, PAGE, PAGE + 1, 256 * 1024] {
            let mut b = PageBuf::new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % PAGE, 0, "len {len}");
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
    }
}
