//! Re-recording checked-in files that a test compares with what the code makes: only on
//! purpose (`LWR_BLESS=1`), and never a pass, so a leftover variable cannot turn a check
//! into a rewrite that succeeds in CI.

use std::ffi::OsString;
use std::path::Path;

/// Whether this run re-records: `LWR_BLESS=1`. Any other value fails the test.
pub fn requested() -> bool {
    match mode(std::env::var_os("LWR_BLESS")) {
        Ok(bless) => bless,
        Err(e) => panic!("{e}"),
    }
}

fn mode(value: Option<OsString>) -> Result<bool, String> {
    match value {
        None => Ok(false),
        Some(v) if v == "1" => Ok(true),
        Some(v) => Err(format!(
            "LWR_BLESS={v:?}: only LWR_BLESS=1 re-records the checked-in files; unset it to \
             check them"
        )),
    }
}

/// Writes each file whose text differs, then fails naming them.
pub fn write_and_fail(files: &[(&Path, &str)]) -> ! {
    let mut written = Vec::new();
    for (path, text) in files {
        if std::fs::read_to_string(path).ok().as_deref() != Some(*text) {
            if let Err(e) = std::fs::write(path, text) {
                panic!("blessing {}: {e}", path.display());
            }
            written.push(path.display().to_string());
        }
    }
    panic!(
        "blessed {} files ({}); review the diff and rerun without LWR_BLESS",
        written.len(),
        written.join(", ")
    );
}

#[test]
fn only_lwr_bless_1_blesses_and_any_other_value_is_refused() {
    assert_eq!(mode(None), Ok(false));
    assert_eq!(mode(Some("1".into())), Ok(true));
    for leftover in ["", "0", "true", "yes", "no"] {
        assert!(mode(Some(leftover.into())).is_err(), "{leftover:?}");
    }
}
