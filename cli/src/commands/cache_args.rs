//! `--cache-from` / `--cache-to`: the registry build cache of `berth up`, `berth run` (over
//! `[image].cache` and `cache_push` of berth.toml) and `berth image build`.

use clap::Args;
use envfile_spec::reference::ImageReference;

#[derive(Debug, Args, Clone, Default)]
pub struct CacheArgs {
    /// Look build steps up in this registry repository (no tag, e.g.
    /// registry.example.com/team/project-cache) before running them; overrides
    /// `[image].cache`. A miss or an unreachable cache is a notice, never a failure.
    #[arg(long, value_name = "REPOSITORY", value_parser = repository)]
    pub cache_from: Option<ImageReference>,
    /// Push the build steps to this registry repository (as CI does for the machines that
    /// read it). Credentials come from `berth login` / docker's and podman's files.
    #[arg(long, value_name = "REPOSITORY", value_parser = repository)]
    pub cache_to: Option<ImageReference>,
}

fn repository(s: &str) -> Result<ImageReference, String> {
    ImageReference::parse_repository(s)
}
