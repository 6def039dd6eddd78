//! Commands whose code this build of `htg` left out (a cargo feature was off): the command
//! still parses, so the user learns which feature to turn on instead of "unrecognized
//! subcommand".

/// Whatever was passed; nothing is read.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

/// Refuses `command`, naming the `feature` that builds it.
pub fn run(command: &str, feature: &str, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "`htg {command}` is not in this build: rebuild with `--features {feature}` \
         (cargo run --features {feature} -- {command} …, or cargo install --features {feature})"
    )
}
