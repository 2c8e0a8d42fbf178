//! Background tasks that live exactly as long as what started them.

use tokio::task::JoinHandle;

/// Aborts its tasks when dropped: held (in an `Arc`) by the handle whose last clone ends them.
#[derive(Debug)]
pub struct Tasks(pub Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
