//! Exit codes and the rendering of errors that end a command.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | error: invalid berth.toml, failed operation |
//! | 2 | usage error (bad arguments) |
//! | 3 | the environment does not exist or is not running |
//! | N | `exec`/`run`: the command's own exit code (124: `run --timeout` expired) |

pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NOT_RUNNING: i32 = 3;

/// An error that ends the command: what to print and which code to exit with.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    /// Already-rendered text (envfile diagnostics) or a one-line message.
    pub message: String,
    /// Whether `message` is already fully rendered (no `error:` prefix to add).
    pub rendered: bool,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            rendered: false,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }

    pub fn rendered(code: i32, text: String) -> Self {
        CliError {
            code,
            message: text,
            rendered: true,
        }
    }

    /// Prints the error to stderr and returns the exit code.
    pub fn report(&self) -> i32 {
        if self.rendered {
            eprint!("{}", self.message);
            if !self.message.ends_with('\n') {
                eprintln!();
            }
        } else {
            eprintln!("error: {}", self.message);
        }
        self.code
    }
}

/// Renders any error with its chain of causes, for runtime errors.
pub fn from_error(code: i32, err: &dyn std::error::Error) -> CliError {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(&format!("\n  caused by: {s_text}"));
        }
        src = s.source();
    }
    CliError::new(code, msg)
}

#[allow(dead_code)]
pub fn not_running(msg: impl Into<String>) -> CliError {
    CliError::new(EXIT_NOT_RUNNING, msg)
}

#[allow(dead_code)]
pub fn error(msg: impl Into<String>) -> CliError {
    CliError::new(EXIT_ERROR, msg)
}
