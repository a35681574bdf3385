//! Where the time of one sketch step goes on GPT-2-small dimensions: forward, backward, and the
//! outer-product accumulation, per batch. `cargo run --release --example profile [BATCH] [T] [DEVICE]`
//! (DEVICE: cpu, or cuda with `--features cuda`; on a GPU each phase ends with a device sync).

use agop::measure::{Gop, GopMeta};
use agop::model::{random_init, Gpt2Config};
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    agop::tune_allocator();
    let batch: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let t: usize = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let cfg: Gpt2Config = serde_json::from_str(
        r#"{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,"n_positions":1024,"vocab_size":50257}"#,
    )?;
    let dev = agop::model::parse_device(&std::env::args().nth(3).unwrap_or_else(|| "cpu".into()))?;
    let model = random_init(&cfg, 0, &dev)?;
    let ids =
        Tensor::from_vec((0..(batch * t) as u32).map(|i| (i * 7919) % 50257).collect::<Vec<_>>(), (batch, t), &dev)?;
    let seed = Tensor::randn(0f32, 1.0, (batch, t, cfg.n_embd), &Device::Cpu)?.to_device(&dev)?;
    let meta = GopMeta { probes: 1, seq_len: t, ..GopMeta::for_config(cfg.clone().into()) };
    let mut gop = Gop::zeros(meta);
    for rep in 0..3 {
        let t0 = Instant::now();
        let fwd = model.forward(&ids)?;
        dev.synchronize()?;
        let t1 = Instant::now();
        // Every block's gradients, kept to time the accumulation apart from the backward.
        let mut grads: Vec<(usize, [Tensor; 7])> = Vec::new();
        model.backward(&fwd, &seed, |l, g| {
            let t = [g.qkv_out, g.attn_in, g.proj_in, g.fc_in, g.mlp_out, g.proj_out, g.fc_out];
            grads.push((l, t.map(|x| x.clone())));
            Ok(())
        })?;
        dev.synchronize()?;
        let t2 = Instant::now();
        for (l, [qkv_out, attn_in, proj_in, fc_in, mlp_out, proj_out, fc_out]) in &grads {
            let g =
                agop::model::BlockGrads { qkv_out, attn_in, proj_in, fc_in, mlp_out, proj_out, fc_out, operands: None };
            gop.add(&g.stored_sides(&model.table, *l), 1.0)?;
        }
        gop.sync()?;
        let t3 = Instant::now();
        let tokens = (batch * t) as f64;
        let total = (t3 - t0).as_secs_f64();
        println!(
            "rep {rep}: forward {:.3} s, backward {:.3} s, accumulate {:.3} s; {:.1} tokens/s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            tokens / total
        );
    }
    Ok(())
}
