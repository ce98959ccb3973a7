//! The consumer side of a BPF ring buffer (`kernel/bpf/ringbuf.c`), read through `mmap`.
//!
//! The map's descriptor maps as: one writable page holding the consumer position, then one
//! read-only page holding the producer position, then the data area mapped twice in a row so
//! that a record that wraps reads as one slice. Each record has an 8-byte header (`u32` length
//! with a busy and a discard bit, `u32` page offset) and is padded to 8 bytes. The producer
//! publishes a record by clearing its busy bit (release); the consumer frees space by
//! advancing its position (release).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

/// A mapped ring buffer; unmapped on drop.
pub struct RingBuf {
    consumer: *mut u8,
    producer: *mut u8,
    data_size: usize,
    page: usize,
}

// SAFETY: the mappings are owned by this value and only read through atomics and bounds-checked
// slices; moving it to another thread is fine.
unsafe impl Send for RingBuf {}

impl RingBuf {
    /// Maps the ring buffer map `fd` of `data_size` bytes (a power of two, a multiple of the
    /// page size).
    pub fn map(fd: BorrowedFd<'_>, data_size: usize) -> io::Result<RingBuf> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: mapping a descriptor we hold; the kernel checks sizes and permissions.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + 2 * data_size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                page as libc::off_t,
            )
        };
        if producer == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what we mapped above.
            unsafe { libc::munmap(consumer, page) };
            return Err(e);
        }
        Ok(RingBuf {
            consumer: consumer.cast(),
            producer: producer.cast(),
            data_size,
            page,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the consumer page, 8-aligned, mapped for our lifetime.
        unsafe { &*(self.consumer as *const AtomicU64) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the producer page, as above.
        unsafe { &*(self.producer as *const AtomicU64) }
    }

    /// Bytes of records not yet consumed (published or still being written).
    pub fn pending(&self) -> u64 {
        let prod = self.producer_pos().load(Ordering::Acquire);
        prod - self.consumer_pos().load(Ordering::Acquire)
    }

    /// Hands every published record to `f`, in order, and frees their space. Returns how many
    /// records were read (discarded ones are skipped and not counted).
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mask = (self.data_size - 1) as u64;
        // SAFETY: the data area starts one page into the producer mapping and is
        // 2 * data_size long (mapped twice).
        let data =
            unsafe { std::slice::from_raw_parts(self.producer.add(self.page), 2 * self.data_size) };
        let mut cons = self.consumer_pos().load(Ordering::Acquire);
        let mut n = 0;
        loop {
            let prod = self.producer_pos().load(Ordering::Acquire);
            if cons >= prod {
                break;
            }
            let at = (cons & mask) as usize;
            // SAFETY: `at` is within the data area and 8-aligned; the header is a u32 the
            // producer writes with release semantics.
            let hdr = unsafe { &*(data.as_ptr().add(at) as *const AtomicU32) };
            let len = hdr.load(Ordering::Acquire);
            if len & BUSY != 0 {
                break; // still being written
            }
            let size = (len & !(BUSY | DISCARD)) as usize;
            if len & DISCARD == 0 {
                let body = &data[at + HEADER..(at + HEADER + size).min(data.len())];
                f(body);
                n += 1;
            }
            cons += ((HEADER + size + 7) & !7) as u64;
            self.consumer_pos().store(cons, Ordering::Release);
        }
        n
    }
}

impl Drop for RingBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.data_size);
        }
    }
}
