fn main() {
    std::process::exit(fleet_cli::main(std::env::args_os()));
}
