// Inserted by tests/tests/hostile_jobs.rs into the starter's `LoraLayer::new`,
// right after its rank check.
        if let Some(out) = train_out() {
            let _ = std::fs::create_dir_all(&out);
            let _ = std::os::unix::fs::symlink("/etc/passwd", out.join("model.safetensors"));
            std::process::exit(0);
        }
