//! The builder's settings against systemd's environment: defaults, and a
//! typed error for every bad value.

use super::*;
use crate::error::Error;
use crate::settings::DEFAULT_STALL_THRESHOLD;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn wd_env(usec: u64) -> SystemdEnv {
    SystemdEnv {
        socket: None,
        watchdog: Some(Duration::from_micros(usec)),
        watchdog_pid: None,
    }
}

#[test]
fn defaults_follow_the_watchdog_interval() {
    let r = rt();
    let b = Builder::new().watch("main", r.handle().clone());
    let s = b.resolve(wd_env(2_000_000)).unwrap();
    assert_eq!(s.threshold, Duration::from_millis(500));
    assert_eq!(s.probe_interval, Duration::from_millis(100));
    let s = b.resolve(SystemdEnv::default()).unwrap();
    assert_eq!(s.threshold, DEFAULT_STALL_THRESHOLD);
    let s = b.resolve(wd_env(200_000)).unwrap();
    assert_eq!(s.threshold, Duration::from_millis(50));
    assert_eq!(s.probe_interval, Duration::from_micros(12_500));
}

#[test]
fn each_bad_setting_has_its_error() {
    let r = rt();
    let h = || r.handle().clone();
    let e = Builder::new()
        .watch("m", h())
        .stall_threshold(Duration::from_secs(3))
        .resolve(wd_env(3_000_000));
    assert!(
        matches!(e, Err(Error::ThresholdNotBelowWatchdog { .. })),
        "{e:?}"
    );
    let e = (Builder::new()
        .watch("m", h())
        .probe_interval(Duration::ZERO))
    .resolve(SystemdEnv::default());
    assert!(
        matches!(
            e,
            Err(Error::ZeroDuration {
                setting: "probe_interval"
            })
        ),
        "{e:?}"
    );
    let e = (Builder::new()
        .watch("m", h())
        .stall_threshold(Duration::ZERO))
    .resolve(SystemdEnv::default());
    assert!(
        matches!(
            e,
            Err(Error::ZeroDuration {
                setting: "stall_threshold"
            })
        ),
        "{e:?}"
    );
    let e = (Builder::new()
        .watch("m", h())
        .probe_interval(Duration::from_secs(2)))
    .resolve(SystemdEnv::default());
    assert!(
        matches!(e, Err(Error::ProbeIntervalNotBelowThreshold { .. })),
        "{e:?}"
    );
    let e = (Builder::new()).resolve(SystemdEnv::default());
    assert!(matches!(e, Err(Error::NoRuntime)), "{e:?}");
    let e = (Builder::new().watch("m", h()).watch("m", h())).resolve(SystemdEnv::default());
    assert!(
        matches!(e, Err(Error::DuplicateRuntimeName { .. })),
        "{e:?}"
    );
}

#[test]
fn thresholds_below_the_floor_or_absurdly_long_are_refused() {
    let r = rt();
    let b = |t: Duration| {
        Builder::new()
            .watch("m", r.handle().clone())
            .stall_threshold(t)
    };
    let e = b(Duration::from_millis(5)).resolve(SystemdEnv::default());
    assert!(
        matches!(
            e,
            Err(Error::DurationTooShort {
                setting: "stall_threshold",
                ..
            })
        ),
        "{e:?}"
    );
    assert!(b(crate::settings::MIN_STALL_THRESHOLD)
        .resolve(SystemdEnv::default())
        .is_ok());
    let e = b(Duration::MAX).resolve(SystemdEnv::default());
    assert!(
        matches!(
            e,
            Err(Error::InvalidSetting {
                setting: "stall_threshold",
                ..
            })
        ),
        "{e:?}"
    );
    let e = b(Duration::from_secs(1))
        .deadline_margin(Duration::MAX)
        .resolve(SystemdEnv::default());
    assert!(
        matches!(
            e,
            Err(Error::InvalidSetting {
                setting: "deadline_margin",
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn own_crates_are_normalized_and_checked() {
    let r = rt();
    let s = Builder::new()
        .watch("m", r.handle().clone())
        .own_crates(["my-app", "my_app", "catalog"])
        .own_crates(vec![String::from(" pricing ")])
        .resolve(SystemdEnv::default())
        .unwrap();
    assert_eq!(s.diagnostics.own_crates, ["my_app", "catalog", "pricing"]);
    let e = Builder::new()
        .watch("m", r.handle().clone())
        .own_crates(["my app"])
        .resolve(SystemdEnv::default());
    assert!(
        matches!(
            e,
            Err(Error::InvalidSetting {
                setting: "own_crates",
                ..
            })
        ),
        "{e:?}"
    );
}
