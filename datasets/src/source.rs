//! Shard discovery: turn user-given sources (files, directories, globs) into a sorted shard list.
//!
//! Discovery only lists paths; it never opens a footer. With thousands of shards, opening every footer up
//! front is exactly the slow start users of other loaders complain about, so footers are read lazily by
//! the planner as it walks the epoch.
use std::path::{Path, PathBuf};

use crate::DatasetError;

/// Expand `sources` into a sorted, de-duplicated list of Parquet files.
///
/// A file is taken as given (whatever its extension), a directory contributes every `*.parquet` file
/// below it (recursively), anything else is treated as a glob pattern. A source that matches nothing is
/// an error, so a typo never silently trains on less data.
pub fn discover(sources: &[String]) -> Result<Vec<PathBuf>, DatasetError> {
    if sources.is_empty() {
        return Err(DatasetError::Config("no data sources given".into()));
    }
    let mut shards = Vec::new();
    for source in sources {
        let before = shards.len();
        let path = Path::new(source);
        if path.is_file() {
            shards.push(path.to_path_buf());
        } else if path.is_dir() {
            walk_dir(path, &mut shards).map_err(|e| DatasetError::Source {
                spec: source.clone(),
                reason: e.to_string(),
            })?;
        } else {
            let paths = glob::glob(source).map_err(|e| DatasetError::Source {
                spec: source.clone(),
                reason: format!("not a file, a directory or a valid glob: {e}"),
            })?;
            for entry in paths {
                let p = entry.map_err(|e| DatasetError::Source {
                    spec: source.clone(),
                    reason: e.to_string(),
                })?;
                if p.is_file() {
                    shards.push(p);
                }
            }
        }
        if shards.len() == before {
            return Err(DatasetError::NoShards {
                spec: source.clone(),
            });
        }
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}
