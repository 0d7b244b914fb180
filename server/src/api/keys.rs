//! The server API's keys: those given directly and those of a keys file, which is read
//! again periodically so a key can be rotated without a restart (add the new key, move
//! the application to it, remove the old one). A file that cannot be read, or holds no
//! valid key, leaves the keys in use unchanged.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::sync::{read, write};

use crate::config::check_api_key;

/// The keys of a keys file: one per line; blank lines and lines starting with `#` skipped.
/// An invalid line is an error naming its number (never its content: it may be a key).
pub fn parse_keys_file(text: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_api_key(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        keys.push(line.to_owned());
    }
    Ok(keys)
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("CHAT_API_KEYS_FILE {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CHAT_API_KEYS_FILE {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The keys in use.
#[derive(Debug)]
pub struct ApiKeys {
    fixed: Vec<String>,
    file: Option<PathBuf>,
    from_file: RwLock<Vec<String>>,
}

impl ApiKeys {
    /// Loads the keys; the file, when given, must be readable and hold at least one key.
    pub fn load(fixed: Vec<String>, file: Option<PathBuf>) -> Result<ApiKeys, KeysError> {
        let from_file = match &file {
            Some(path) => read_keys(path)?,
            None => Vec::new(),
        };
        Ok(ApiKeys {
            fixed,
            file,
            from_file: RwLock::new(from_file),
        })
    }

    /// Reads the keys file again; on error the previous keys stay.
    pub fn reload(&self) -> Result<(), KeysError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let keys = read_keys(path)?;
        *write(&self.from_file) = keys;
        Ok(())
    }

    /// Whether `presented` is one of the keys. Every key is compared, each in constant
    /// time, so timing does not tell which key or how much of one matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let from_file = read(&self.from_file);
        self.fixed
            .iter()
            .chain(from_file.iter())
            .fold(false, |found, key| {
                found | crate::signature::same_secret(presented, key)
            })
    }
}

fn read_keys(path: &Path) -> Result<Vec<String>, KeysError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| KeysError::Invalid {
        path: path.to_owned(),
        message,
    };
    let keys = parse_keys_file(&text).map_err(invalid)?;
    if keys.is_empty() {
        return Err(invalid("holds no key".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "aaaaaaaaaaaaaaaa1";
    const KEY_B: &str = "bbbbbbbbbbbbbbbb2";

    #[test]
    fn a_keys_file_skips_comments_and_names_the_bad_line() {
        let text = format!("# rotated 2026-12-06\n\n{KEY_A}\n  {KEY_B}  \n");
        assert_eq!(parse_keys_file(&text), Ok(vec![KEY_A.into(), KEY_B.into()]));
        let err = parse_keys_file(&format!("{KEY_A}\nshort\n")).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(!err.contains("short"), "never echo a key: {err}");
        assert!(parse_keys_file("has a,comma-in-it-ok").is_err());
        assert!(check_api_key(&"k".repeat(256)).is_ok());
        assert!(check_api_key(&"k".repeat(257)).is_err());
    }

    #[test]
    fn a_rotated_file_takes_effect_and_a_broken_one_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("chat-api-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("{KEY_A}\n")).unwrap();
        let keys = ApiKeys::load(vec!["fixedfixedfixed16".into()], Some(path.clone())).unwrap();
        assert!(keys.accepts(KEY_A));
        assert!(keys.accepts("fixedfixedfixed16"));
        assert!(!keys.accepts(KEY_B));
        assert!(!keys.accepts(""));

        std::fs::write(&path, format!("{KEY_A}\n{KEY_B}\n")).unwrap();
        keys.reload().unwrap();
        assert!(keys.accepts(KEY_A) && keys.accepts(KEY_B));

        std::fs::write(&path, format!("{KEY_B}\n")).unwrap();
        keys.reload().unwrap();
        assert!(!keys.accepts(KEY_A), "the old key is gone");

        std::fs::write(&path, "# emptied by mistake\n").unwrap();
        assert!(keys.reload().is_err());
        assert!(keys.accepts(KEY_B), "a broken file keeps the keys in use");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(keys.reload().is_err());
        assert!(keys.accepts(KEY_B));
        assert!(
            ApiKeys::load(Vec::new(), Some(path)).is_err(),
            "must read at start"
        );
    }
}
