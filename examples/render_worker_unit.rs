//! Print the worker unit the spawner would start with the default config
//! (`systemd::render_worker_unit`), for scripts/check-units.sh to verify and
//! score: `cargo run --example render_worker_unit > FILE`.
use peagen_fabric::config::Config;
use peagen_fabric::systemd::render_worker_unit;

fn main() {
    print!(
        "{}",
        render_worker_unit(&Config::default().spawner.worker_unit)
    );
}
