//! Results of Rust tasks, handed to an event loop in batches.
//!
//! Tasks on the tokio runtime [`push`](CompletionQueue::push) their results here; an event loop
//! watches [`wake_fd`](CompletionQueue::wake_fd) (`loop.add_reader`) and
//! [`drain`](CompletionQueue::drain)s every finished result at once on its own thread. A task
//! thread never needs the event loop's lock (for Python, the GIL): it appends to a vector and,
//! when the queue goes from idle to pending, writes one byte to a socket.

use std::{
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

/// A multi-producer queue of `(token, result)` pairs with a readable wake-up descriptor.
#[derive(Debug)]
pub struct CompletionQueue<T> {
    items: Mutex<Vec<(u64, T)>>,
    /// Whether a wake-up byte is outstanding; at most one is, so the socket never fills.
    signalled: AtomicBool,
    wake_reader: UnixStream,
    wake_writer: UnixStream,
    next_token: AtomicU64,
}

impl<T> CompletionQueue<T> {
    /// An empty queue.
    ///
    /// # Errors
    /// When the operating system refuses a socket pair.
    pub fn new() -> io::Result<Self> {
        let (wake_reader, wake_writer) = UnixStream::pair()?;
        wake_reader.set_nonblocking(true)?;
        wake_writer.set_nonblocking(true)?;
        Ok(Self {
            items: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            wake_reader,
            wake_writer,
            next_token: AtomicU64::new(1),
        })
    }

    /// A token no other task of this queue has.
    pub fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// The descriptor that becomes readable when results are pending.
    pub fn wake_fd(&self) -> RawFd {
        self.wake_reader.as_raw_fd()
    }

    /// Adds a result and makes the wake-up descriptor readable if it was not.
    pub fn push(&self, token: u64, item: T) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((token, item));
        // The item is in before the byte goes out, so whoever reads the byte finds the item.
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A full socket or a closed reader only means nobody needs another wake-up.
            let _ = (&self.wake_writer).write(&[1]);
        }
    }

    /// Takes every pending result, oldest first, and consumes the wake-up.
    pub fn drain(&self) -> Vec<(u64, T)> {
        // Order matters. Consume the byte, then clear the flag, then take the items: a push that
        // finds the flag set has its item taken below; a push after the flag is cleared writes a
        // fresh byte. (Clearing before consuming could eat that fresh byte and leave the flag
        // set with nothing to read: a wake-up lost for good.)
        let mut sink = [0u8; 64];
        while matches!((&self.wake_reader).read(&mut sink), Ok(n) if n > 0) {}
        self.signalled.store(false, Ordering::Release);
        std::mem::take(&mut *self.items.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread, time::Duration};

    use super::*;

    /// Wake-up bytes waiting on the socket, consumed.
    fn wake_ups(queue: &CompletionQueue<u32>) -> usize {
        let mut buf = [0u8; 64];
        match (&queue.wake_reader).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    /// Blocks until the wake-up descriptor is readable, without consuming anything, as an event
    /// loop's poll does. False on timeout.
    fn sleep_until_readable<T>(queue: &CompletionQueue<T>, timeout_ms: i32) -> bool {
        let mut fd = libc::pollfd {
            fd: queue.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        #[allow(unsafe_code)]
        let ready = unsafe { libc::poll(&raw mut fd, 1, timeout_ms) };
        ready == 1
    }

    #[test]
    fn one_wake_up_per_batch() {
        let queue = CompletionQueue::new().unwrap();
        assert_eq!(wake_ups(&queue), 0);
        queue.push(1, 10);
        queue.push(2, 20);
        queue.push(3, 30);
        assert_eq!(wake_ups(&queue), 1);
        assert_eq!(queue.drain(), [(1, 10), (2, 20), (3, 30)]);
        assert!(queue.drain().is_empty());
        queue.push(4, 40);
        assert_eq!(queue.drain(), [(4, 40)]);
        assert_eq!(wake_ups(&queue), 0, "drain consumes the wake-up");
        queue.push(5, 50);
        assert_eq!(wake_ups(&queue), 1);
    }

    #[test]
    fn tokens_are_unique() {
        let queue = CompletionQueue::<()>::new().unwrap();
        let a = queue.next_token();
        let b = queue.next_token();
        assert_ne!(a, b);
    }

    /// Producers on many threads; a consumer that sleeps on the descriptor as an event loop
    /// does, then drains: every result arrives once, and no wake-up is ever missed (a missed
    /// one leaves the consumer asleep with results pending, and the read times out).
    #[test]
    fn no_result_is_lost_and_no_wake_up_is_missed() {
        const PRODUCERS: u32 = 4;
        const EACH: u32 = 250_000;
        let queue = Arc::new(CompletionQueue::new().unwrap());
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let queue = Arc::clone(&queue);
                thread::spawn(move || {
                    for i in 0..EACH {
                        queue.push(u64::from(p * EACH + i), p);
                        if i % 1000 == 0 {
                            thread::sleep(Duration::from_micros(50));
                        }
                    }
                })
            })
            .collect();
        let mut seen = vec![false; (PRODUCERS * EACH) as usize];
        let mut received = 0;
        while received < PRODUCERS * EACH {
            assert!(
                sleep_until_readable(&queue, 10_000),
                "asleep with {} results never announced",
                queue.items.lock().unwrap().len()
            );
            for (token, _) in queue.drain() {
                let slot = &mut seen[usize::try_from(token).unwrap()];
                assert!(!*slot, "token {token} delivered twice");
                *slot = true;
                received += 1;
            }
        }
        for producer in producers {
            producer.join().unwrap();
        }
        assert!(seen.iter().all(|&s| s));
        assert!(queue.drain().is_empty());
    }
}
