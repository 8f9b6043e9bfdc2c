//! Default locations, shared by every thaw binary.

use std::path::PathBuf;

/// Where thaw keeps data: `$THAW_HOME`, else `$XDG_DATA_HOME/thaw`
/// (usually `~/.local/share/thaw`).
pub fn data_home() -> Option<PathBuf> {
    std::env::var_os("THAW_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("thaw")))
}

/// Where thaw keeps caches: `$THAW_HOME/cache`, else `$XDG_CACHE_HOME/thaw`
/// (usually `~/.cache/thaw`).
pub fn cache_home() -> Option<PathBuf> {
    match std::env::var_os("THAW_HOME") {
        Some(home) => Some(PathBuf::from(home).join("cache")),
        None => dirs::cache_dir().map(|d| d.join("thaw")),
    }
}

/// The runner's verified artifact cache: `<cache home>/artifacts`.
pub fn artifact_cache() -> Option<PathBuf> {
    cache_home().map(|home| home.join("artifacts"))
}

/// The default store location: `<data home>/store`.
pub fn default_store() -> Option<String> {
    data_home().map(|home| home.join("store").display().to_string())
}
