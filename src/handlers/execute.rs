//! `execute`: untrusted code in the sandbox. (Implemented by the sandbox work.)

use super::{BoxFuture, Handler, Outcome};
use crate::config::SandboxConfig;
use crate::task::Task;

pub struct Execute {
    #[allow(dead_code)]
    cfg: SandboxConfig,
}

impl Execute {
    pub fn new(cfg: SandboxConfig) -> Self {
        Execute { cfg }
    }
}

impl Handler for Execute {
    fn name(&self) -> &str {
        "execute"
    }
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }
    fn run<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, Outcome> {
        Box::pin(async move { Outcome::error("execute handler not built yet", false) })
    }
}
