//! Background tasks that belong to a component and end with it.

use tokio::task::JoinHandle;

/// A component's tasks, aborted when it is dropped.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub fn new(tasks: Vec<JoinHandle<()>>) -> Self {
        Self(tasks)
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
