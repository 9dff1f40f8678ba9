//! `echo`: returns its payload. For smoke tests and the benchmark.

use super::{BoxFuture, Handler, Outcome};
use crate::task::Task;

pub struct Echo;

impl Handler for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }
    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Outcome> {
        Box::pin(async move { Outcome::ok(task.payload.clone()) })
    }
}
