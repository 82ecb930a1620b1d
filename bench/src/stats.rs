//! Percentiles of latency samples and median (min–max) summaries over runs.

use std::time::Duration;

use serde::Serialize;

/// Nearest-rank percentile `p` (0–100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied()
}

/// Latency samples collected by a scenario.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<f64>,
}

impl Samples {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            micros: Vec::with_capacity(n),
        }
    }

    /// Records one duration.
    pub fn push(&mut self, d: Duration) {
        self.micros.push(d.as_secs_f64() * 1e6);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The p50 and p99 in microseconds (`None` without samples).
    pub fn p50_p99(&self) -> Option<(f64, f64)> {
        let mut s = self.micros.clone();
        s.sort_by(f64::total_cmp);
        Some((percentile(&s, 50.0)?, percentile(&s, 99.0)?))
    }
}

/// Median, min and max of one figure over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// The summary of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut s = values.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_takes_the_middle_of_an_even_count() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).expect("non-empty");
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        let s = Summary::of(&[9.0, 1.0, 5.0]).expect("non-empty");
        assert_eq!(s.median, 5.0);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn samples_report_p50_and_p99_in_micros() {
        let mut s = Samples::with_capacity(100);
        for i in 1..=100u64 {
            s.push(Duration::from_micros(i));
        }
        let (p50, p99) = s.p50_p99().expect("samples");
        assert!((p50 - 50.0).abs() < 1e-6 && (p99 - 99.0).abs() < 1e-6);
        assert!(Samples::default().p50_p99().is_none());
    }
}
