fn main() {
    eprintln!("otter-boot: not built yet");
    std::process::exit(2);
}
