//! Latency summaries.

use std::time::Duration;

/// Median, 99th percentile and rate of a set of timed operations.
pub struct Summary {
    pub median: Duration,
    pub p99: Duration,
    pub per_second: f64,
}

impl Summary {
    /// Summarises `samples`, each one operation, taken over `total` wall time.
    pub fn of(samples: &mut [Duration], total: Duration) -> Summary {
        samples.sort();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Summary {
            median: at(0.5),
            p99: at(0.99),
            per_second: samples.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE),
        }
    }
}

/// The times of runs of one operation and their wall time, pooled into one summary.
#[derive(Default, Clone)]
pub struct Timed {
    pub samples: Vec<Duration>,
    pub total: Duration,
}

impl Timed {
    pub fn append(&mut self, run: Timed) {
        self.samples.extend(run.samples);
        self.total += run.total;
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&mut self.samples.clone(), self.total)
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
