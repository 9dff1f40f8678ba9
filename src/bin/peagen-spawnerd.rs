fn main() {
    std::process::exit(peagen_fabric::app::spawnerd::cli_main());
}
