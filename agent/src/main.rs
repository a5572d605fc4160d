fn main() {
    std::process::exit(otter::cli::main());
}
