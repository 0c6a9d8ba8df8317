//! Source paths from debug information: where a file comes from.
//!
//! A DWARF source path says whose code a frame is better than its name
//! does: the Rust standard library lives under `/rustc/<commit>/library/`,
//! registry crates under `<cargo home>/registry/src/<index>/<crate>-<version>/`,
//! git dependencies under `<cargo home>/git/checkouts/<repo>-<hash>/<rev>/`,
//! vendored ones under `vendor/<crate>/`; anything else is the application's
//! workspace (or a local path dependency, which is the same to the reader).
//! This file parses those shapes ([`place_of`]) and shortens them for text
//! ([`short_path`]). It does not decide whose code a crate is (the parent
//! module does).

/// Where a source file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourcePlace {
    /// The Rust standard library or one of its own dependencies.
    RustLibrary,
    /// A crate from a registry; its crate name (`-` as `_`).
    Registry(String),
    /// A git checkout: the crate name when the path shows it (a directory
    /// with `src/` below the revision), else the repository's name.
    Git(String),
    /// A vendored crate (`cargo vendor`).
    Vendored(String),
    /// loopwatch's own sources, in this build.
    Loopwatch,
    /// Anything else: the application's workspace or a local path.
    Local,
}

/// loopwatch's own sources, as recorded in debug info.
const LOOPWATCH_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

/// Where `path` comes from.
pub(crate) fn place_of(path: &str) -> SourcePlace {
    if is_rust_library(path) {
        return SourcePlace::RustLibrary;
    }
    if path.starts_with(LOOPWATCH_SOURCES) {
        return SourcePlace::Loopwatch;
    }
    if let Some((_, rest)) = path.split_once("/registry/src/") {
        // <index>/<crate>-<version>/...
        if let Some(package) = rest.split('/').nth(1) {
            return SourcePlace::Registry(crate_of_package(package));
        }
    }
    if let Some((_, rest)) = path.split_once("/git/checkouts/") {
        // <repo>-<hash>/<rev>/<path in the repository>
        let mut parts = rest.split('/');
        let repo = parts.next().unwrap_or_default();
        let _rev = parts.next();
        let inner: Vec<&str> = parts.collect();
        let krate = match inner.as_slice() {
            [dir, "src", ..] => dir.to_string(),
            _ => strip_hash(repo).to_string(),
        };
        return SourcePlace::Git(normalize(&krate));
    }
    if let Some((_, rest)) = path.rsplit_once("/vendor/") {
        if let Some(dir) = rest.split('/').next().filter(|d| !d.is_empty()) {
            return SourcePlace::Vendored(crate_of_package(dir));
        }
    }
    SourcePlace::Local
}

/// The standard library's sources: remapped (`/rustc/<commit>/library/`),
/// from a rustup toolchain's `rust-src`, or its vendored dependencies
/// (`/rust/deps/`).
fn is_rust_library(path: &str) -> bool {
    (path.starts_with("/rustc/") && path.contains("/library/"))
        || path.contains("/lib/rustlib/src/rust/library/")
        || path.starts_with("/rust/deps/")
}

/// `serde_json-1.0.140` → `serde_json`; `tokio-util` → `tokio_util`.
fn crate_of_package(package: &str) -> String {
    // The version starts at the first '-' followed by a digit.
    let name = package
        .char_indices()
        .find(|&(i, c)| c == '-' && package[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        .map_or(package, |(i, _)| &package[..i]);
    normalize(name)
}

/// `tokio-2b1a9c3d4e5f6a7b` → `tokio`: cargo's checkout directories end in
/// a 16-digit hash.
fn strip_hash(dir: &str) -> &str {
    match dir.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name
        }
        _ => dir,
    }
}

/// Crate names use `_` where package names may use `-`.
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The directory of the crate a local source file belongs to: what comes
/// before its last `src/`, `examples/`, `tests/`, `benches/` or `build.rs`
/// (the last, so that a workspace kept under `~/src/` is found).
pub(crate) fn crate_root(path: &str) -> Option<&str> {
    ["/src/", "/examples/", "/tests/", "/benches/", "/build.rs"]
        .iter()
        .filter_map(|marker| path.rfind(marker))
        .max()
        .map(|i| &path[..i])
        .filter(|root| !root.is_empty())
}

/// A source path made short for reading: relative to the workspace `root`
/// when under it, `<rust>/…` for the standard library, `<cargo>/…` for
/// registry crates and git checkouts (the JSON keeps the whole path).
pub(crate) fn short_path(path: &str, root: Option<&str>) -> String {
    if let Some(rel) = root
        .and_then(|r| path.strip_prefix(r))
        .and_then(|rest| rest.strip_prefix('/'))
    {
        return rel.to_string();
    }
    if path.starts_with("/rustc/") {
        if let Some((_, rest)) = path.split_once("/library/") {
            return format!("<rust>/{rest}");
        }
    }
    if let Some((_, rest)) = path.split_once("/lib/rustlib/src/rust/library/") {
        return format!("<rust>/{rest}");
    }
    if let Some(rest) = path.strip_prefix("/rust/deps/") {
        return format!("<rust>/deps/{rest}");
    }
    if let Some((_, rest)) = path.split_once("/registry/src/") {
        if let Some((_, krate)) = rest.split_once('/') {
            return format!("<cargo>/{krate}");
        }
    }
    if let Some((_, rest)) = path.split_once("/git/checkouts/") {
        let mut parts = rest.splitn(3, '/');
        let repo = strip_hash(parts.next().unwrap_or_default());
        let _rev = parts.next();
        if let Some(inner) = parts.next() {
            return format!("<cargo>/git/{repo}/{inner}");
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_of_paths() {
        use SourcePlace::*;
        assert_eq!(
            place_of(
                "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/ops/function.rs"
            ),
            RustLibrary
        );
        assert_eq!(
            place_of("/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/std/src/thread/mod.rs"),
            RustLibrary
        );
        assert_eq!(
            place_of("/rust/deps/hashbrown-0.15.2/src/raw/mod.rs"),
            RustLibrary
        );
        assert_eq!(
            place_of("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde_json-1.0.140/src/de.rs"),
            Registry("serde_json".into())
        );
        assert_eq!(
            place_of("/usr/local/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-util-0.7.15/src/codec/mod.rs"),
            Registry("tokio_util".into())
        );
        assert_eq!(
            place_of(
                "/home/u/.cargo/git/checkouts/hyper-0123456789abcdef/3f2a1b0/src/proto/h1/io.rs"
            ),
            Git("hyper".into())
        );
        assert_eq!(
            place_of(
                "/home/u/.cargo/git/checkouts/tokio-0123456789abcdef/3f2a1b0/tokio-util/src/lib.rs"
            ),
            Git("tokio_util".into())
        );
        assert_eq!(
            place_of("/build/app/vendor/futures-util/src/stream/mod.rs"),
            Vendored("futures_util".into())
        );
        assert_eq!(
            place_of("/build/app/vendor/syn-1.0.109/src/lib.rs"),
            Vendored("syn".into())
        );
        assert_eq!(
            place_of(concat!(env!("CARGO_MANIFEST_DIR"), "/src/stacks/mod.rs")),
            Loopwatch
        );
        assert_eq!(place_of("/srv/myapp/src/handlers.rs"), Local);
        assert_eq!(place_of("src/main.rs"), Local);
    }

    #[test]
    fn crate_roots() {
        assert_eq!(
            crate_root("/srv/app/crates/api/src/x.rs"),
            Some("/srv/app/crates/api")
        );
        assert_eq!(
            crate_root("/work/main/examples/demo.rs"),
            Some("/work/main")
        );
        assert_eq!(
            crate_root("/home/u/src/app/src/x.rs"),
            Some("/home/u/src/app")
        );
        assert_eq!(
            crate_root("/home/u/src/app/tests/common/mod.rs"),
            Some("/home/u/src/app")
        );
        assert_eq!(crate_root("/srv/app/main.rs"), None);
    }

    #[test]
    fn short_paths_for_reading() {
        assert_eq!(
            short_path("/rustc/5980/library/std/src/thread/mod.rs", None),
            "<rust>/std/src/thread/mod.rs"
        );
        assert_eq!(
            short_path(
                "/root/.cargo/registry/src/index.crates.io-1949/tokio-1.54.1/src/lib.rs",
                None
            ),
            "<cargo>/tokio-1.54.1/src/lib.rs"
        );
        assert_eq!(
            short_path(
                "/home/u/.cargo/git/checkouts/hyper-0123456789abcdef/3f2a1b0/src/lib.rs",
                None
            ),
            "<cargo>/git/hyper/src/lib.rs"
        );
        assert_eq!(
            short_path("/work/app/src/main.rs", Some("/work/app")),
            "src/main.rs"
        );
        assert_eq!(
            short_path("/work/app/src/main.rs", None),
            "/work/app/src/main.rs"
        );
        assert_eq!(
            short_path("/work/application/src/main.rs", Some("/work/app")),
            "/work/application/src/main.rs"
        );
    }
}
