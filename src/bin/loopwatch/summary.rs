//! `loopwatch summary`: many reports from many hosts in one page.
//!
//! This module owns the tallies: stalls (a report's own and the like
//! stalls coalesced into it) by verdict, the top culprits by count and by
//! total stalled time, first and last seen, and the same per binary build
//! id. Finding and reading reports is [`inputs`](crate::inputs)' job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::time::Duration;

use crate::facts::{host, short_duration, short_time, stalls, unlisted};
use crate::inputs::Loaded;

/// Tallies over a set of stalls.
#[derive(Default)]
struct Tally<'a> {
    stalls: u64,
    reports: u64,
    coalesced: u64,
    unlisted: u64,
    stalled: Duration,
    hosts: BTreeSet<&'a str>,
    first: Option<&'a str>,
    last: Option<&'a str>,
    by_verdict: BTreeMap<&'static str, u64>,
    culprits: HashMap<&'a str, Culprit<'a>>,
    no_culprit: u64,
    executable: Option<&'a str>,
}

/// One culprit's share.
#[derive(Default)]
struct Culprit<'a> {
    stalls: u64,
    stalled: Duration,
    hosts: BTreeSet<&'a str>,
}

impl<'a> Tally<'a> {
    fn add(&mut self, l: &'a Loaded) {
        let r = &l.report;
        let host = host(r);
        self.reports += 1;
        // Counts and durations come from files: never overflow on them.
        self.coalesced = self.coalesced.saturating_add(r.coalesced_stalls);
        self.hosts.insert(host);
        if self.executable.is_none() {
            self.executable = r.process.executable.as_deref().map(file_name);
        }
        for s in stalls(r) {
            self.stalls += 1;
            self.stalled = self.stalled.saturating_add(s.duration);
            *self.by_verdict.entry(s.verdict.as_str()).or_default() += 1;
            if self.first.is_none_or(|f| s.at < f) {
                self.first = Some(s.at);
            }
            if self.last.is_none_or(|f| s.at > f) {
                self.last = Some(s.at);
            }
            match s.culprit {
                Some(c) => {
                    let e = self.culprits.entry(c).or_default();
                    e.stalls += 1;
                    e.stalled = e.stalled.saturating_add(s.duration);
                    e.hosts.insert(host);
                }
                None => self.no_culprit += 1,
            }
        }
        // Coalesced stalls past the listed ones count, without details.
        let more = unlisted(r);
        self.unlisted = self.unlisted.saturating_add(more);
        self.stalls = self.stalls.saturating_add(more);
    }

    fn verdicts(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self.by_verdict.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    fn culprits_by<K: Ord>(&self, key: impl Fn(&Culprit<'_>) -> K) -> Vec<(&'a str, &Culprit<'a>)> {
        let mut v: Vec<_> = self.culprits.iter().map(|(k, c)| (*k, c)).collect();
        v.sort_by(|a, b| key(b.1).cmp(&key(a.1)).then(a.0.cmp(b.0)));
        v
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Writes the summary of `reports`, with at most `top` culprits per table.
pub fn write(reports: &[Loaded], top: usize, out: &mut dyn Write) -> io::Result<()> {
    let mut all = Tally::default();
    let mut builds: BTreeMap<&str, Tally<'_>> = BTreeMap::new();
    for l in reports {
        all.add(l);
        let id = l
            .report
            .process
            .build_id
            .as_deref()
            .unwrap_or("(no build id)");
        builds.entry(id).or_default().add(l);
    }
    if all.reports == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "{} in {} from {} ({} coalesced into storm reports), {} stalled in all",
        count(all.stalls, "stall"),
        count(all.reports, "report"),
        count(all.hosts.len() as u64, "host"),
        all.coalesced,
        short_duration(all.stalled)
    )?;
    writeln!(out, "first seen  {}", short_time(all.first.unwrap_or("-")))?;
    writeln!(out, "last seen   {}", short_time(all.last.unwrap_or("-")))?;
    writeln!(out, "hosts       {}", join(&all.hosts))?;

    writeln!(out, "\nby verdict:")?;
    for (verdict, n) in all.verdicts() {
        let pct = n as f64 * 100.0 / all.stalls as f64;
        writeln!(out, "  {verdict:<16} {n:>6}  {pct:>5.1}%")?;
    }
    if all.unlisted > 0 {
        writeln!(
            out,
            "  {:<16} {:>6}  (coalesced past the 1000 a report lists)",
            "(not listed)", all.unlisted
        )?;
    }

    let by_count = all.culprits_by(|c| (c.stalls, c.stalled));
    write_culprit_table(out, "top culprits by count", by_count, top)?;
    let by_time = all.culprits_by(|c| (c.stalled, c.stalls));
    write_culprit_table(out, "top culprits by total stalled time", by_time, top)?;
    if all.no_culprit > 0 {
        writeln!(
            out,
            "  ({} stalls named no culprit: not in application code, or frames not symbolized)",
            all.no_culprit
        )?;
    }

    writeln!(out, "\nby binary build id:")?;
    for (id, t) in &builds {
        writeln!(
            out,
            "  {id} ({}): {} in {} on {}, {} stalled",
            t.executable.unwrap_or("?"),
            count(t.stalls, "stall"),
            count(t.reports, "report"),
            count(t.hosts.len() as u64, "host"),
            short_duration(t.stalled)
        )?;
        writeln!(
            out,
            "    first {}  last {}",
            short_time(t.first.unwrap_or("-")),
            short_time(t.last.unwrap_or("-"))
        )?;
        let verdicts: Vec<String> = t
            .verdicts()
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect();
        writeln!(out, "    {}", verdicts.join(", "))?;
        if let Some((name, c)) = t.culprits_by(|c| (c.stalls, c.stalled)).first() {
            writeln!(
                out,
                "    top culprit {name} ({}, {})",
                count(c.stalls, "stall"),
                short_duration(c.stalled)
            )?;
        }
    }
    Ok(())
}

/// A titled table of the first `top` culprits of `ranked`.
fn write_culprit_table(
    out: &mut dyn Write,
    title: &str,
    ranked: Vec<(&str, &Culprit<'_>)>,
    top: usize,
) -> io::Result<()> {
    writeln!(out, "\n{title}:")?;
    writeln!(
        out,
        "  {:>6}  {:>8}  {:>5}  CULPRIT",
        "STALLS", "STALLED", "HOSTS"
    )?;
    for (name, c) in ranked.into_iter().take(top) {
        write_culprit(out, name, c)?;
    }
    Ok(())
}

fn write_culprit(out: &mut dyn Write, name: &str, c: &Culprit<'_>) -> io::Result<()> {
    writeln!(
        out,
        "  {:>6}  {:>8}  {:>5}  {name}",
        c.stalls,
        short_duration(c.stalled),
        c.hosts.len()
    )
}

/// `1 stall`, `2 stalls`.
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn join(set: &BTreeSet<&str>) -> String {
    const SHOWN: usize = 8;
    let mut s: Vec<&str> = set.iter().take(SHOWN).copied().collect();
    let more = set.len().saturating_sub(SHOWN);
    let more = (more > 0).then(|| format!("and {more} more"));
    if let Some(m) = &more {
        s.push(m);
    }
    s.join(", ")
}
