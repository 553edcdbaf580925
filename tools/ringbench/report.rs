//! Latency recording and etcd's report (etcd's pkg/report, 3.4): the summary, the response
//! time histogram, the latency distribution and the error distribution, in etcd's layout
//! and with etcd's arithmetic, computed from an HDR histogram instead of a list of every
//! latency. Plus ringbench's own CPU time per request, JSON/CSV output and `.hgrm` export.
//!
//! Exactness: count, sum, minimum, maximum (so Average, Stddev, Fastest, Slowest) are
//! exact; percentiles and histogram buckets see each latency as its HDR bucket's highest
//! equivalent value clamped to [fastest, slowest], within 0.1% (3 significant digits).
//!
//! Self-contained (hdrhistogram, serde, libc) so that tests/ringbench.rs compiles it too.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

/// etcd's percentiles (pkg/report `pctls`).
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
const HISTOGRAM_BUCKETS: usize = 10;
const BAR_CHARACTER: &str = "∎";
const BAR_WIDTH_MAX: u64 = 40;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latencies of one kind of request, in nanoseconds.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub histogram: Histogram<u64>,
    pub count: u64,
    pub sum_ns: u128,
    pub sum_squares_ns: u128,
    pub min_ns: u64,
    pub max_ns: u64,
    /// Failed requests by error text (etcd's Error distribution).
    pub errors: BTreeMap<String, u64>,
    /// With --sample: per unix second, (min, max, sum, count) of latencies started then.
    pub seconds: Option<BTreeMap<i64, SecondPoint>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SecondPoint {
    pub min_ns: u64,
    pub max_ns: u64,
    pub sum_ns: u128,
    pub count: u64,
}

impl Recorder {
    pub fn new(sample: bool) -> Recorder {
        let mut histogram = Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is valid");
        histogram.auto(true);
        Recorder {
            histogram,
            count: 0,
            sum_ns: 0,
            sum_squares_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            errors: BTreeMap::new(),
            seconds: sample.then(BTreeMap::new),
        }
    }

    /// One successful request that started at `start_unix_second` and took `latency`.
    pub fn record(&mut self, latency: Duration, start_unix_second: i64) {
        let nanos = (latency.as_nanos() as u64).max(1);
        self.histogram.record(nanos).expect("auto-resizing histogram");
        self.count += 1;
        self.sum_ns += nanos as u128;
        self.sum_squares_ns += (nanos as u128) * (nanos as u128);
        self.min_ns = self.min_ns.min(nanos);
        self.max_ns = self.max_ns.max(nanos);
        if let Some(seconds) = &mut self.seconds {
            let point =
                seconds.entry(start_unix_second).or_insert(SecondPoint { min_ns: u64::MAX, ..Default::default() });
            point.min_ns = point.min_ns.min(nanos);
            point.max_ns = point.max_ns.max(nanos);
            point.sum_ns += nanos as u128;
            point.count += 1;
        }
        debug_assert_eq!(self.histogram.len(), self.count);
    }

    pub fn record_error(&mut self, error: String) {
        *self.errors.entry(error).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.histogram.add(&other.histogram).expect("auto-resizing histogram");
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.sum_squares_ns += other.sum_squares_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        for (error, count) in &other.errors {
            *self.errors.entry(error.clone()).or_insert(0) += count;
        }
        if let (Some(mine), Some(theirs)) = (&mut self.seconds, &other.seconds) {
            for (second, point) in theirs {
                let entry = mine.entry(*second).or_insert(SecondPoint { min_ns: u64::MAX, ..Default::default() });
                entry.min_ns = entry.min_ns.min(point.min_ns);
                entry.max_ns = entry.max_ns.max(point.max_ns);
                entry.sum_ns += point.sum_ns;
                entry.count += point.count;
            }
        }
        assert_eq!(self.histogram.len(), self.count);
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// (value in ns, count) ascending: each HDR bucket's latencies at the bucket's median
    /// equivalent clamped to [min, max], except that the fastest and the slowest latency
    /// keep their exact values (so they land in etcd's first and last histogram marks).
    fn buckets(&self) -> Vec<(u64, u64)> {
        let mut buckets: Vec<(u64, u64)> = Vec::new();
        let recorded: Vec<(u64, u64)> = self
            .histogram
            .iter_recorded()
            .map(|step| (self.histogram.median_equivalent(step.value_iterated_to()), step.count_at_value()))
            .collect();
        let last = recorded.len().saturating_sub(1);
        for (index, &(value, count)) in recorded.iter().enumerate() {
            let mut inner = count;
            if index == 0 {
                buckets.push((self.min_ns, 1));
                inner -= 1;
            }
            let keep_max = index == last && inner > 0;
            let middle = if keep_max { inner - 1 } else { inner };
            if middle > 0 {
                buckets.push((value.clamp(self.min_ns, self.max_ns), middle));
            }
            if keep_max {
                buckets.push((self.max_ns, 1));
            }
        }
        debug_assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), self.count);
        buckets
    }
}

/// Go's `Duration.Seconds()`: whole seconds plus the fraction, as etcd computes it.
pub fn go_seconds(nanos: u64) -> f64 {
    (nanos / 1_000_000_000) as f64 + (nanos % 1_000_000_000) as f64 / 1e9
}

/// The numbers etcd's report prints (pkg/report Stats), all in seconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Stats {
    pub total_seconds: f64,
    pub slowest: f64,
    pub fastest: f64,
    pub average: f64,
    pub stddev: f64,
    pub requests_per_second: f64,
    pub count: u64,
    /// The 11 bucket marks of the response time histogram and their counts.
    pub histogram: Vec<(f64, u64)>,
    /// etcd's percentiles (10 .. 99.9) and their latencies; 0 where etcd prints nothing.
    pub percentiles: Vec<(f64, f64)>,
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// etcd's arithmetic over a recorder and the run's wall time.
    pub fn compute(recorder: &Recorder, total: Duration) -> Stats {
        let count = recorder.count;
        let total_seconds = total.as_secs_f64();
        let (fastest, slowest, average, stddev) = if count == 0 {
            (0.0, 0.0, f64::NAN, f64::NAN)
        } else {
            // Population variance, exactly: (n Σx² - (Σx)²) / n², in ns², then seconds.
            let n = count as u128;
            let variance_ns = (n * recorder.sum_squares_ns - recorder.sum_ns * recorder.sum_ns) as f64 / (n * n) as f64;
            (
                go_seconds(recorder.min_ns),
                go_seconds(recorder.max_ns),
                recorder.sum_ns as f64 / 1e9 / count as f64,
                variance_ns.sqrt() / 1e9,
            )
        };
        let buckets = recorder.buckets();
        Stats {
            total_seconds,
            slowest,
            fastest,
            average,
            stddev,
            requests_per_second: count as f64 / total_seconds,
            count,
            histogram: histogram(&buckets, fastest, slowest),
            percentiles: percentiles(&buckets, count),
            errors: recorder.errors.clone(),
        }
    }
}

/// etcd's percentile rule: walking the sorted latencies with index i, the first i whose
/// i*100/n reaches the next percentile gives it, one percentile per i at most.
pub fn percentile_ranks(count: u64) -> Vec<Option<u64>> {
    let mut ranks = vec![None; PERCENTILES.len()];
    let mut next = 0;
    let mut index = 0u64;
    while index < count && next < PERCENTILES.len() {
        let current = index as f64 * 100.0 / count as f64;
        if current >= PERCENTILES[next] {
            ranks[next] = Some(index);
            next += 1;
        }
        index += 1;
    }
    ranks
}

fn percentiles(buckets: &[(u64, u64)], count: u64) -> Vec<(f64, f64)> {
    let ranks = percentile_ranks(count);
    let value_at = |rank: u64| {
        let mut seen = 0u64;
        for &(value, bucket_count) in buckets {
            seen += bucket_count;
            if rank < seen {
                return go_seconds(value);
            }
        }
        0.0
    };
    PERCENTILES.iter().zip(ranks).map(|(&percentile, rank)| (percentile, rank.map_or(0.0, value_at))).collect()
}

/// etcd's response time histogram: 10 equal buckets from fastest, the 11th mark at slowest;
/// each latency counts in the first mark it does not exceed.
fn histogram(buckets: &[(u64, u64)], fastest: f64, slowest: f64) -> Vec<(f64, u64)> {
    let width = (slowest - fastest) / HISTOGRAM_BUCKETS as f64;
    let mut marks: Vec<(f64, u64)> = (0..HISTOGRAM_BUCKETS).map(|i| (fastest + width * i as f64, 0)).collect();
    marks.push((slowest, 0));
    let mut mark = 0;
    for &(value, count) in buckets {
        let seconds = go_seconds(value);
        while seconds > marks[mark].0 && mark < HISTOGRAM_BUCKETS {
            mark += 1;
        }
        marks[mark].1 += count;
    }
    marks
}

/// etcd's number formats: `%4.4f`, or `%g` with --precise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fixed,
    Full,
}

impl Precision {
    pub fn format(self, value: f64) -> String {
        match self {
            Precision::Fixed => format!("{value:4.4}"),
            Precision::Full => go_general(value),
        }
    }
}

/// Go's `%g` (shortest representation; exponent form when the exponent is < -4 or >= 6).
pub fn go_general(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value.is_nan() {
            "NaN".into()
        } else if value == 0.0 {
            "0".into()
        } else {
            format!("{value}")
        };
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        format!("{value}")
    }
}

/// Go's `Duration.String()` for the --sample table (e.g. `1.5ms`, `2.000001s`).
pub fn go_duration(nanos: u64) -> String {
    let trim = |whole: u64, fraction: u64, digits: usize, unit: &str| {
        let fraction = format!("{fraction:0digits$}");
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            format!("{whole}{unit}")
        } else {
            format!("{whole}.{fraction}{unit}")
        }
    };
    match nanos {
        0 => "0s".into(),
        1..=999 => format!("{nanos}ns"),
        1_000..=999_999 => trim(nanos / 1_000, nanos % 1_000, 3, "µs"),
        1_000_000..=999_999_999 => trim(nanos / 1_000_000, nanos % 1_000_000, 6, "ms"),
        _ => {
            let (minutes, rest) = (nanos / 60_000_000_000, nanos % 60_000_000_000);
            let seconds = trim(rest / 1_000_000_000, rest % 1_000_000_000, 9, "s");
            let (hours, minutes) = (minutes / 60, minutes % 60);
            match (hours, minutes) {
                (0, 0) => seconds,
                (0, m) => format!("{m}m{seconds}"),
                (h, m) => format!("{h}h{m}m{seconds}"),
            }
        }
    }
}

/// etcd's report text (pkg/report `String()`), byte for byte in layout.
pub fn render(stats: &Stats, recorder: &Recorder, precision: Precision) -> String {
    let seconds = |value: f64| format!("{} secs", precision.format(value));
    let mut text = String::new();
    if stats.count > 0 {
        text += "\nSummary:\n";
        let _ = writeln!(text, "  Total:\t{}.", seconds(stats.total_seconds));
        let _ = writeln!(text, "  Slowest:\t{}.", seconds(stats.slowest));
        let _ = writeln!(text, "  Fastest:\t{}.", seconds(stats.fastest));
        let _ = writeln!(text, "  Average:\t{}.", seconds(stats.average));
        let _ = writeln!(text, "  Stddev:\t{}.", seconds(stats.stddev));
        let _ = writeln!(text, "  Requests/sec:\t{}", precision.format(stats.requests_per_second));
        text += "\nResponse time histogram:\n";
        let max = stats.histogram.iter().map(|&(_, count)| count).max().unwrap_or(0);
        for &(mark, count) in &stats.histogram {
            let bar = (count * BAR_WIDTH_MAX).checked_div(max).unwrap_or(0);
            let _ = writeln!(text, "  {} [{count}]\t|{}", precision.format(mark), BAR_CHARACTER.repeat(bar as usize));
        }
        text += "\nLatency distribution:\n";
        for &(percentile, value) in &stats.percentiles {
            if value > 0.0 {
                let _ = writeln!(text, "  {percentile}% in {}.", seconds(value));
            }
        }
        if let Some(points) = &recorder.seconds {
            text += &sample_table(points);
            text += "\n";
        }
    }
    if !stats.errors.is_empty() {
        text += "\nError distribution:\n";
        let mut errors: Vec<_> = stats.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (error, count) in errors {
            let _ = writeln!(text, "  [{count}]\t{error}");
        }
    }
    text
}

/// etcd's --sample table (one row per second, empty seconds filled in).
fn sample_table(points: &BTreeMap<i64, SecondPoint>) -> String {
    let mut text = String::from("\nSample in one second (unix latency throughput):\n");
    text += "UNIX-SECOND,MIN-LATENCY-MS,AVG-LATENCY-MS,MAX-LATENCY-MS,AVG-THROUGHPUT\n";
    let (Some(first), Some(last)) = (points.keys().next(), points.keys().next_back()) else { return text };
    for second in *first..=*last {
        let point = points.get(&second).copied().unwrap_or_default();
        let average = if point.count > 0 { (point.sum_ns / point.count as u128) as u64 } else { 0 };
        let min = if point.count > 0 { point.min_ns } else { 0 };
        let _ = writeln!(
            text,
            "{second},{},{},{},{}",
            go_duration(min),
            go_duration(average),
            go_duration(point.max_ns),
            point.count
        );
    }
    text
}

/// CPU time this process used (user, system), from getrusage(RUSAGE_SELF).
pub fn process_cpu() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we own; RUSAGE_SELF is always valid.
    let result = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(result, 0, "getrusage(RUSAGE_SELF) cannot fail");
    // SAFETY: initialised by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// What ringbench itself spent: so a reader can tell whether the client was the bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ClientCpu {
    pub user_seconds: f64,
    pub system_seconds: f64,
    pub microseconds_per_request: f64,
    /// CPU seconds per wall second: how many cores ringbench kept busy.
    pub cores_busy: f64,
}

impl ClientCpu {
    pub fn between(
        before: (Duration, Duration),
        after: (Duration, Duration),
        requests: u64,
        wall: Duration,
    ) -> ClientCpu {
        let user = after.0.saturating_sub(before.0).as_secs_f64();
        let system = after.1.saturating_sub(before.1).as_secs_f64();
        ClientCpu {
            user_seconds: user,
            system_seconds: system,
            microseconds_per_request: (user + system) * 1e6 / requests.max(1) as f64,
            cores_busy: (user + system) / wall.as_secs_f64().max(1e-9),
        }
    }

    pub fn render(&self) -> String {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        format!(
            "\nClient (ringbench itself):\n  CPU per request:\t{:.1} µs (user {:.4} secs, sys {:.4} secs).\n  Cores busy:\t{:.2} of {cores}.\n",
            self.microseconds_per_request, self.user_seconds, self.system_seconds, self.cores_busy
        )
    }
}

/// One run, for --output json|csv.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub operation: String,
    pub stats: Stats,
    pub client_cpu: ClientCpu,
}

pub const CSV_HEADER: &str = "operation,total_secs,requests,errors,requests_per_sec,fastest_secs,average_secs,slowest_secs,stddev_secs,p10_secs,p25_secs,p50_secs,p75_secs,p90_secs,p95_secs,p99_secs,p99.9_secs,client_cpu_us_per_request,client_cores_busy";

impl Outcome {
    pub fn csv_row(&self) -> String {
        let s = &self.stats;
        let mut row = format!(
            "{},{},{},{},{},{},{},{},{}",
            self.operation,
            s.total_seconds,
            s.count,
            s.errors.values().sum::<u64>(),
            s.requests_per_second,
            s.fastest,
            s.average,
            s.slowest,
            s.stddev
        );
        for (_, value) in &s.percentiles {
            let _ = write!(row, ",{value}");
        }
        let _ = write!(row, ",{},{}", self.client_cpu.microseconds_per_request, self.client_cpu.cores_busy);
        row
    }
}

/// HdrHistogram's percentile distribution (`.hgrm`), values in milliseconds.
pub fn hgrm(recorder: &Recorder) -> String {
    let mut text = format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    let histogram = &recorder.histogram;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let value = step.value_iterated_to() as f64 / 1e6;
        if quantile < 1.0 {
            let _ = writeln!(text, "{value:12.3} {quantile:2.12} {total:10} {:14.2}", 1.0 / (1.0 - quantile));
        } else {
            let _ = writeln!(text, "{value:12.3} {quantile:2.12} {total:10}");
        }
    }
    let mean = if recorder.count > 0 { recorder.sum_ns as f64 / recorder.count as f64 / 1e6 } else { 0.0 };
    let _ = writeln!(text, "#[Mean    = {mean:12.3}, StdDeviation   = {:12.3}]", histogram.stdev() / 1e6);
    let _ =
        writeln!(text, "#[Max     = {:12.3}, Total count    = {:12}]", recorder.max_ns as f64 / 1e6, recorder.count);
    let _ =
        writeln!(text, "#[Buckets = {:12}, SubBuckets     = {:12}]", histogram.buckets(), histogram.distinct_values());
    text
}
