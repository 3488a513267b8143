//! The official scripts' flag spellings, so that the commands of `PRETRAIN.md`, `FINETUNE.md` and
//! `LINPROBE.md` (facebookresearch/mae) run with only the program's name changed:
//! `python main_finetune.py --batch_size 32 --model vit_base_patch16 --finetune C --data_path D`
//! is `mae finetune --batch_size 32 --model vit_base_patch16 --finetune C --data_path D`.
//!
//! Every flag of ours spelled with `-` is also accepted with `_` (`--accum_iter`,
//! `--mask_ratio`, `--norm_pix_loss`, `--layer_decay`, `--drop_path`, `--input_size`, ...), and the
//! flags the official scripts name differently are accepted under their names ([`RENAMED`]).
//! Model names (`--model mae_vit_base_patch16`, `vit_base_patch16`) are read by
//! `mae_core::Preset`'s parser. All of these aliases are hidden from `--help`, which shows ours.

/// Our flag → the official scripts' names for it.
pub const RENAMED: &[(&str, &[&str])] = &[
    ("data", &["data_path"]),
    ("out", &["output_dir"]),
    ("preset", &["model"]),
    // main_finetune.py / main_linprobe.py: the pretrained checkpoint to start from
    ("checkpoint", &["finetune"]),
    ("workers", &["num_workers"]),
];

/// `cmd` with the official spellings of its subcommands' flags accepted as hidden aliases.
pub fn accept_official_spellings(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    names.iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name, |sub| {
            let sub = with_aliases(sub);
            accept_official_spellings(sub)
        })
    })
}

/// The aliases of one command's own flags.
fn with_aliases(cmd: clap::Command) -> clap::Command {
    let flags: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
        .collect();
    let taken: Vec<String> = flags.iter().map(|(_, long)| long.clone()).collect();
    flags.into_iter().fold(cmd, |cmd, (id, long)| {
        let mut aliases: Vec<String> = RENAMED
            .iter()
            .filter(|(ours, _)| *ours == long)
            .flat_map(|(_, theirs)| theirs.iter().map(|t| t.to_string()))
            .filter(|a| !taken.contains(a))
            .collect();
        let underscored = long.replace('-', "_");
        if underscored != long {
            aliases.push(underscored);
        }
        if aliases.is_empty() {
            return cmd;
        }
        cmd.mut_arg(id, |a| a.aliases(aliases))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("mae").subcommand(
            clap::Command::new("finetune")
                .arg(clap::Arg::new("accum_iter").long("accum-iter"))
                .arg(clap::Arg::new("data").long("data"))
                .arg(clap::Arg::new("preset").long("preset"))
                .arg(clap::Arg::new("checkpoint").long("checkpoint")),
        )
    }

    #[test]
    fn underscores_and_the_official_names_reach_our_flags() {
        let m = accept_official_spellings(cli())
            .try_get_matches_from([
                "mae",
                "finetune",
                "--accum_iter",
                "4",
                "--data_path",
                "d",
                "--model",
                "vit_base_patch16",
                "--finetune",
                "c.pth",
            ])
            .expect("official spellings parse");
        let (_, sub) = m.subcommand().expect("sub");
        for (id, want) in [
            ("accum_iter", "4"),
            ("data", "d"),
            ("preset", "vit_base_patch16"),
            ("checkpoint", "c.pth"),
        ] {
            assert_eq!(
                sub.get_one::<String>(id).map(String::as_str),
                Some(want),
                "{id}"
            );
        }
        // ours still parse, and a flag of neither spelling is still refused
        assert!(accept_official_spellings(cli())
            .try_get_matches_from(["mae", "finetune", "--accum-iter", "4"])
            .is_ok());
        assert!(accept_official_spellings(cli())
            .try_get_matches_from(["mae", "finetune", "--accum_iters", "4"])
            .is_err());
    }
}
