//! `command`: maps a task kind to a configured program. (Filled in next.)
use super::{BoxFuture, Handler, Outcome};
use crate::config::{CommandHandlerConfig, SandboxConfig};
use crate::task::Task;

pub struct Command {
    cfg: CommandHandlerConfig,
    #[allow(dead_code)]
    sandbox: SandboxConfig,
}

impl Command {
    pub fn new(cfg: CommandHandlerConfig, sandbox: SandboxConfig) -> Self {
        Command { cfg, sandbox }
    }
}

impl Handler for Command {
    fn name(&self) -> &str {
        "command"
    }
    fn version(&self) -> &str {
        &self.cfg.version
    }
    fn run<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, Outcome> {
        Box::pin(async move { Outcome::error("not built yet", false) })
    }
}
