// Temporary (not committed): quick measurements for the report.
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::{rngs::StdRng, SeedableRng};
use sanhak_runner::nn::{bert, gpt, init};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dev = Device::Cpu;
    match args.get(1).map(String::as_str) {
        Some("gpt") => {
            let train = std::fs::read("labs/korean-lm-adapt/data/base_train.txt")?;
            let valid = std::fs::read("labs/korean-lm-adapt/data/base_valid.txt")?;
            let adapt = std::fs::read("labs/korean-lm-adapt/data/adapt_valid.txt")?;
            let cfg = gpt::GptConfig { vocab_size: 256, n_layer: 2, n_embd: 128, n_head: 4, block_size: 64, dropout: 0.0 };
            let vm = VarMap::new();
            let m = gpt::Gpt::new(init::seeded_var_builder(&vm, 0, DType::F32, &dev), &cfg)?;
            let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW { lr: 3e-3, weight_decay: 0.0, ..Default::default() })?;
            let mut rng = StdRng::seed_from_u64(0);
            let t0 = Instant::now();
            let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(300);
            for s in 0..steps {
                let (x, y) = gpt::random_batch(&train, 16, 64, &mut rng, &dev)?;
                let loss = m.loss(&x, &y)?;
                opt.backward_step(&loss)?;
                if s % 100 == 0 { println!("step {s} loss {:.3}", loss.to_scalar::<f32>()?); }
            }
            let el = t0.elapsed().as_secs_f64();
            let vb = gpt::bits_per_byte(m.eval_nats_per_byte(&valid, 32)?);
            let ab = gpt::bits_per_byte(m.eval_nats_per_byte(&adapt, 32)?);
            println!("{steps} steps in {el:.1}s; base valid {vb:.3} bpb; adapt valid {ab:.3} bpb");
            println!("sample: {}", String::from_utf8_lossy(&m.generate(b"ROMEO.", 120, 0.8, 1)?));
        }
        Some("sentiment") => {
            let hf = bert::HfBert::load(std::path::Path::new("data/models/all-MiniLM-L6-v2"), 64, &dev)?;
            let read = |p: &str| -> Result<Vec<(String, u32)>, Box<dyn std::error::Error>> {
                let mut v = Vec::new();
                for l in std::fs::read_to_string(p)?.lines() {
                    let j: serde_json::Value = serde_json::from_str(l)?;
                    v.push((j["text"].as_str().unwrap_or("").to_string(), j["label"].as_u64().unwrap_or(0) as u32));
                }
                Ok(v)
            };
            let train = read("labs/sentiment-finetune/data/train.jsonl")?;
            let valid = read("labs/sentiment-finetune/data/valid.jsonl")?;
            let mode = match args.get(2).map(String::as_str) {
                Some("lora") => bert::FineTuneMode::Lora(sanhak_runner::nn::lora::LoraConfig { rank: 8, alpha: 16.0, targets: vec!["query".into(), "value".into()] }),
                Some("full") => bert::FineTuneMode::Full,
                _ => bert::FineTuneMode::HeadOnly,
            };
            let lr: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1e-3);
            let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(100);
            let (model, vm) = bert::build_classifier(&hf.weights, &hf.config, 2, &mode, None, 0, &dev)?;
            let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW { lr, weight_decay: 0.01, ..Default::default() })?;
            let mut rng = StdRng::seed_from_u64(0);
            let acc = |data: &[(String, u32)]| -> Result<f64, Box<dyn std::error::Error>> {
                let mut ok = 0;
                for chunk in data.chunks(64) {
                    let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
                    let b = hf.tokenizer.encode_batch(&texts, &dev)?;
                    let pred: Vec<u32> = model.forward(&b)?.argmax(1)?.to_vec1()?;
                    ok += pred.iter().zip(chunk).filter(|(p, (_, l))| *p == l).count();
                }
                Ok(ok as f64 / data.len() as f64)
            };
            println!("before: valid acc {:.3}", acc(&valid)?);
            let t0 = Instant::now();
            for s in 0..steps {
                let idx: Vec<usize> = (0..32).map(|_| rand::Rng::gen_range(&mut rng, 0..train.len())).collect();
                let texts: Vec<&str> = idx.iter().map(|&i| train[i].0.as_str()).collect();
                let labels = Tensor::new(idx.iter().map(|&i| train[i].1).collect::<Vec<u32>>(), &dev)?;
                let b = hf.tokenizer.encode_batch(&texts, &dev)?;
                let loss = model.loss_t(&b, &labels, Some(&mut rng))?;
                opt.backward_step(&loss)?;
                if s % 25 == 0 { println!("step {s} loss {:.3}", loss.to_scalar::<f32>()?); }
            }
            println!("{steps} steps in {:.1}s; valid acc {:.3}", t0.elapsed().as_secs_f64(), acc(&valid)?);
        }
        _ => return Err("usage: gpt [steps] | sentiment [head|lora|full] [lr] [steps]".into()),
    }
    Ok(())
}
