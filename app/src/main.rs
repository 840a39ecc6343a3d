fn main() -> anyhow::Result<()> {
    sanhak::cli::main()
}
