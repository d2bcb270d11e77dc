use crate::cli::ComposeTreeArgs;
use crate::Outcome;
pub fn run(_a: &ComposeTreeArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("todo")
}
