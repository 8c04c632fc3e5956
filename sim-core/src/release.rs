//! Kernel releases and the table of the releases whose rules numasim read (`kernel.version`).
//!
//! `kernel.version` names a row of [`ROWS`] (`"6.12"`) or any release (`"6.12.118"`,
//! `"6.8"`). Each rule in `version.rs` says which releases have it: the first mainline
//! release, and stable backports as ranges within a series. A release of a series numasim
//! read is judged by those ranges; a release of a series it did not read, between two that
//! it did, takes the older one's rules (what changed in between was not read), and
//! [`KernelVersion::note`] says so.

use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A kernel release, `major.minor.sublevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

impl Release {
    pub const fn new(major: u32, minor: u32, sublevel: u32) -> Self {
        Self { major, minor, sublevel }
    }

    /// Whether `self` and `other` are releases of one stable series (`6.12.y`).
    pub fn same_series(self, other: Release) -> bool {
        (self.major, self.minor) == (other.major, other.minor)
    }

    /// Parses `X.Y` (sublevel 0) or `X.Y.Z`, decimal digits only.
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s
            .split('.')
            .map(|p| if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) { None } else { p.parse().ok() });
        let (major, minor) = (parts.next()??, parts.next()??);
        let sublevel = parts.next().unwrap_or(Some(0))?;
        parts.next().is_none().then_some(Self { major, minor, sublevel })
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

/// Which releases have a rule.
#[derive(Clone, Copy, Debug)]
pub enum Span {
    /// This release and every later one: a mainline change (or the first release of a series
    /// read that has it, when its merge release was not established).
    Mainline(Release),
    /// This release and the later ones of its series: a stable backport, dated by the
    /// series' changelog or by the release read.
    Stable(Release),
}

/// Whether `release` is in one of `spans`.
pub fn has(spans: &[Span], release: Release) -> bool {
    spans.iter().any(|s| match *s {
        Span::Mainline(from) => release >= from,
        Span::Stable(from) => release.same_series(from) && release >= from,
    })
}

/// A release whose rules numasim took from a reading, under the name `kernel.version` gives it.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub name: &'static str,
    pub release: Release,
    /// The first release the row stands for: releases from it to the end of the row's series
    /// are judged at themselves (usually the series' first release).
    pub from: Release,
    /// What was read for it.
    pub read: &'static str,
}

const fn row(name: &'static str, release: Release, from: Release, read: &'static str) -> Row {
    Row { name, release, from, read }
}

const fn v(major: u32, minor: u32, sublevel: u32) -> Release {
    Release::new(major, minor, sublevel)
}

/// The releases numasim read, oldest first.
pub const ROWS: [Row; 9] = [
    row("6.1", v(6, 1, 0), v(6, 1, 0), "commit history (v6.1, FOLL_NUMA)"),
    row("6.1-debian12", v(6, 1, 192), v(6, 1, 192), "source: Debian 12's linux-source-6.1"),
    row("6.4", v(6, 4, 0), v(6, 4, 0), "commit history"),
    row("6.5", v(6, 5, 0), v(6, 5, 0), "commit history"),
    row("6.6", v(6, 6, 0), v(6, 6, 0), "commit history"),
    row("6.12", v(6, 12, 118), v(6, 12, 0), "source: 6.12.117 and 6.12.118"),
    row("6.18", v(6, 18, 15), v(6, 18, 0), "no source: the mainline dates of the changes read in 7.2.13 and 7.3.4"),
    row("7.2", v(7, 2, 13), v(6, 19, 0), "source: Debian's linux-source-7.2 (7.2.13); stands for 6.19-7.2"),
    row("7.3", v(7, 3, 4), v(7, 3, 0), "source: Debian's linux-source-7.3 (7.3.4)"),
];

/// A `kernel.version`: a release, under the name it was given (a row's name or the release
/// itself), so that results and configs print what was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelVersion {
    release: Release,
    name: &'static str,
}

impl KernelVersion {
    pub const V6_1: Self = Self::row(0);
    /// Debian 12's 6.1.192: 6.1 with v6.2's gup_can_follow_protnone() backported. Spelt as
    /// the variant it was when versions were an enum.
    #[allow(non_upper_case_globals)]
    pub const V6_1Debian12: Self = Self::row(1);
    pub const V6_4: Self = Self::row(2);
    pub const V6_5: Self = Self::row(3);
    pub const V6_6: Self = Self::row(4);
    pub const V6_12: Self = Self::row(5);
    pub const V6_18: Self = Self::row(6);
    pub const V7_2: Self = Self::row(7);
    pub const V7_3: Self = Self::row(8);

    /// Every row, oldest first.
    pub const ALL: [Self; ROWS.len()] = {
        let mut all = [Self::V6_1; ROWS.len()];
        let mut i = 0;
        while i < ROWS.len() {
            all[i] = Self::row(i);
            i += 1;
        }
        all
    };

    const fn row(i: usize) -> Self {
        Self { release: ROWS[i].release, name: ROWS[i].name }
    }

    /// What `kernel.version` said.
    pub fn name(self) -> &'static str {
        self.name
    }

    pub fn release(self) -> Release {
        self.release
    }

    /// The row whose reading decides this release's rules: the row standing for it (from
    /// its `from` to the end of its series), else the newest older row.
    pub fn row_of(self) -> &'static Row {
        let r = self.release;
        ROWS.iter()
            .rfind(|row| row.stands_for(r))
            .unwrap_or_else(|| ROWS.iter().rfind(|row| row.release < r).expect("parse() refuses older releases"))
    }

    /// The release the rules are judged at: the release itself where a row stands for it,
    /// the older row's release otherwise.
    pub fn rules_release(self) -> Release {
        let row = self.row_of();
        if row.stands_for(self.release) { self.release } else { row.release }
    }

    /// What `numasim check` says about a release that is not a row: whose rules it takes.
    pub fn note(self) -> Option<String> {
        if ROWS.iter().any(|row| row.name == self.name) {
            return None;
        }
        let row = self.row_of();
        if row.release == self.release {
            return Some(format!("kernel.version {}: the `{}` row, read from {}", self.name, row.name, row.read));
        }
        Some(if row.stands_for(self.release) {
            format!(
                "kernel.version {}: not read; it takes the rules of `{}` ({}, read from {}), with the stable backports its series' changelog dates",
                self.name, row.name, row.release, row.read
            )
        } else {
            let newer = ROWS.iter().find(|r| r.release > self.release).expect("parse() refuses newer series");
            format!(
                "kernel.version {}: not read; between `{}` ({}) and `{}` ({}), it takes the older one's rules",
                self.name, row.name, row.release, newer.name, newer.release
            )
        })
    }
}

impl Row {
    /// Whether this row stands for `r`: from `from` to the end of the row's series.
    fn stands_for(&self, r: Release) -> bool {
        r >= self.from && (r <= self.release || r.same_series(self.release))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Release names given at run time, kept for the life of the process so that a
/// [`KernelVersion`] stays `Copy`; a run names a handful.
fn intern(name: String) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&known) = names.iter().find(|&&n| n == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

impl std::str::FromStr for KernelVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(v) = Self::ALL.into_iter().find(|v| v.name == s) {
            return Ok(v);
        }
        let rows: Vec<_> = ROWS.iter().map(|r| format!("`{}`", r.name)).collect();
        let release = Release::parse(s)
            .ok_or_else(|| format!("`{s}` is not a kernel release (X.Y or X.Y.Z) or one of {}", rows.join(", ")))?;
        let (oldest, newest) = (ROWS[0], ROWS[ROWS.len() - 1]);
        if release < oldest.release {
            return Err(format!("`{s}` is older than every release numasim models (the oldest is {})", oldest.name));
        }
        if release > newest.release && !newest.release.same_series(release) {
            return Err(format!("`{s}` is newer than every release numasim read (the newest is {})", newest.release));
        }
        let name = if s.split('.').count() == 2 {
            format!("{}.{}", release.major, release.minor)
        } else {
            release.to_string()
        };
        Ok(Self { release, name: intern(name) })
    }
}

impl Serialize for KernelVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl<'de> Deserialize<'de> for KernelVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Number(f64),
        }
        let text = match Written::deserialize(d)? {
            Written::Text(s) => s,
            Written::Number(x) => x.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KernelVersion {
        s.parse().unwrap()
    }

    #[test]
    fn a_version_is_a_row_or_a_release() {
        assert_eq!(v("6.12"), KernelVersion::V6_12);
        assert_eq!(v("6.12.118").release(), Release::new(6, 12, 118));
        assert_eq!(v("6.12.118").name(), "6.12.118");
        assert_eq!(v("6.8").name(), "6.8");
        assert_eq!(v("6.1.192").row_of().name, "6.1-debian12");
        for bad in ["6", "6.12.x", "6..1", "6.12.1.1", "v6.12", "5.15", "7.4", ""] {
            assert!(bad.parse::<KernelVersion>().is_err(), "{bad}");
        }
    }

    /// A release of a read series is judged at itself; one of an unread series at the older
    /// row, and `check` says so.
    #[test]
    fn an_unread_release_takes_the_older_rows_rules() {
        assert_eq!(v("6.12.5").row_of().name, "6.12");
        assert_eq!(v("6.12.5").rules_release(), Release::new(6, 12, 5));
        assert_eq!(v("6.1.50").row_of().name, "6.1");
        assert_eq!(v("6.8.3").row_of().name, "6.6");
        assert_eq!(v("6.8.3").rules_release(), Release::new(6, 6, 0));
        assert!(v("6.8.3").note().unwrap().contains("between `6.6` (6.6.0) and `6.12` (6.12.118)"));
        // 7.2 stands for 6.19 to 7.2; 6.16 lies between 6.12 and 6.18.
        assert_eq!(v("7.0.5").row_of().name, "7.2");
        assert_eq!(v("7.0.5").rules_release(), Release::new(7, 0, 5));
        assert_eq!(v("6.16").rules_release(), Release::new(6, 12, 118));
        assert_eq!(v("7.3.1").row_of().name, "7.3");
        assert_eq!(v("6.12").note(), None);
        assert!(v("6.12.118").note().unwrap().contains("the `6.12` row"));
    }

    #[test]
    fn spans_bound_stable_backports_to_their_series() {
        let spans = [Span::Stable(Release::new(6, 12, 117)), Span::Mainline(Release::new(7, 3, 4))];
        assert!(!has(&spans, Release::new(6, 12, 116)));
        assert!(has(&spans, Release::new(6, 12, 117)));
        assert!(!has(&spans, Release::new(6, 13, 0)));
        assert!(has(&spans, Release::new(7, 4, 0)));
    }
}
