//! Reading `/metrics`: the Prometheus text format parsed into samples, and the process's own
//! memory for the flat-memory tests.
#![allow(dead_code)]

use super::harness::Harness;

pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (enough for our own exposition: no escapes in values).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.trim().to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample { name: name.to_string(), labels, value: value.parse().ok()? })
        })
        .collect()
}

/// The value of the series `name` whose labels include all of `labels` (0 when absent).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

impl Harness {
    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> (String, Vec<Sample>) {
        let text = self.http.get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap();
        let samples = parse_metrics(&text);
        (text, samples)
    }
}

/// Scrapes the admin listener's `/metrics`.
pub async fn scrape(http: &reqwest::Client, admin: &str) -> Vec<Sample> {
    let text = http.get(format!("{admin}/metrics")).send().await.expect("scrape").text().await.expect("metrics text");
    parse_metrics(&text)
}

/// VmRSS of this test process in KiB (0 where /proc is not there).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
