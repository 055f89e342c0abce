//! A throw-away unprivileged user for rootless tests: created with `useradd`, removed (with
//! everything it still runs) on drop.

use std::path::Path;
use std::process::{Command, Output};

use crate::berth_bin;

pub struct TestUser {
    pub name: String,
}

impl TestUser {
    /// Creates `<prefix><pid>` with a home folder.
    pub fn create(prefix: &str) -> TestUser {
        let name = format!("{prefix}{}", std::process::id() % 100000);
        let st = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("useradd (package passwd) is needed for the rootless tests");
        assert!(st.success(), "useradd {name} failed");
        TestUser { name }
    }

    pub fn home(&self) -> String {
        format!("/home/{}", self.name)
    }

    /// Gives `path` (recursively) to this user.
    pub fn own(&self, path: &Path) {
        let st = Command::new("chown")
            .args(["-R", &self.name])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "chown -R {} {}", self.name, path.display());
    }

    /// Runs berth as this user in `dir`, with the user's own (default) berth home.
    pub fn berth(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "env"])
            .arg(format!("HOME={}", self.home()))
            .args(["XDG_DATA_HOME=", "BERTH_HOME=", "NO_COLOR=1"])
            .arg(berth_bin())
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    }

    /// Runs berth as this user in `dir` with the berth home `home` (someone else's, for the
    /// cross-user tests).
    pub fn berth_with_home(&self, home: &Path, dir: &Path, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "env"])
            .arg(format!("HOME={}", self.home()))
            .arg(format!("BERTH_HOME={}", home.display()))
            .args(["XDG_DATA_HOME=", "NO_COLOR=1"])
            .arg(berth_bin())
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    }

    /// Runs `program args` as this user, from `/` (e.g. `cat` of a file that must stay
    /// private, or a setuid file that must not make it root).
    pub fn run(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", &self.name, "--"])
            .arg(program)
            .args(args)
            .current_dir("/")
            .output()
            .unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Whatever the test left running belongs to this user: stop it before removing them.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .status();
    }
}
