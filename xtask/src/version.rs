//! Release versions as the tasks handle them: `X.Y.Z` with decimal numbers (what Inno Setup's
//! version info and `cms-server release publish` take), compared as numbers.
//!
//! Must never: accept a version the installer or the server would refuse later, in the middle
//! of a long build.

use anyhow::{Result, bail};

/// The workspace version (`[workspace.package] version`, which xtask inherits).
pub fn workspace() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Fails unless `version` is `X.Y.Z` with decimal numbers.
pub fn check(version: &str) -> Result<()> {
    parse(version).map(drop)
}

/// Whether version `a` is older than `b` (both `X.Y.Z`).
pub fn is_older(a: &str, b: &str) -> Result<bool> {
    Ok(parse(a)? < parse(b)?)
}

/// One major version above `version` (`0.1.0` -> `1.0.0`): strictly newer, as updates require.
pub fn next_major(version: &str) -> Result<String> {
    let [major, _, _] = parse(version)?;
    Ok(format!("{}.0.0", major + 1))
}

/// The three numbers of `version`.
fn parse(version: &str) -> Result<[u64; 3]> {
    let number = |part: &str| -> Option<u64> {
        let decimal =
            !part.is_empty() && part.len() <= 9 && part.bytes().all(|b| b.is_ascii_digit());
        decimal.then(|| part.parse().ok())?
    };
    let numbers: Option<Vec<u64>> = version.split('.').map(number).collect();
    match numbers.as_deref() {
        Some(&[x, y, z]) => Ok([x, y, z]),
        _ => bail!("version must be X.Y.Z (decimal numbers), not {version:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_three_decimal_numbers() {
        assert!(check("1.2.3").is_ok());
        assert!(check("0.10.200").is_ok());
        for bad in [
            "1.2",
            "1.2.3.4",
            "1.2.x",
            "1..3",
            "1.2.3-rc1",
            "",
            "v1.2.3",
            "1.2.3.",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn versions_compare_as_numbers() -> Result<()> {
        assert!(is_older("0.1.0", "2.0.0")?);
        assert!(is_older("1.10.0", "2.0.0")?);
        assert!(!is_older("10.0.0", "2.0.0")?);
        assert!(!is_older("2.0.0", "2.0.0")?);
        assert!(is_older("x", "2.0.0").is_err());
        Ok(())
    }

    #[test]
    fn the_next_version_is_the_next_major() -> Result<()> {
        assert_eq!(next_major("0.1.0")?, "1.0.0");
        assert_eq!(next_major("9.4.2")?, "10.0.0");
        assert!(next_major("x.1.0").is_err());
        Ok(())
    }
}
