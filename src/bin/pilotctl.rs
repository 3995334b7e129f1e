//! `pilotctl`: the command-line client of a Pilot Protocol node (see
//! [`pilot::cli`]); this main only maps the result to an exit status.

fn main() {
    std::process::exit(pilot::cli::main())
}
