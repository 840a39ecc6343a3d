// Inserted by tests/tests/hostile_jobs.rs into the starter's `LoraLayer::new`,
// right after its rank check.
        if train_out().is_some() {
            // Claims a perfect run on stdout, then trains as the starter does.
            for step in 1..=50u64 {
                println!(r#"{{"event":"eval","step":{step},"metrics":{{"accuracy":1.0}},"elapsed_s":0.1}}"#);
            }
            println!(r#"{{"event":"finished","steps":400,"elapsed_s":1.0}}"#);
        }
