//! Whether berth's diagnostics on stderr are colored.

use std::io::IsTerminal;

/// Whether to color what goes to stderr: only on a terminal, and never with NO_COLOR set.
pub fn stderr_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
