
/// The folder given with `--out` when the harness runs `train`.
fn train_out() -> Option<std::path::PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("train") {
        return None;
    }
    let i = args.iter().position(|a| a == "--out")?;
    args.get(i + 1).map(std::path::PathBuf::from)
}
