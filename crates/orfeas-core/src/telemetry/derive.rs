//! Dashboard and alert values computed from registry snapshots the way PromQL
//! computes them: `rate` with Prometheus's extrapolation, `histogram_quantile`
//! with its bucket interpolation, sums and maxima over label selections.

use std::collections::VecDeque;

use prometheus::proto::{MetricFamily, MetricType};

/// One sample of the exposition: `name` includes `_bucket`/`_sum`/`_count`.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl FlatSample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Flattens gathered families into samples, as a scrape would see them.
pub fn flatten(families: &[MetricFamily]) -> Vec<FlatSample> {
    let mut out = Vec::new();
    for mf in families {
        for m in mf.get_metric() {
            let labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            let name = mf.name();
            match mf.get_field_type() {
                MetricType::COUNTER => out.push(sample(name, &labels, m.get_counter().get_value())),
                MetricType::GAUGE => out.push(sample(name, &labels, m.get_gauge().get_value())),
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let bucket_name = format!("{name}_bucket");
                    for b in h.get_bucket() {
                        let mut l = labels.clone();
                        l.push(("le".to_owned(), format_le(b.upper_bound())));
                        out.push(FlatSample {
                            name: bucket_name.clone(),
                            labels: l,
                            value: b.cumulative_count() as f64,
                        });
                    }
                    let mut l = labels.clone();
                    l.push(("le".to_owned(), "+Inf".to_owned()));
                    out.push(FlatSample {
                        name: bucket_name,
                        labels: l,
                        value: h.get_sample_count() as f64,
                    });
                    out.push(sample(&format!("{name}_sum"), &labels, h.get_sample_sum()));
                    out.push(sample(
                        &format!("{name}_count"),
                        &labels,
                        h.get_sample_count() as f64,
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

fn sample(name: &str, labels: &[(String, String)], value: f64) -> FlatSample {
    FlatSample {
        name: name.to_owned(),
        labels: labels.to_vec(),
        value,
    }
}

fn format_le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".to_owned()
    } else {
        format!("{le}")
    }
}

/// A label matcher, as in a PromQL selector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Matcher {
    Eq(&'static str, &'static str),
    Ne(&'static str, &'static str),
    /// `label=~"prefix.*"` (status classes such as `2..`).
    Prefix(&'static str, &'static str),
}

impl Matcher {
    fn matches(&self, s: &FlatSample) -> bool {
        match *self {
            Matcher::Eq(k, v) => s.label(k).unwrap_or("") == v,
            Matcher::Ne(k, v) => s.label(k).unwrap_or("") != v,
            Matcher::Prefix(k, p) => s.label(k).unwrap_or("").starts_with(p),
        }
    }
}

/// A metric name and matchers.
#[derive(Clone, Debug, PartialEq)]
pub struct Sel {
    pub metric: &'static str,
    pub matchers: Vec<Matcher>,
}

/// Builds a selector: `sel("errors_total", &[])`.
pub fn sel(metric: &'static str, matchers: &[Matcher]) -> Sel {
    Sel {
        metric,
        matchers: matchers.to_vec(),
    }
}

/// How the series a selector matches are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agg {
    Sum,
    Max,
    Min,
    Avg,
}

/// A value derived from the metrics, evaluated at the newest snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `agg(selector)` of gauges (or of counters' raw totals).
    Value(Sel, Agg),
    /// `sum(rate(selector[window]))`.
    Rate(Sel, u32),
    /// `histogram_quantile(q, sum by (le) (rate(metric_bucket{matchers}[window])))`;
    /// `Sel::metric` is the histogram's base name.
    Quantile(f64, Sel, u32),
    /// Observations per second that fell in `(lower_le, upper_le]` (heatmap cells).
    BucketRate(Sel, f64, f64, u32),
    Div(Box<Expr>, Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Scale(Box<Expr>, f64),
}

impl Expr {
    pub fn over(self, other: Expr) -> Expr {
        Expr::Div(Box::new(self), Box::new(other))
    }
    pub fn plus(self, other: Expr) -> Expr {
        Expr::Add(Box::new(self), Box::new(other))
    }
    pub fn scale(self, factor: f64) -> Expr {
        Expr::Scale(Box::new(self), factor)
    }

    fn collect_keys(&self, keys: &mut Vec<RawKey>) {
        let mut push = |k: RawKey| {
            if !keys.contains(&k) {
                keys.push(k);
            }
        };
        match self {
            Expr::Value(s, agg) => push(RawKey {
                sel: s.clone(),
                agg: *agg,
                by_le: false,
            }),
            Expr::Rate(s, _) => push(RawKey {
                sel: s.clone(),
                agg: Agg::Sum,
                by_le: false,
            }),
            Expr::Quantile(_, s, _) | Expr::BucketRate(s, _, _, _) => push(RawKey {
                sel: Sel {
                    metric: s.metric,
                    matchers: s.matchers.clone(),
                },
                agg: Agg::Sum,
                by_le: true,
            }),
            Expr::Div(a, b) | Expr::Add(a, b) => {
                a.collect_keys(keys);
                b.collect_keys(keys);
            }
            Expr::Scale(a, _) => a.collect_keys(keys),
        }
    }

    fn max_window_secs(&self) -> u32 {
        match self {
            Expr::Value(..) => 0,
            Expr::Rate(_, w) | Expr::Quantile(_, _, w) | Expr::BucketRate(_, _, _, w) => *w,
            Expr::Div(a, b) | Expr::Add(a, b) => a.max_window_secs().max(b.max_window_secs()),
            Expr::Scale(a, _) => a.max_window_secs(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct RawKey {
    sel: Sel,
    agg: Agg,
    /// Histogram buckets summed by `le` (the selector names the base metric).
    by_le: bool,
}

#[derive(Clone, Debug)]
enum RawValue {
    Scalar(f64),
    /// `(le, cumulative count)` sorted by `le`.
    Buckets(Vec<(f64, f64)>),
}

impl RawKey {
    fn compute(&self, samples: &[FlatSample]) -> Option<RawValue> {
        if self.by_le {
            let bucket_name = format!("{}_bucket", self.sel.metric);
            let mut buckets: Vec<(f64, f64)> = Vec::new();
            for s in samples
                .iter()
                .filter(|s| s.name == bucket_name && self.sel.matchers.iter().all(|m| m.matches(s)))
            {
                let Some(le) = s.label("le").and_then(parse_le) else {
                    continue;
                };
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += s.value,
                    None => buckets.push((le, s.value)),
                }
            }
            if buckets.is_empty() {
                return None;
            }
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            return Some(RawValue::Buckets(buckets));
        }
        let mut values = samples
            .iter()
            .filter(|s| s.name == self.sel.metric && self.sel.matchers.iter().all(|m| m.matches(s)))
            .map(|s| s.value)
            .peekable();
        values.peek()?;
        let (n, sum, max, min) = values.fold(
            (0usize, 0.0, f64::NEG_INFINITY, f64::INFINITY),
            |(n, sum, max, min), v| (n + 1, sum + v, f64::max(max, v), f64::min(min, v)),
        );
        Some(RawValue::Scalar(match self.agg {
            Agg::Sum => sum,
            Agg::Max => max,
            Agg::Min => min,
            Agg::Avg => sum / n as f64,
        }))
    }
}

fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" => Some(f64::INFINITY),
        t => t.parse().ok(),
    }
}

struct RawSnapshot {
    t_secs: f64,
    values: Vec<Option<RawValue>>,
}

/// Keeps the raw aggregates a set of expressions needs over their longest
/// window and evaluates the expressions at the newest snapshot.
pub struct Deriver {
    keys: Vec<RawKey>,
    history: VecDeque<RawSnapshot>,
    keep_secs: f64,
}

impl Deriver {
    pub fn new<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Deriver {
        let mut keys = Vec::new();
        let mut max_window = 0;
        for e in exprs {
            e.collect_keys(&mut keys);
            max_window = max_window.max(e.max_window_secs());
        }
        Deriver {
            keys,
            history: VecDeque::new(),
            keep_secs: f64::from(max_window) + 1.0,
        }
    }

    /// Adds a snapshot taken at `t_secs` (any monotonic clock in seconds).
    pub fn push(&mut self, t_secs: f64, samples: &[FlatSample]) {
        let values = self.keys.iter().map(|k| k.compute(samples)).collect();
        self.history.push_back(RawSnapshot { t_secs, values });
        while self
            .history
            .front()
            .is_some_and(|s| s.t_secs < t_secs - self.keep_secs)
        {
            self.history.pop_front();
        }
    }

    /// The expression's value at the newest snapshot; `None` when PromQL would
    /// return no sample (missing series, too few points for a rate). NaN where
    /// PromQL gives NaN (0/0, a quantile of no observations).
    pub fn eval(&self, expr: &Expr) -> Option<f64> {
        let now = self.history.back()?;
        match expr {
            Expr::Value(s, agg) => match self.latest(now, s, *agg, false)? {
                RawValue::Scalar(v) => Some(*v),
                RawValue::Buckets(_) => None,
            },
            Expr::Rate(s, w) => {
                let idx = self.key_index(s, Agg::Sum, false)?;
                let points = self.window(idx, now.t_secs, *w, |v| match v {
                    RawValue::Scalar(x) => Some(*x),
                    RawValue::Buckets(_) => None,
                });
                extrapolated_rate(&points, now.t_secs, f64::from(*w))
            }
            Expr::Quantile(q, s, w) => {
                let buckets = self.bucket_rates(s, now.t_secs, *w)?;
                Some(bucket_quantile(*q, &buckets))
            }
            Expr::BucketRate(s, lower, upper, w) => {
                let buckets = self.bucket_rates(s, now.t_secs, *w)?;
                let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).map(|(_, r)| *r);
                let hi = at(*upper)?;
                let lo = if *lower <= 0.0 { 0.0 } else { at(*lower)? };
                Some((hi - lo).max(0.0))
            }
            Expr::Div(a, b) => Some(self.eval(a)? / self.eval(b)?),
            Expr::Add(a, b) => Some(self.eval(a)? + self.eval(b)?),
            Expr::Scale(a, f) => Some(self.eval(a)? * f),
        }
    }

    fn key_index(&self, s: &Sel, agg: Agg, by_le: bool) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k.sel == *s && k.agg == agg && k.by_le == by_le)
    }

    fn latest<'s>(
        &self,
        now: &'s RawSnapshot,
        s: &Sel,
        agg: Agg,
        by_le: bool,
    ) -> Option<&'s RawValue> {
        now.values.get(self.key_index(s, agg, by_le)?)?.as_ref()
    }

    fn window(
        &self,
        idx: usize,
        now_secs: f64,
        window_secs: u32,
        value: impl Fn(&RawValue) -> Option<f64>,
    ) -> Vec<(f64, f64)> {
        // Prometheus 2.x range selectors include both ends: [t - w, t].
        let start = now_secs - f64::from(window_secs) - 1e-9;
        self.history
            .iter()
            .filter(|s| s.t_secs >= start)
            .filter_map(|s| Some((s.t_secs, value(s.values.get(idx)?.as_ref()?)?)))
            .collect()
    }

    /// Per-`le` rates of a histogram's buckets over the window.
    fn bucket_rates(&self, s: &Sel, now_secs: f64, w: u32) -> Option<Vec<(f64, f64)>> {
        let idx = self.key_index(s, Agg::Sum, true)?;
        let Some(RawValue::Buckets(les)) = self.history.back()?.values.get(idx)?.as_ref() else {
            return None;
        };
        let mut out = Vec::with_capacity(les.len());
        for (le, _) in les {
            let points = self.window(idx, now_secs, w, |v| match v {
                RawValue::Buckets(b) => b.iter().find(|(l, _)| l == le).map(|(_, c)| *c),
                RawValue::Scalar(_) => None,
            });
            if let Some(r) = extrapolated_rate(&points, now_secs, f64::from(w)) {
                out.push((*le, r));
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Prometheus's `rate()` (promql/functions.go `extrapolatedRate`, 2.x): the
/// counter increase over the samples in the window, corrected for resets and
/// extrapolated towards the window's edges, per second of the window.
pub fn extrapolated_rate(points: &[(f64, f64)], now_secs: f64, window_secs: f64) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    if points.len() < 2 {
        return None;
    }
    let mut increase = last.1 - first.1;
    for pair in points.windows(2) {
        if pair[1].1 < pair[0].1 {
            increase += pair[0].1;
        }
    }
    let range_start = now_secs - window_secs;
    let mut to_start = first.0 - range_start;
    let to_end = now_secs - last.0;
    let sampled = last.0 - first.0;
    if sampled <= 0.0 {
        return None;
    }
    let average_gap = sampled / (points.len() - 1) as f64;
    if increase > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / increase);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average_gap * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average_gap / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average_gap / 2.0
    };
    Some(increase * (interval / sampled) / window_secs)
}

/// Prometheus's `histogram_quantile` over `(le, value)` buckets sorted by `le`.
pub fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let Some(last) = buckets.last() else {
        return f64::NAN;
    };
    if !last.0.is_infinite() || buckets.len() < 2 {
        return f64::NAN;
    }
    // Rates of cumulative buckets can be slightly non-monotonic; Prometheus
    // forces monotonicity the same way.
    let mut counts: Vec<f64> = buckets.iter().map(|b| b.1).collect();
    for i in 1..counts.len() {
        if counts[i] < counts[i - 1] {
            counts[i] = counts[i - 1];
        }
    }
    let observations = counts[counts.len() - 1];
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = counts
        .iter()
        .position(|c| *c >= rank)
        .unwrap_or(counts.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, mut count) = (0.0, counts[b]);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= counts[b - 1];
        rank -= counts[b - 1];
    }
    start + (buckets[b].0 - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_of_a_steady_counter_is_its_slope() {
        let points: Vec<(f64, f64)> = (0..=60)
            .map(|i| (f64::from(i), 2.0 * f64::from(i) + 10.0))
            .collect();
        let r = extrapolated_rate(&points, 60.0, 60.0).unwrap();
        assert!((r - 2.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 10 observations in (0, 1], 10 in (1, 2]: the median is at 1.
        let b = [(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert!((bucket_quantile(0.5, &b) - 1.0).abs() < 1e-9);
        assert!((bucket_quantile(0.75, &b) - 1.5).abs() < 1e-9);
        assert!(bucket_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    }
}
