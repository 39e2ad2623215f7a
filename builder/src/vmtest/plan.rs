//! `rampart test --list` and `--shard I/N`: every profile × scenario pair
//! of a vm-tests directory with the last known duration of each (the total
//! of its JUnit report in the profile's default output directory), and the
//! share of them one of N CI jobs runs, balanced by those durations. Every
//! job computes the same partition from the same files.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// What a pair without a report is assumed to take (a scenario with one
/// machine and a build, under TCG).
pub const UNKNOWN_SECONDS: f64 = 300.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The profile file, as the scenario names it (`<dir>/../profiles/NAME.toml`).
    pub profile: PathBuf,
    pub scenario: String,
    /// The total time of its last JUnit report, if there is one.
    pub last_seconds: Option<f64>,
}

impl Pair {
    fn weight(&self) -> f64 {
        self.last_seconds.unwrap_or(UNKNOWN_SECONDS)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "profile": self.profile, "scenario": self.scenario, "last-seconds": self.last_seconds })
    }
}

/// `--shard I/N`: the I-th of N shares, counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?} is not a shard: give I/N with 1 <= I <= N (e.g. 2/4)");
        let (index, count) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (index.parse().map_err(|_| bad())?, count.parse().map_err(|_| bad())?);
        if index == 0 || count == 0 || index > count || count > 1000 {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The pairs of the scenarios in `dir`, sorted by scenario name; with
/// `profile`, only that profile's. `last` gives a pair's last duration.
pub fn pairs(dir: &Path, profile: Option<&Path>, last: impl Fn(&Path, &str) -> Option<f64>) -> Result<Vec<Pair>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("while looking for scenarios in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let wanted = profile.map(|p| std::fs::canonicalize(p).with_context(|| format!("while reading {}", p.display()))).transpose()?;
    let mut pairs = Vec::new();
    for path in paths {
        let scenario = crate::vmtest::scenario::load(&path)?;
        if let Some(wanted) = &wanted {
            if std::fs::canonicalize(&scenario.profile_path).ok().as_ref() != Some(wanted) {
                continue;
            }
        }
        let last_seconds = last(&scenario.profile_path, &scenario.name);
        pairs.push(Pair { profile: tidy(&scenario.profile_path), scenario: scenario.name, last_seconds });
    }
    if pairs.is_empty() {
        bail!("no scenario in {}{}", dir.display(), profile.map(|p| format!(" tests {}", p.display())).unwrap_or_default());
    }
    Ok(pairs)
}

/// `path` without `dir/..` steps (as written, no link followed): what a
/// reader expects to see, `profiles/baseline.toml`.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<Component> = Vec::new();
    for part in path.components() {
        match part {
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            Component::CurDir => {}
            other => parts.push(other),
        }
    }
    parts.iter().collect()
}

/// The total time of a JUnit report rampart wrote (`<testsuites ... time="S">`).
pub fn junit_seconds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("<testsuites"))?;
    let rest = &line[line.find(" time=\"")? + 7..];
    rest[..rest.find('"')?].parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0)
}

/// The pairs of share `shard`: longest first, each to the share with the
/// least time so far (ties to the lower share), so every share gets about
/// the same time; within a share, in list order.
pub fn share(pairs: &[Pair], shard: Shard) -> Vec<Pair> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&a, &b| pairs[b].weight().total_cmp(&pairs[a].weight()).then(a.cmp(&b)));
    let mut load = vec![0.0_f64; shard.count];
    let mut owner = vec![0; pairs.len()];
    for i in order {
        let least = (0..shard.count).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).expect("at least one share");
        load[least] += pairs[i].weight();
        owner[i] = least;
    }
    pairs.iter().enumerate().filter(|(i, _)| owner[*i] == shard.index - 1).map(|(_, p)| p.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, seconds: Option<f64>) -> Pair {
        Pair { profile: PathBuf::from("profiles/p.toml"), scenario: name.into(), last_seconds: seconds }
    }

    #[test]
    fn paths_lose_their_up_and_back_steps() {
        assert_eq!(tidy(Path::new("vm-tests/../profiles/baseline.toml")), PathBuf::from("profiles/baseline.toml"));
        assert_eq!(tidy(Path::new("../profiles/../vm-tests/../profiles/x.toml")), PathBuf::from("../profiles/x.toml"));
        assert_eq!(tidy(Path::new("/srv/site/./vm-tests/../profiles/x.toml")), PathBuf::from("/srv/site/profiles/x.toml"));
    }

    #[test]
    fn shards_are_read_as_i_of_n() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_pair_is_in_exactly_one_share_and_the_shares_are_balanced() {
        let pairs = vec![pair("baseline", Some(1764.0)), pair("gateway", Some(277.0)), pair("lab-bastion", Some(506.0)), pair("sealed", Some(417.0)), pair("new", None), pair("build-host", Some(139.0))];
        let shares: Vec<Vec<Pair>> = (1..=2).map(|i| share(&pairs, Shard { index: i, count: 2 })).collect();
        let mut all: Vec<String> = shares.iter().flatten().map(|p| p.scenario.clone()).collect();
        all.sort();
        assert_eq!(all, ["baseline", "build-host", "gateway", "lab-bastion", "new", "sealed"]);
        // the longest alone in one share, the rest in the other
        assert_eq!(shares[0].iter().map(|p| p.scenario.as_str()).collect::<Vec<_>>(), ["baseline"]);
        assert_eq!(share(&pairs, Shard { index: 1, count: 1 }), pairs, "one share is everything, in order");
        assert_eq!(share(&pairs, Shard { index: 2, count: 2 }), shares[1], "the same partition every time");
    }

    #[test]
    fn a_reports_total_time_is_its_duration() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"rampart\" tests=\"3\" failures=\"0\" time=\"412.500\">\n  <testsuite name=\"x\" time=\"1.0\">\n";
        assert_eq!(junit_seconds(xml), Some(412.5));
        assert_eq!(junit_seconds("<testsuites name=\"rampart\">"), None);
        assert_eq!(junit_seconds("<testsuites time=\"-3\">"), None);
    }
}
