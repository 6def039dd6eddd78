//! [`Location`]: where an index lives, as a user names it on the command line. One type for
//! "a directory or a Milvus URL", so a command never joins `uploads` onto a `milvus://` URL
//! or passes a directory where only a collection can go: the kind is decided once, here.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

/// The URL schemes that name a Milvus collection rather than a directory.
const REMOTE_SCHEMES: [&str; 2] = ["milvus://", "milvus+tls://"];

/// Whether `location` names a remote Milvus collection (`milvus://…`, `milvus+tls://…`)
/// rather than a local directory.
pub fn is_remote(location: &str) -> bool {
    REMOTE_SCHEMES.iter().any(|s| location.starts_with(s))
}

/// An index's location: a directory on this machine, or a Milvus collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory (created if absent when an index is created there).
    Dir(PathBuf),
    /// A Milvus collection URL, `milvus://HOST:PORT/COLLECTION` or `milvus+tls://…`, as given
    /// (parsed and checked when it is opened).
    Milvus(String),
}

impl Location {
    /// The directory, for what only a local index has (uploads beside it, a model swap).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Location::Dir(d) => Some(d),
            Location::Milvus(_) => None,
        }
    }

    /// Whether this names a remote collection.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Milvus(_))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(d) => write!(f, "{}", d.display()),
            Location::Milvus(url) => f.write_str(url),
        }
    }
}

impl From<&OsStr> for Location {
    fn from(s: &OsStr) -> Location {
        match s.to_str() {
            Some(text) if is_remote(text) => Location::Milvus(text.to_string()),
            _ => Location::Dir(PathBuf::from(s)),
        }
    }
}

/// What clap builds a flag's value from: a path need not be UTF-8.
impl From<OsString> for Location {
    fn from(s: OsString) -> Location {
        Location::from(s.as_os_str())
    }
}

impl From<&str> for Location {
    fn from(s: &str) -> Location {
        Location::from(OsStr::new(s))
    }
}

impl From<&String> for Location {
    fn from(s: &String) -> Location {
        Location::from(s.as_str())
    }
}

impl From<String> for Location {
    fn from(s: String) -> Location {
        Location::from(s.as_str())
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::from(p.as_os_str())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::from(p.as_path())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::from(p.as_path())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_remote_and_anything_else_a_directory() {
        for url in ["milvus://h:1/c", "milvus+tls://h:1/c"] {
            let l = Location::from(url);
            assert_eq!(l, Location::Milvus(url.into()));
            assert!(l.is_remote() && l.dir().is_none());
            assert_eq!(l.to_string(), url);
        }
        for dir in ["idx", "/tmp/milvus", "milvus:/x", "./milvus://x"] {
            let l = Location::from(dir);
            assert_eq!(l.dir(), Some(Path::new(dir)), "{dir}");
            assert!(!l.is_remote());
        }
    }
}
