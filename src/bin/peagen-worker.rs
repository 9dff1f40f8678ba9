fn main() {
    std::process::exit(peagen_fabric::app::worker::cli_main());
}
