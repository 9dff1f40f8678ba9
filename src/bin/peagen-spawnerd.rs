fn main() {
    std::process::exit(peagen_fabric::spawner::cli_main());
}
