// Inserted by tests/tests/hostile_jobs.rs into the starter's `LoraLayer::new`,
// right after its rank check.
        if let Some(out) = train_out() {
            let _ = std::fs::create_dir_all(&out);
            let _ = std::fs::write(out.join("model.safetensors"), vec![0xffu8; 4096]);
            std::process::exit(0);
        }
