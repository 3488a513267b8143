//! RandAugment throughput (`rand-m9-mstd0.5-inc1`) on 224×224 RGB images, one thread, as
//! `tools/bench_randaugment.sh` runs it beside timm's on the same pixels: the images come from a
//! raw file of `count × 224 × 224 × 3` bytes (`tools/reference/randaugment_bench.py` writes it),
//! each gets its own draws; images/s of the median of `--rounds` passes. One JSON line on stdout.
//!
//! `cargo run --release -p mae-data --example randaugment_throughput -- IMAGES.raw [--rounds 4]`
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Instant;

use mae_data::randaugment::RandAugment;
use rand::SeedableRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: randaugment_throughput IMAGES.raw [--rounds N]")?;
    let rounds: usize = match (args.next().as_deref(), args.next()) {
        (Some("--rounds"), Some(n)) => n.parse()?,
        _ => 4,
    };
    let bytes = std::fs::read(&path)?;
    let per = 224 * 224 * 3;
    let images: Vec<&[u8]> = bytes.chunks_exact(per).collect();
    let ra: RandAugment = "rand-m9-mstd0.5-inc1".parse()?;
    let fill = [124u8, 116, 104];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (mut img, mut scratch) = (Vec::with_capacity(per), Vec::with_capacity(per));
    let mut times = Vec::new();
    let mut checksum = 0u64;
    for _ in 0..rounds {
        let t = Instant::now();
        for src in &images {
            img.clear();
            img.extend_from_slice(src);
            let drawn = ra.draw(&mut rng);
            RandAugment::apply(&drawn, &mut img, (224, 224, 3), &fill, &mut scratch)?;
            checksum = checksum.wrapping_add(img[per / 2] as u64);
        }
        times.push(t.elapsed().as_secs_f64());
    }
    if std::env::var_os("PER_OP").is_some() {
        // each op alone at magnitude 9 over every image: where the time goes
        for op in mae_data::randaugment::Op::RAND_INCREASING {
            let t = Instant::now();
            for src in &images {
                let view = mae_data::randaugment::View {
                    pixels: src,
                    width: 224,
                    height: 224,
                    channels: 3,
                };
                mae_data::randaugment::apply_op(op, op.arg(9.0, false), view, &fill, &mut scratch)?;
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / images.len() as f64;
            eprintln!("{op:?}: {ms:.3} ms/image");
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\": \"mae-rs\", \"images\": {}, \"img_per_s\": {:.1}, \"passes_s\": {:?}, \"checksum\": {checksum}}}",
        images.len(),
        images.len() as f64 / median,
        times.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
    Ok(())
}
