//! `berth schema`: prints the JSON schema of berth.toml for editors.

use crate::exit::CliError;

pub fn run() -> Result<i32, CliError> {
    print!("{}", envfile_spec::schema::json_schema());
    Ok(0)
}
