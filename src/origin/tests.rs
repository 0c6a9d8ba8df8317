//! The classifier on frames as the symbolizer makes them: with debug info
//! (paths), with symbol-table names only, and without any name.

use super::*;
use crate::stacks::{CaptureOutcome, SymbolSource};

const REGISTRY: &str = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";

fn frame(function: Option<&str>, file: Option<&str>, module: &str) -> Frame {
    Frame {
        ip: 0x1000,
        function: function.map(str::to_string),
        file: file.map(str::to_string),
        line: file.map(|_| 1),
        module: Some(module.to_string()),
        symbols: match (function, file) {
            (_, Some(_)) => SymbolSource::DebugInfo,
            (Some(_), None) => SymbolSource::SymbolTable,
            _ => SymbolSource::None,
        },
        ..Frame::default()
    }
}

fn own() -> OwnCode {
    OwnCode::new(&[], Some("myapp"))
}

fn origin(f: Option<&str>, file: Option<&str>) -> Option<Origin> {
    own().origin(&frame(f, file, "myapp"))
}

#[test]
fn registry_crates_are_dependencies_and_tokio_the_runtime() {
    let reg = |krate: &str| format!("{REGISTRY}/{krate}/src/lib.rs");
    assert_eq!(
        origin(Some("parse_object<R>"), Some(&reg("serde_json-1.0.140"))),
        Some(Origin::Dependency)
    );
    assert_eq!(
        origin(
            Some("serde_json::de::from_str<myapp::Catalog>"),
            Some(&reg("serde_json-1.0.140"))
        ),
        Some(Origin::Dependency)
    );
    assert_eq!(
        origin(Some("poll<F>"), Some(&reg("tokio-1.54.0"))),
        Some(Origin::Runtime)
    );
    assert_eq!(
        origin(Some("lock<T>"), Some(&reg("parking_lot_core-0.9.10"))),
        Some(Origin::Runtime)
    );
    assert_eq!(
        origin(Some("run"), Some(&reg("loopwatch-0.1.0"))),
        Some(Origin::Runtime)
    );
}

#[test]
fn git_checkouts_and_vendored_sources_are_dependencies() {
    let git = "/home/u/.cargo/git/checkouts/hyper-0123456789abcdef/3f2a1b0/src/proto/h1/io.rs";
    assert_eq!(
        origin(Some("poll_read_from_io<T>"), Some(git)),
        Some(Origin::Dependency)
    );
    let tokio_git =
        "/home/u/.cargo/git/checkouts/tokio-0123456789abcdef/3f2a1b0/tokio/src/runtime/park.rs";
    assert_eq!(origin(Some("park"), Some(tokio_git)), Some(Origin::Runtime));
    assert_eq!(
        origin(
            Some("insert<K,V>"),
            Some("/build/app/vendor/indexmap/src/map.rs")
        ),
        Some(Origin::Dependency)
    );
    assert_eq!(
        origin(
            Some("next<S>"),
            Some("/build/app/vendor/futures-util-0.3.31/src/stream/mod.rs")
        ),
        Some(Origin::Runtime)
    );
}

#[test]
fn workspace_paths_are_own_code_and_rust_sources_the_runtime() {
    assert_eq!(
        origin(
            Some("myapp::import_catalog"),
            Some("/srv/myapp/src/import.rs")
        ),
        Some(Origin::Own)
    );
    // An inlined async fn body with a bare name: its path decides.
    assert_eq!(
        origin(Some("{async_fn#0}"), Some("/srv/myapp/src/handlers.rs")),
        Some(Origin::Own)
    );
    // A workspace crate other than the binary's: its path decides too.
    assert_eq!(
        origin(
            Some("catalog::load"),
            Some("/srv/myapp/crates/catalog/src/lib.rs")
        ),
        Some(Origin::Own)
    );
    let rustc =
        "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/panic/unwind_safe.rs";
    assert_eq!(
        origin(Some("call_once<(), F>"), Some(rustc)),
        Some(Origin::Runtime)
    );
    assert_eq!(
        origin(
            Some("capture"),
            Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src/stacks/mod.rs"))
        ),
        Some(Origin::Runtime)
    );
    // A runtime crate's name wins over a local path (a path dependency on a
    // patched tokio is still the runtime).
    assert_eq!(
        origin(
            Some("tokio::runtime::park::Inner::park"),
            Some("/srv/forks/tokio/src/runtime/park.rs")
        ),
        Some(Origin::Runtime)
    );
}

#[test]
fn names_alone_decide_by_crate() {
    let n = |name: &str| origin(Some(name), None);
    assert_eq!(n("myapp::handlers::checkout"), Some(Origin::Own));
    assert_eq!(
        n("myapp::handlers::checkout::{{closure}}"),
        Some(Origin::Own)
    );
    assert_eq!(
        n("<myapp::Db as core::future::future::Future>::poll"),
        Some(Origin::Own)
    );
    assert_eq!(n("<F as myapp::Job>::run"), Some(Origin::Own));
    assert_eq!(
        n("serde_json::de::Deserializer<R>::parse_whitespace"),
        Some(Origin::Dependency)
    );
    assert_eq!(
        n("<hyper::server::Server<I,S> as core::future::Future>::poll"),
        Some(Origin::Dependency)
    );
    assert_eq!(n("stdx::thing"), Some(Origin::Dependency));
    assert_eq!(n("std::thread::sleep"), Some(Origin::Runtime));
    assert_eq!(n("alloc::vec::Vec<T>::push"), Some(Origin::Runtime));
    assert_eq!(
        n("tokio::runtime::park::Inner::park"),
        Some(Origin::Runtime)
    );
    assert_eq!(
        n("<F as core::ops::function::FnOnce<()>>::call_once"),
        Some(Origin::Runtime)
    );
    assert_eq!(n("<u64>::unchecked_add"), Some(Origin::Runtime));
    assert_eq!(n("__rust_begin_short_backtrace"), Some(Origin::Runtime));
    assert_eq!(n("main"), Some(Origin::Runtime));
    assert_eq!(n("start_thread"), Some(Origin::Runtime));
    assert_eq!(n("loopwatch::monitor::run"), Some(Origin::Runtime));
    // C code linked into the binary.
    assert_eq!(n("sqlite3VdbeExec"), Some(Origin::Dependency));
}

#[test]
fn system_libraries_are_the_runtime_even_without_names() {
    let o = own();
    assert_eq!(
        o.origin(&frame(Some("clock_nanosleep"), None, "libc.so.6")),
        Some(Origin::Runtime)
    );
    assert_eq!(
        o.origin(&frame(None, None, "libc.so.6")),
        Some(Origin::Runtime)
    );
    assert_eq!(
        o.origin(&frame(Some("__vdso_clock_gettime"), None, "[vdso]")),
        Some(Origin::Runtime)
    );
    assert_eq!(
        o.origin(&frame(
            Some("_dl_runtime_resolve"),
            None,
            "ld-linux-x86-64.so.2"
        )),
        Some(Origin::Runtime)
    );
}

#[test]
fn nameless_frames_have_no_origin() {
    assert_eq!(own().origin(&frame(None, None, "myapp")), None);
    assert_eq!(OwnCode::default().origin(&Frame::default()), None);
}

#[test]
fn the_users_list_overrides_everything_but_system_libraries() {
    let o = OwnCode::new(&["my-catalog".into()], Some("myapp"));
    let reg = format!("{REGISTRY}/my-catalog-2.1.0/src/lib.rs");
    assert_eq!(
        o.origin(&frame(Some("my_catalog::load"), Some(&reg), "myapp")),
        Some(Origin::Own)
    );
    assert_eq!(
        o.origin(&frame(Some("load<T>"), Some(&reg), "myapp")),
        Some(Origin::Own)
    );
    assert_eq!(
        o.origin(&frame(Some("my_catalog::load"), None, "myapp")),
        Some(Origin::Own)
    );
    assert_eq!(
        o.origin(&frame(Some("clock_nanosleep"), None, "libc.so.6")),
        Some(Origin::Runtime)
    );
}

#[test]
fn the_main_crate_and_workspace_are_learned_from_stacks() {
    // A binary whose executable name is not its crates' names.
    let mut o = OwnCode::new(&[], Some("server-bin"));
    assert!(o.only_guessed());
    let main_thread = ThreadStack {
        tid: 1,
        facts: None,
        outcome: CaptureOutcome::Captured,
        detail: None,
        registers: None,
        stack_bytes: 4096,
        frames: vec![
            frame(
                Some("tokio::runtime::park::Inner::park"),
                None,
                "server-bin",
            ),
            frame(Some("catalog_server::main"), None, "server-bin"),
            frame(
                Some("core::ops::function::FnOnce::call_once"),
                None,
                "server-bin",
            ),
            frame(
                Some("std::sys::backtrace::__rust_begin_short_backtrace"),
                None,
                "server-bin",
            ),
            frame(Some("std::rt::lang_start::{{closure}}"), None, "server-bin"),
            frame(Some("main"), None, "server-bin"),
        ],
        not_captured: None,
        kernel_stack: Vec::new(),
    };
    let worker = ThreadStack {
        tid: 2,
        frames: vec![
            frame(
                Some("catalog::parse"),
                Some("/srv/app/crates/catalog/src/parse.rs"),
                "server-bin",
            ),
            frame(
                Some("catalog_server::handle"),
                Some("/srv/app/crates/server/src/main.rs"),
                "server-bin",
            ),
            frame(
                Some("serde::de::Visitor::visit_map"),
                Some(&format!("{REGISTRY}/serde-1.0.219/src/de/mod.rs")),
                "server-bin",
            ),
        ],
        ..main_thread.clone()
    };
    // Before learning, a name-only frame of another crate is a dependency.
    assert_eq!(
        o.origin(&frame(Some("catalog_server::handle"), None, "server-bin")),
        Some(Origin::Dependency)
    );
    o.learn(&[main_thread, worker]);
    assert!(!o.only_guessed());
    assert_eq!(
        o.origin(&frame(Some("catalog_server::handle"), None, "server-bin")),
        Some(Origin::Own)
    );
    assert_eq!(
        o.origin(&frame(Some("catalog::index::insert"), None, "server-bin")),
        Some(Origin::Own)
    );
    assert_eq!(
        o.origin(&frame(
            Some("serde::de::Visitor::visit_map"),
            None,
            "server-bin"
        )),
        Some(Origin::Dependency)
    );
    let d = o.describe();
    assert!(d.contains("catalog_server (its main)"), "{d}");
    assert!(d.contains("catalog (its source paths)"), "{d}");
    assert!(d.contains("server_bin (the executable's name)"), "{d}");
}

#[test]
fn a_test_binarys_hash_is_not_its_crate_name() {
    let o = OwnCode::new(&[], Some("diagnostics-0123456789abcdef"));
    assert_eq!(
        o.origin(&frame(Some("diagnostics::common::block_until"), None, "x")),
        Some(Origin::Own)
    );
}

#[test]
fn is_application_follows_the_origin() {
    let mut f = frame(Some("serde_json::de::from_str"), None, "myapp");
    assert!(!f.is_application());
    f.origin = Some(Origin::Own);
    assert!(f.is_application());
    let f = frame(Some("clock_nanosleep"), None, "libc.so.6");
    assert!(!f.is_application());
    let f = frame(
        Some("checkout"),
        Some("/srv/mydaemon/src/handlers.rs"),
        "mydaemon",
    );
    assert!(f.is_application());
}
