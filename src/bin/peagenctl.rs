fn main() {
    std::process::exit(peagen_fabric::ctl::cli_main());
}
