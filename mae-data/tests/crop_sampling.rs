//! RandomResizedCrop's sampling against torchvision's on the same draws: the fixture
//! (`tests/fixtures/rrc_torchvision.json`, made by `tools/reference/rrc_fixture.py` with torch
//! 2.15 / torchvision 0.29) holds, per case, the numbers torchvision drew and the crop it chose;
//! fed the same numbers, `random_resized_crop` must choose the same crop and consume exactly
//! those numbers. Also the evaluation crop against torchvision's Resize + CenterCrop geometry.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use mae_data::augment::{eval_crop, random_resized_crop, CropDraws};

struct Recorded {
    fractions: VecDeque<f64>,
    aspects: VecDeque<f64>,
    below: VecDeque<usize>,
}

impl CropDraws for Recorded {
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64 {
        let v = self
            .fractions
            .pop_front()
            .expect("torchvision drew no more area fractions");
        assert!(
            (lo as f32 as f64..=hi).contains(&v),
            "{v} outside [{lo}, {hi}]"
        );
        v
    }
    fn aspect(&mut self, log_lo: f64, log_hi: f64) -> f64 {
        let v = self
            .aspects
            .pop_front()
            .expect("torchvision drew no more aspect ratios");
        assert!(v.ln() > log_lo - 1e-6 && v.ln() < log_hi + 1e-6, "{v}");
        v
    }
    fn below(&mut self, n: usize) -> usize {
        let v = self
            .below
            .pop_front()
            .expect("torchvision drew no more offsets");
        assert!(v < n, "{v} not below {n}");
        v
    }
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn random_resized_crop_chooses_torchvisions_crop_on_its_draws() {
    let text = include_str!("fixtures/rrc_torchvision.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 400);
    let (mut fallbacks, mut tries) = (0, 0);
    for (k, case) in cases.iter().enumerate() {
        let width = case["width"].as_u64().unwrap() as usize;
        let height = case["height"].as_u64().unwrap() as usize;
        let scale = numbers(&case["scale"]);
        let ratio = numbers(&case["ratio"]);
        let mut draws = Recorded {
            fractions: numbers(&case["area_fraction"]).into(),
            aspects: numbers(&case["aspect"]).into(),
            below: numbers(&case["below"])
                .iter()
                .map(|&v| v as usize)
                .collect(),
        };
        fallbacks += draws.below.is_empty() as usize;
        tries += draws.fractions.len();
        let got = random_resized_crop(
            width,
            height,
            (scale[0], scale[1]),
            (ratio[0], ratio[1]),
            &mut draws,
        );
        let expect: Vec<usize> = numbers(&case["expect"])
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(
            [got.0, got.1, got.2, got.3],
            [expect[0], expect[1], expect[2], expect[3]],
            "case {k}: {width}×{height}, scale {scale:?}, ratio {ratio:?}"
        );
        assert!(
            draws.fractions.is_empty() && draws.aspects.is_empty() && draws.below.is_empty(),
            "case {k}: not every draw of torchvision's was consumed"
        );
    }
    // both paths are exercised: crops found on some try, and the centre-crop fallback
    assert!(
        fallbacks > 20 && fallbacks < cases.len() - 20,
        "{fallbacks}"
    );
    assert!(tries > cases.len(), "{tries}");
}

#[test]
fn the_eval_crop_is_resize_then_centre_crop_on_the_whole_image() {
    // 500×375 at 224 / 0.875: Resize(256) makes 341×256, CenterCrop(224) starts at
    // round(58.5) = 58 (half to even), 16; mapped back by 500/341 and 375/256
    let c = eval_crop(500, 375, 224, 0.875);
    let (sx, sy) = (341.0 / 500.0, 256.0 / 375.0);
    assert!((c.left - 58.0 / sx).abs() < 1e-9, "{c:?}");
    assert!((c.top - 16.0 / sy).abs() < 1e-9, "{c:?}");
    assert!((c.width - 224.0 / sx).abs() < 1e-9 && (c.height - 224.0 / sy).abs() < 1e-9);
    // a square at crop_pct 1: the whole image
    let c = eval_crop(28, 28, 28, 1.0);
    assert_eq!((c.left, c.top, c.width, c.height), (0.0, 0.0, 28.0, 28.0));
    // portrait: the crop is centred vertically
    let c = eval_crop(256, 512, 224, 0.875);
    assert!(
        (c.left - 16.0).abs() < 1e-9 && (c.top - 144.0).abs() < 1e-9,
        "{c:?}"
    );
}
