fn main() {
    std::process::exit(peagen_fabric::worker::cli_main());
}
