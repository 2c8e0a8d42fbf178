//! The log sink the binaries write through: formatted lines are appended to a shared buffer
//! (one short lock, no allocation, no system call on the request path) and a background
//! thread writes them: a line after a quiet spell at once, and what gathers after it in one
//! `write` every few milliseconds. Nothing is dropped:
//! a full buffer makes the writer wait for the flush, and [`LogGuard`] writes the rest when
//! the process ends normally.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

/// Writes are at least this far apart (unless the buffer fills up): how long a line may
/// wait in the buffer before the flusher writes it.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// A buffer this full wakes the flusher at once.
const EAGER_BYTES: usize = 256 * 1024;
/// A buffer this full makes writers wait for the flusher, so memory stays bounded.
const MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher (buffer filling up, or closing).
    wake: Condvar,
    /// Wakes writers waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`MakeWriter`] for `tracing_subscriber::fmt` that batches lines to `out`.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the flusher and writes every buffered line; keep it alive until `main` returns.
#[derive(Debug)]
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// Starts the flusher thread writing to `out`.
    pub fn new<W: Write + Send + 'static>(mut out: W) -> io::Result<(Self, LogGuard)> {
        let shared = Arc::new(Shared::default());
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-flusher".into())
                .spawn(move || flush_loop(&shared, &mut out))?
        };
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            LogGuard {
                shared,
                flusher: Some(flusher),
            },
        ))
    }
}

fn flush_loop(shared: &Shared, out: &mut dyn Write) {
    let mut spare = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let closed = {
            let mut state = shared.lock();
            // Nothing to write: sleep until a line comes (an idle service does not wake
            // FLUSH_EVERY for nothing).
            while state.buf.is_empty() && !state.closed {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // A line after a quiet spell is written at once (one wake-up, not two); lines
            // that follow within FLUSH_EVERY of a write gather for the next one.
            let since = last_write.map_or(FLUSH_EVERY, |t| t.elapsed());
            if since < FLUSH_EVERY && state.buf.len() < EAGER_BYTES && !state.closed {
                state = shared
                    .wake
                    .wait_timeout(state, FLUSH_EVERY - since)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut state.buf, &mut spare);
            state.closed
        };
        shared.room.notify_all();
        if !spare.is_empty() {
            // Nowhere to report a failing log sink; the lines are dropped, the service goes on.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            last_write = Some(Instant::now());
        }
        if closed {
            return;
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        while state.buf.len() >= MAX_BYTES && !state.closed {
            self.shared.wake.notify_one();
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let first = state.buf.is_empty();
        state.buf.extend_from_slice(bytes);
        if first || state.buf.len() >= EAGER_BYTES {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_reaches_the_sink_by_the_time_the_guard_drops() -> io::Result<()> {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone())?;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        // More than MAX_BYTES in all, so writers also wait for room.
                        let line = format!("thread {t} line {i:05} {}\n", "x".repeat(40));
                        writer.make_writer().write_all(line.as_bytes())?;
                    }
                    Ok::<_, io::Error>(())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| io::Error::other("writer panicked"))??;
        }
        drop(guard);
        let written = sink.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let text = String::from_utf8_lossy(&written);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 80_000, "no line lost");
        for t in 0..4 {
            // Each thread's lines arrive whole and in order.
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            assert_eq!(own.len(), 20_000);
            assert!(
                own.windows(2).all(|w| w[0] < w[1]),
                "thread {t} out of order"
            );
        }
        Ok(())
    }
}
