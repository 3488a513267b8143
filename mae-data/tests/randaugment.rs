//! RandAugment's ops against timm's own op functions on the same images and arguments
//! (`tools/reference/randaugment_fixture.py`, timm 1.0.31 + Pillow 13.0: every op of the recipe's
//! `rand-m9-mstd0.5-inc1` and of the plain list, magnitudes 0–10, both signs, RGB and grey).
#![allow(clippy::unwrap_used)]

use mae_data::randaugment::{apply_op, Op, View};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/randaugment_timm"
);

fn op_named(name: &str) -> Op {
    Op::RAND
        .iter()
        .chain(Op::RAND_INCREASING.iter())
        .copied()
        .find(|op| format!("{op:?}") == name)
        .unwrap_or_else(|| panic!("no op {name}"))
}

fn slice<'a>(blob: &'a [u8], at: &Value) -> &'a [u8] {
    let (start, len) = (
        at[0].as_u64().unwrap() as usize,
        at[1].as_u64().unwrap() as usize,
    );
    &blob[start..start + len]
}

#[test]
fn every_op_matches_timm_byte_for_byte() {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURE}.json")).unwrap()).unwrap();
    let blob = std::fs::read(format!("{FIXTURE}.bin")).unwrap();
    let fill: Vec<u8> = index["fill"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() > 800, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut out = Vec::new();
    for case in cases {
        let op = op_named(case["op"].as_str().unwrap());
        let key = case["image"].as_str().unwrap();
        let image = &index["images"][key];
        let view = View {
            pixels: slice(&blob, &image["at"]),
            width: image["width"].as_u64().unwrap() as usize,
            height: image["height"].as_u64().unwrap() as usize,
            channels: image["channels"].as_u64().unwrap() as usize,
        };
        let magnitude = case["magnitude"].as_f64().unwrap_or(0.0);
        let negative = case["sign"].as_i64() == Some(-1);
        let arg = op.arg(magnitude, negative);
        // the argument itself is timm's
        if let Some(want) = case["args"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_f64)
        {
            assert!(
                (arg - want).abs() < 1e-12,
                "{op:?} m{magnitude} neg {negative}: arg {arg} vs timm {want}"
            );
        }
        let grey_fill = [fill[0]];
        let f: &[u8] = if view.channels == 3 {
            &fill
        } else {
            &grey_fill
        };
        apply_op(op, arg, view, f, &mut out).unwrap();
        let want = slice(&blob, &case["at"]);
        assert_eq!(out.len(), want.len());
        let differ = out.iter().zip(want).filter(|(a, b)| a != b).count();
        if differ > 0 {
            let worst = out
                .iter()
                .zip(want)
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max()
                .unwrap();
            failures.push(format!(
                "{op:?} m{magnitude} neg {negative} {key}: {differ} bytes differ, worst by {worst}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
