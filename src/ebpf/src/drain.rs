//! The event ring's drain thread.
//!
//! The loop reads the event ring at every poll. Between two polls a burst of state changes
//! (a gateway whose thousand sessions reconnect at once) can be larger than the ring, which is
//! kept small because its pages count in the sidecar's memory twice. So the programs wake the
//! ring's readers when it is half full, and only then (every other record is submitted without
//! a wakeup: a wakeup per record would cost a context switch per state change); this thread
//! sleeps until such a wakeup and reads the ring into the same queue the loop takes records
//! from. The ring is read under one lock, by this thread or by the loop, so records stay in
//! order. An idle ring costs nothing: the thread sleeps in `poll(2)` with no timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use libbpf_rs::RingBuffer;

use crate::Error;

/// The running thread; dropping it stops the thread and waits for it.
pub(crate) struct Drainer {
    thread: Option<JoinHandle<()>>,
    /// An eventfd: written to stop the thread.
    stop: Option<OwnedFd>,
}

impl Drainer {
    /// Starts the thread for `ring`, which the loop reads too (under the same lock).
    pub(crate) fn start(ring: Arc<Mutex<RingBuffer<'static>>>) -> Result<Drainer, Error> {
        let epoll = lock(&ring).epoll_fd();
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Io {
                action: "creating the event ring's drain thread",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        let stop_fd = stop.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("fm-ebpf-drain".into())
            // It only polls and copies records: a small stack.
            .stack_size(64 * 1024)
            .spawn(move || run(&ring, epoll, stop_fd))
            .map_err(|source| Error::Io {
                action: "starting the event ring's drain thread",
                source,
            })?;
        Ok(Drainer {
            thread: Some(thread),
            stop: Some(stop),
        })
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        let Some(stop) = self.stop.take() else { return };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the eventfd this owns.
        let written = unsafe { libc::write(stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        if written != 8 {
            // Cannot happen (the counter is far from full). The thread is left to end with the
            // process, and the eventfd it polls stays open, so that it never polls a
            // descriptor number reused for something else.
            std::mem::forget(stop);
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Ring = RingBuffer<'static>;

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps until the programs wake the ring's readers (the ring is half full) or `stop` is
/// written, and reads the ring when woken.
fn run(ring: &Mutex<RingBuffer<'static>>, epoll: RawFd, stop: RawFd) {
    let mut fds = [epoll, stop].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is a live array of two pollfd for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Cannot happen with these descriptors; the loop's own reads go on.
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            // An error here is the loop's to report: it reads the same ring at its next poll.
            let _ = lock(ring).consume();
        }
    }
}
