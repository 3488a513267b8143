// The pretraining configuration as `--config FILE` reads it: TOML text parsed, merged over
// nothing, and resolved (the required fields filled in) with every range check.

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(given) = mae_train::PretrainOverrides::from_toml(text) else {
        return;
    };
    let fill = mae_train::PretrainOverrides {
        data: Some("data".into()),
        out: Some("out".into()),
        preset: Some(mae_core::Preset::Tiny),
        ..Default::default()
    };
    for world in [1, 3] {
        if let Ok(cfg) = mae_train::PretrainConfig::resolve_for(fill.clone().merged(given.clone()), world) {
            assert!(cfg.batch_size >= 1 && cfg.lr.is_finite());
        }
    }
}
