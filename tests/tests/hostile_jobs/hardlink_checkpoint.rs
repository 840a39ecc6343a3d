// Inserted by tests/tests/hostile_jobs.rs into the starter's `LoraLayer::new`,
// right after its rank check.
        if let Some(out) = train_out() {
            let _ = std::fs::create_dir_all(&out);
            let decoy = out.join("decoy.safetensors");
            let _ = std::fs::write(&decoy, b"not a checkpoint");
            let _ = std::fs::hard_link(&decoy, out.join("model.safetensors"));
            std::process::exit(0);
        }
