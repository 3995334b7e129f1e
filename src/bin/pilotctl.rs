fn main() {
    std::process::exit(pilot::cli::main())
}
