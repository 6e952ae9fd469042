//! Static bearer tokens, as upstream's `--token-auth-file`: a CSV file of
//! `token,user,uid[,"group1,group2"]` lines, read once at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::http::Identity;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "token file '{path}' must have at least 3 columns (token, user name, unique user ID), found {found}"
    )]
    Columns { path: PathBuf, found: usize },
    #[error("token file '{path}' line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// The users of a token file, by token.
#[derive(Debug, Default)]
pub struct TokenFile {
    users: HashMap<String, Identity>,
}

/// One CSV record as Go's `encoding/csv` reads it with `TrimLeadingSpace`:
/// fields split on commas, a quoted field may hold commas and `""`.
fn record(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("extraneous or missing \" in quoted-field"),
                }
            }
            if chars.peek().is_some_and(|c| *c != ',') {
                return Err("extraneous or missing \" in quoted-field");
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                field.push(c);
            }
        }
        fields.push(field);
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, TokenFileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fields = record(line).map_err(|reason| TokenFileError::Syntax {
                path: path.to_owned(),
                line: i + 1,
                reason,
            })?;
            if fields.len() < 3 {
                return Err(TokenFileError::Columns {
                    path: path.to_owned(),
                    found: fields.len(),
                });
            }
            if fields[0].is_empty() {
                tracing::warn!(path = %path.display(), line = i + 1, "empty token in the token file");
                continue;
            }
            let mut groups: Vec<String> = match fields.get(3) {
                Some(g) if !g.is_empty() => g.split(',').map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            // Every authenticated user is in this group, as upstream adds it.
            groups.push("system:authenticated".to_owned());
            let identity = Identity {
                user: fields[1].clone(),
                uid: fields.get(2).cloned().unwrap_or_default(),
                groups,
                ..Identity::default()
            };
            if users.insert(fields[0].clone(), identity).is_some() {
                tracing::warn!(path = %path.display(), line = i + 1, "duplicate token in the token file");
            }
        }
        Ok(Self { users })
    }

    /// The user a token names, if it is in the file.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        self.users.get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_as_upstream_reads_them() {
        let file = TokenFile::parse(
            Path::new("t.csv"),
            "abc,alice,1001,\"dev,ops\"\n\ndef, bob,1002\n,nobody,1003\nghi,carol,1004,\"a \"\"b\"\"\"\n",
        )
        .unwrap();
        let alice = file.authenticate("abc").unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(file.authenticate("def").unwrap().user, "bob");
        assert_eq!(
            file.authenticate("def").unwrap().groups,
            ["system:authenticated"]
        );
        assert!(file.authenticate("").is_none());
        assert_eq!(file.authenticate("ghi").unwrap().groups[0], "a \"b\"");
        assert!(file.authenticate("nope").is_none());
    }

    #[test]
    fn short_or_broken_lines_are_refused() {
        let err = TokenFile::parse(Path::new("t.csv"), "abc,alice\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "token file 't.csv' must have at least 3 columns (token, user name, unique user ID), found 2"
        );
        assert!(TokenFile::parse(Path::new("t.csv"), "a,b,c,\"unterminated\n").is_err());
    }
}
