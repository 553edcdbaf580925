//! Auto-compaction as etcd's v3compactor does it (--auto-compaction-mode,
//! --auto-compaction-retention).
//!
//! - periodic: the retention is a duration (a bare number means hours). The revision is
//!   sampled every tenth of the compaction interval (the retention, capped at one hour); once
//!   a full retention has passed, the store is compacted to the revision sampled a retention
//!   ago, and again every interval after that.
//! - revision: every 5 minutes, compact to (current revision - retention) when that moved.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::api::pb::etcdserverpb as pb;

use super::Core;

/// How often revision mode looks (etcd's revInterval).
const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(5 * 60);
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(60 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    Periodic(Duration),
    Revision(i64),
}

/// Parses the two flags as etcd does.
pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            let period = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => parse_duration(retention)
                    .ok_or_else(|| format!("--auto-compaction-retention: invalid duration {retention:?}"))?,
            };
            Ok(if period.is_zero() { AutoCompaction::Off } else { AutoCompaction::Periodic(period) })
        }
        "revision" => {
            let revisions: i64 = retention
                .parse()
                .map_err(|_| format!("--auto-compaction-retention: {retention:?} is not a number of revisions"))?;
            Ok(if revisions <= 0 { AutoCompaction::Off } else { AutoCompaction::Revision(revisions) })
        }
        other => Err(format!("--auto-compaction-mode: unknown mode {other:?} (periodic or revision)")),
    }
}

/// Go's time.ParseDuration for the units a retention uses: "1h30m", "45m", "10s", "500ms".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// Runs on the writer's core for the life of the server.
pub async fn run(core: Rc<Core>, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(period) => periodic(core, period).await,
        AutoCompaction::Revision(retention) => revision(core, retention).await,
    }
}

fn current_revision(core: &Core) -> i64 {
    core.shared.snapshot().revision()
}

async fn compact(core: &Core, revision: i64) -> bool {
    let request = pb::CompactionRequest { revision, physical: false };
    match core.compact(request).await {
        Ok(_) => {
            eprintln!("ringd: auto-compaction compacted to revision {revision}");
            true
        }
        Err(status) => status == crate::api::errors::COMPACTED,
    }
}

async fn periodic(core: Rc<Core>, period: Duration) {
    let interval = period.min(PERIODIC_INTERVAL_MAX);
    let sample_every = interval / 10;
    let samples_max = (period.as_secs_f64() / sample_every.as_secs_f64()) as usize + 1;
    let mut samples: VecDeque<i64> = VecDeque::with_capacity(samples_max + 1);
    let mut last_success = Instant::now();
    let mut wait = period;
    loop {
        samples.push_back(current_revision(&core));
        if samples.len() > samples_max {
            samples.pop_front();
        }
        glommio::timer::sleep(sample_every).await;
        if last_success.elapsed() < wait {
            continue;
        }
        wait = interval;
        let revision = samples[0];
        if revision > 0 && compact(&core, revision).await {
            last_success = Instant::now();
        }
    }
}

async fn revision(core: Rc<Core>, retention: i64) {
    let mut last = 0;
    loop {
        glommio::timer::sleep(REVISION_MODE_INTERVAL).await;
        let target = current_revision(&core) - retention;
        if target <= 0 || target == last {
            continue;
        }
        if compact(&core, target).await {
            last = target;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd() {
        assert_eq!(parse("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(parse("periodic", "1"), Ok(AutoCompaction::Periodic(Duration::from_secs(3600))));
        assert_eq!(parse("periodic", "30m"), Ok(AutoCompaction::Periodic(Duration::from_secs(1800))));
        assert_eq!(parse("periodic", "1h30m"), Ok(AutoCompaction::Periodic(Duration::from_secs(5400))));
        assert_eq!(parse("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert!(parse("revision", "1h").is_err());
        assert!(parse("hourly", "1").is_err());
        assert!(parse("periodic", "ten minutes").is_err());
    }
}
