//! `berth login [-u USER] [--password-stdin] REGISTRY` and `berth logout REGISTRY`, with
//! docker's flags and files: the password comes from stdin or a prompt that does not echo,
//! never from the command line; it is checked against the registry before it is saved.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use berth_runtime::image::auth::Credentials;
use berth_runtime::image::login;
use berth_runtime::image::RegistryOptions;
use clap::Args;

use crate::exit::{from_error, CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry (host[:port], e.g. ghcr.io or 127.0.0.1:5000).
    pub registry: String,
    /// User name (asked for when omitted).
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from stdin (else it is asked for on the terminal, without echo).
    #[arg(long)]
    pub password_stdin: bool,
    /// Use plain HTTP / accept invalid certificates.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry to forget the credentials of.
    pub registry: String,
}

fn fail(e: impl std::error::Error) -> CliError {
    from_error(EXIT_ERROR, &e)
}

/// Reads one line from the terminal, echo off when `secret`.
fn ask(prompt: &str, secret: bool) -> Result<String, CliError> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            CliError::usage(
                "no terminal to ask on: pass -u USER and the password on stdin with --password-stdin",
            )
        })?;
    let mut out = &tty;
    // Echo off before the prompt shows, so that an answer typed (or sent by
    // a script) as soon as the prompt appears is never echoed; TCSANOW, not
    // TCSAFLUSH, keeps what was typed already.
    let saved = if secret {
        let saved = nix::sys::termios::tcgetattr(tty.as_fd()).ok();
        if let Some(s) = &saved {
            let mut quiet = s.clone();
            quiet
                .local_flags
                .remove(nix::sys::termios::LocalFlags::ECHO);
            let _ = nix::sys::termios::tcsetattr(
                tty.as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                &quiet,
            );
        }
        saved
    } else {
        None
    };
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    // Byte by byte: a buffered read could take the next answer's line too.
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = &tty;
    let read = loop {
        match reader.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => bytes.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    if let Some(s) = saved {
        let _ = nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, &s);
        let _ = writeln!(out);
    }
    read.map_err(|e| CliError::new(EXIT_ERROR, format!("cannot read from the terminal: {e}")))?;
    let line =
        String::from_utf8(bytes).map_err(|_| CliError::usage("the answer is not UTF-8 text"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn login(args: &LoginArgs, g: &GlobalArgs) -> Result<i32, CliError> {
    let registry =
        login::registry_host(&args.registry).map_err(|e| CliError::usage(e.to_string()))?;
    let username = match &args.username {
        Some(u) => u.clone(),
        None if args.password_stdin => {
            return Err(CliError::usage(
                "--password-stdin needs the user name too: add -u USER",
            ))
        }
        None => ask("Username: ", false)?,
    };
    if username.is_empty() {
        return Err(CliError::usage("the user name is empty"));
    }
    let password = if args.password_stdin {
        if std::io::stdin().is_terminal() && !g.quiet {
            eprintln!("reading the password from stdin (end with Ctrl-D)");
        }
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot read stdin: {e}")))?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else {
        ask("Password: ", true)?
    };
    if password.is_empty() {
        return Err(CliError::usage("the password is empty"));
    }
    let credentials = Credentials {
        username,
        password,
        origin: "`berth login`".into(),
    };
    let opts = RegistryOptions {
        insecure: args.insecure,
    };
    login::verify(&registry, &credentials, &opts).map_err(fail)?;
    let saved = login::save(&registry, &credentials).map_err(fail)?;
    if !g.quiet {
        eprintln!("Login Succeeded: credentials for {registry} saved in {saved}");
    }
    Ok(0)
}

pub fn logout(args: &LogoutArgs, g: &GlobalArgs) -> Result<i32, CliError> {
    let registry =
        login::registry_host(&args.registry).map_err(|e| CliError::usage(e.to_string()))?;
    match login::remove(&registry).map_err(fail)? {
        Some(from) => {
            if !g.quiet {
                eprintln!("Removed the credentials for {registry} from {from}");
            }
        }
        None => {
            if !g.quiet {
                eprintln!("Not logged in to {registry}: no saved credentials to remove");
            }
        }
    }
    Ok(0)
}
