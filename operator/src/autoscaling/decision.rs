//! The autoscaler's decision: how many chat-server pods should run for the cluster's total
//! open connections, the way a HorizontalPodAutoscaler decides.
//!
//! [`decide`] turns one connections sample into a replica count: the pods the connections
//! need (`ceil(total / target)`), held at the current count inside a tolerance band, scaled
//! up at once but at most doubling per step, scaled down only to the highest recommendation
//! seen in the stabilization window, clamped to `[minReplicas, maxReplicas]`, and never
//! moved at all on bad data (no series, several series, a non-finite or negative value, a
//! stale sample).
//!
//! Pure: the caller queries Prometheus, passes the sample, the recommendation history it
//! stored from the previous call and the current time, and stores the history that comes
//! back. No I/O and no clock, so every rule is unit-tested below.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// Default tolerance band: no scaling while the load is within 10% of the current
/// replicas × target.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// Default staleness limit: a sample older than this (or this far in the future) is bad
/// data.
pub const DEFAULT_STALENESS_LIMIT: Duration = Duration::from_secs(120);

/// The most recommendations the history keeps; the oldest are dropped beyond it.
pub const MAX_HISTORY: usize = 1_000;

/// Slack on the tolerance comparison so that a ratio exactly on the band's edge (e.g.
/// 440 / 400 = 1.1 with tolerance 0.1) counts as inside despite float rounding.
const TOLERANCE_EPSILON: f64 = 1e-9;

/// What the connections query returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// The query returned no series (e.g. no pod is scraped yet).
    NoData,
    /// The query returned more than one series; it should sum to a single one.
    MultipleSeries {
        /// How many series came back.
        count: usize,
    },
    /// A single value: the cluster's total open connections, as Prometheus reports it.
    Value {
        /// Total open connections. NaN, ±Inf or negative is bad data.
        total: f64,
        /// When Prometheus sampled it.
        at: Timestamp,
    },
}

/// One past recommendation (the replicas the connections asked for, before the scale-up
/// limit and the bounds), kept for scale-down stabilization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// When it was made (the `now` of that call).
    pub at: Timestamp,
    /// The replicas recommended.
    pub replicas: i32,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Input<'a> {
    /// Replicas running now (the StatefulSet's `spec.replicas`). Negative counts as 0.
    pub current_replicas: i32,
    /// `autoscaling.minReplicas`. Wins over `max_replicas` if it is larger.
    pub min_replicas: i32,
    /// `autoscaling.maxReplicas`.
    pub max_replicas: i32,
    /// `autoscaling.targetConnectionsPerPod`. Values below 1 count as 1.
    pub target_per_pod: i32,
    /// Tolerance band as a fraction (see [`DEFAULT_TOLERANCE`]). NaN or negative counts
    /// as 0.
    pub tolerance: f64,
    /// `autoscaling.scaleDownStabilizationSeconds`: how far back the highest
    /// recommendation holds a scale-down.
    pub scale_down_stabilization: Duration,
    /// How far the sample's time may be from `now` (see [`DEFAULT_STALENESS_LIMIT`]).
    pub staleness_limit: Duration,
    /// The connections query's result.
    pub sample: Sample,
    /// The history returned by the previous call (empty on the first).
    pub history: &'a [Recommendation],
    /// The current time.
    pub now: Timestamp,
}

/// Why the decision is what it is. [`Reason::as_str`] is stable: it is a condition
/// reason and an Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// More replicas: what the connections need.
    ScaledUp,
    /// Fewer replicas: what the connections need, nothing higher in the window.
    ScaledDown,
    /// The connections need exactly the current replicas.
    Steady,
    /// The load is within the tolerance band of the current replicas × target.
    WithinTolerance,
    /// A higher recommendation in the stabilization window holds a scale-down.
    ScaleDownStabilized,
    /// The scale-up is cut to max(2 × current, current + 1) for this step.
    ScaleUpLimited,
    /// The connections need more than `maxReplicas`.
    AtMaxReplicas,
    /// The connections need fewer than `minReplicas`.
    AtMinReplicas,
    /// Bad data: the query returned no series.
    NoData,
    /// Bad data: the query returned several series.
    MultipleSeries,
    /// Bad data: the value is NaN, infinite or negative.
    InvalidValue,
    /// Bad data: the sample is older (or further in the future) than the staleness limit.
    StaleData,
}

impl Reason {
    /// The reason as a stable PascalCase string, e.g. `"ScaledUp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaledUp => "ScaledUp",
            Reason::ScaledDown => "ScaledDown",
            Reason::Steady => "Steady",
            Reason::WithinTolerance => "WithinTolerance",
            Reason::ScaleDownStabilized => "ScaleDownStabilized",
            Reason::ScaleUpLimited => "ScaleUpLimited",
            Reason::AtMaxReplicas => "AtMaxReplicas",
            Reason::AtMinReplicas => "AtMinReplicas",
            Reason::NoData => "NoData",
            Reason::MultipleSeries => "MultipleSeries",
            Reason::InvalidValue => "InvalidValue",
            Reason::StaleData => "StaleData",
        }
    }

    /// True for the bad-data reasons, where the autoscaler did not act on the sample.
    pub fn is_bad_data(self) -> bool {
        matches!(
            self,
            Reason::NoData | Reason::MultipleSeries | Reason::InvalidValue | Reason::StaleData
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The autoscaler's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replicas that should run.
    pub desired_replicas: i32,
    /// Why.
    pub reason: Reason,
    /// For people: the numbers behind the decision (total, target, current, the replicas
    /// the connections need, the bound applied).
    pub message: String,
    /// False when the sample was bad data and the autoscaler held the current replicas
    /// (a `ScalingActive`-style condition).
    pub scaling_active: bool,
    /// The recommendation history to pass to the next call: samples outside the
    /// stabilization window dropped, this call's recommendation appended (valid data
    /// only), at most [`MAX_HISTORY`] entries.
    pub history: Vec<Recommendation>,
}

/// Decides the replicas for one sample; see the module documentation for the rules.
///
/// Bad data keeps `current_replicas` (still clamped to the bounds, which are not data).
/// If `min_replicas > max_replicas`, `min_replicas` wins. Never panics or overflows.
pub fn decide(input: &Input<'_>) -> Decision {
    let current = input.current_replicas.max(0);
    let (lo, hi) = (input.min_replicas, input.max_replicas);
    let window = input.scale_down_stabilization;
    let now = input.now;

    // Samples more than the window away from now, either way (a clock that jumped), go.
    let mut history: Vec<Recommendation> = input
        .history
        .iter()
        .filter(|r| now.duration_since(r.at).unsigned_abs() <= window)
        .copied()
        .collect();

    let hold = |reason: Reason, problem: String, history: Vec<Recommendation>| {
        let desired = current.min(hi).max(lo);
        let message = if desired == current {
            format!("{problem}: keeping {current} replicas")
        } else {
            format!(
                "{problem}: keeping {current} replicas, clamped to {desired} by \
                 [minReplicas {lo}, maxReplicas {hi}]"
            )
        };
        Decision {
            desired_replicas: desired,
            reason,
            message,
            scaling_active: false,
            history,
        }
    };

    let (total, at) = match input.sample {
        Sample::NoData => {
            let problem = "the connections query returned no series".to_owned();
            return hold(Reason::NoData, problem, history);
        }
        Sample::MultipleSeries { count } => {
            let problem =
                format!("the connections query returned {count} series, expected one (sum them)");
            return hold(Reason::MultipleSeries, problem, history);
        }
        Sample::Value { total, at } => (total, at),
    };
    if !total.is_finite() || total < 0.0 {
        let problem = format!("the connections query returned {total}, not a count");
        return hold(Reason::InvalidValue, problem, history);
    }
    let age = now.duration_since(at);
    if age.unsigned_abs() > input.staleness_limit {
        let limit = input.staleness_limit.as_secs();
        let secs = age.unsigned_abs().as_secs();
        let problem = if age.is_negative() {
            format!("the connections sample is {secs}s in the future, beyond the {limit}s staleness limit")
        } else {
            format!("the connections sample is {secs}s old, beyond the {limit}s staleness limit")
        };
        return hold(Reason::StaleData, problem, history);
    }

    let target = input.target_per_pod.max(1);
    // `>=` is false for NaN, so NaN and negative tolerances become 0.
    let tolerance = if input.tolerance >= 0.0 {
        input.tolerance
    } else {
        0.0
    };
    // Counts are i64 from here on, so no doubling or need can overflow; total is finite
    // and >= 0, and `as` saturates (a need beyond i64 is far above any maxReplicas).
    let need = (total / f64::from(target)).ceil() as i64;
    let current64 = i64::from(current);
    let within = current > 0
        && (total / (f64::from(current) * f64::from(target)) - 1.0).abs()
            <= tolerance + TOLERANCE_EPSILON;
    let recommendation = if within { current64 } else { need };

    history.push(Recommendation {
        at: now,
        replicas: saturate(recommendation),
    });
    if history.len() > MAX_HISTORY {
        let excess = history.len() - MAX_HISTORY;
        history.drain(..excess);
    }
    let highest = history
        .iter()
        .map(|r| i64::from(r.replicas))
        .fold(recommendation, i64::max);

    // Up at once; down only to the highest recommendation in the window (never above
    // current, never below the recommendation, which is in the history).
    let (proposal, stabilized) = if recommendation >= current64 {
        (recommendation, false)
    } else {
        let held = highest.min(current64);
        (held, held > recommendation)
    };

    let step_limit = (2 * current64).max(current64 + 1);
    let (lo64, hi64) = (i64::from(lo), i64::from(hi));
    let upper = if proposal > current64 {
        step_limit.min(hi64)
    } else {
        hi64
    };

    let mut desired64 = proposal;
    let mut bound = None;
    if desired64 > upper {
        desired64 = upper;
        bound = Some(if upper == hi64 {
            Reason::AtMaxReplicas
        } else {
            Reason::ScaleUpLimited
        });
    }
    if desired64 < lo64 {
        desired64 = lo64;
        bound = Some(Reason::AtMinReplicas);
    }
    // desired64 is now lo, hi, current or between them: an i32. Saturate, not cast.
    let desired = saturate(desired64);

    let reason = match bound {
        Some(b) => b,
        None if stabilized => Reason::ScaleDownStabilized,
        None if within && desired == current => Reason::WithinTolerance,
        None if desired > current => Reason::ScaledUp,
        None if desired < current => Reason::ScaledDown,
        None => Reason::Steady,
    };

    let load =
        format!("{total} connections at {target} per pod need {need} replicas, {current} running");
    let change = if desired > current {
        format!("scaling up to {desired}")
    } else if desired < current {
        format!("scaling down to {desired}")
    } else {
        format!("keeping {desired}")
    };
    let why = match reason {
        Reason::WithinTolerance => {
            format!("within tolerance {tolerance} of {current} × {target}: keeping {current}")
        }
        Reason::ScaleDownStabilized => format!(
            "{change}: held at the highest recommendation ({proposal}) of the last {}s",
            window.as_secs()
        ),
        Reason::ScaleUpLimited => format!(
            "{change}: recommended {proposal}, limited to max(2 × {current}, {current} + 1) = \
             {step_limit} per step"
        ),
        Reason::AtMaxReplicas => {
            format!("{change}: recommended {proposal}, limited to maxReplicas {hi}")
        }
        Reason::AtMinReplicas => {
            format!("{change}: recommended {proposal}, raised to minReplicas {lo}")
        }
        _ => change,
    };

    Decision {
        desired_replicas: desired,
        reason,
        message: format!("{load}; {why}"),
        scaling_active: true,
        history,
    }
}

/// `n` as an i32, saturating at the ends.
fn saturate(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}

/// How often a ChatCluster with autoscaling is looked at again when nothing else
/// changes (an HPA's default sync period; also the KEDA ScaledObject's polling interval).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// What the autoscaler did in one reconcile, for status, Events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the data was usable (the ScalingActive condition).
    pub active: bool,
    /// PascalCase reason for the condition, e.g. `ScaledUp`, `NoData`.
    pub reason: String,
    pub message: String,
    pub desired_replicas: i32,
    /// `Some((from, to))` when `spec.replicas` was written this time.
    pub scaled: Option<(i32, i32)>,
}

/// The ScalingActive outcome with `autoscaling.engine: keda`: KEDA decides, so the
/// operator only says who scales (or that KEDA is missing) and drains scale-downs.
pub fn keda_outcome(cluster: &crate::crd::ChatCluster, keda_served: bool) -> Outcome {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let target = cluster
        .spec
        .autoscaling
        .as_ref()
        .map_or(0, |a| a.target_connections_per_pod);
    let (reason, message) = if keda_served {
        (
            "KedaScaledObject",
            format!("KEDA scales this cluster through ScaledObject {name} (Prometheus trigger, {target} connections per pod); the operator drains every scale-down"),
        )
    } else {
        (
            "KedaNotInstalled",
            "autoscaling.engine is keda but KEDA is not installed; see the Degraded condition"
                .to_owned(),
        )
    };
    Outcome {
        active: keda_served,
        reason: reason.to_owned(),
        message,
        desired_replicas: cluster.spec.effective_replicas(),
        scaled: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: i64 = 1_800_000_000;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(BASE + s).unwrap()
    }

    fn value(total: f64) -> Sample {
        Sample::Value { total, at: t(0) }
    }

    fn history(entries: &[(i64, i32)]) -> Vec<Recommendation> {
        entries
            .iter()
            .map(|&(s, replicas)| Recommendation { at: t(s), replicas })
            .collect()
    }

    /// current, min, max, target 100, tolerance 0.1, 300 s window, 120 s staleness, now 0.
    fn input<'a>(
        current: i32,
        min: i32,
        max: i32,
        sample: Sample,
        history: &'a [Recommendation],
    ) -> Input<'a> {
        Input {
            current_replicas: current,
            min_replicas: min,
            max_replicas: max,
            target_per_pod: 100,
            tolerance: DEFAULT_TOLERANCE,
            scale_down_stabilization: Duration::from_secs(300),
            staleness_limit: DEFAULT_STALENESS_LIMIT,
            sample,
            history,
            now: t(0),
        }
    }

    struct Case {
        name: &'static str,
        current: i32,
        min: i32,
        max: i32,
        sample: Sample,
        history: &'static [(i64, i32)],
        desired: i32,
        reason: Reason,
    }

    fn check(cases: &[Case]) {
        for c in cases {
            let h = history(c.history);
            let d = decide(&input(c.current, c.min, c.max, c.sample, &h));
            assert_eq!(
                (d.desired_replicas, d.reason),
                (c.desired, c.reason),
                "{}: {}",
                c.name,
                d.message
            );
            assert_eq!(d.scaling_active, !c.reason.is_bad_data(), "{}", c.name);
        }
    }

    #[test]
    fn steady_and_tolerance() {
        check(&[
            Case {
                name: "5% over target is within tolerance",
                current: 4,
                min: 1,
                max: 10,
                sample: value(420.0),
                history: &[],
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Case {
                name: "exactly +10% is within tolerance",
                current: 4,
                min: 1,
                max: 10,
                sample: value(440.0),
                history: &[],
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Case {
                name: "exactly -10% is within tolerance",
                current: 4,
                min: 1,
                max: 10,
                sample: value(360.0),
                history: &[],
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Case {
                name: "within tolerance even though ceil would say 5",
                current: 4,
                min: 1,
                max: 10,
                sample: value(401.0),
                history: &[],
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Case {
                name: "outside tolerance but the need equals current",
                current: 4,
                min: 1,
                max: 10,
                sample: value(350.0),
                history: &[],
                desired: 4,
                reason: Reason::Steady,
            },
        ]);
    }

    #[test]
    fn scale_up() {
        check(&[
            Case {
                name: "from 1 with 10x load is limited to 2",
                current: 1,
                min: 1,
                max: 20,
                sample: value(1000.0),
                history: &[],
                desired: 2,
                reason: Reason::ScaleUpLimited,
            },
            Case {
                name: "from 4 at most 8",
                current: 4,
                min: 1,
                max: 100,
                sample: value(5000.0),
                history: &[],
                desired: 8,
                reason: Reason::ScaleUpLimited,
            },
            Case {
                name: "within the step limit scales straight to the need",
                current: 4,
                min: 1,
                max: 100,
                sample: value(600.0),
                history: &[],
                desired: 6,
                reason: Reason::ScaledUp,
            },
            Case {
                name: "to max reports AtMaxReplicas",
                current: 4,
                min: 1,
                max: 6,
                sample: value(5000.0),
                history: &[],
                desired: 6,
                reason: Reason::AtMaxReplicas,
            },
            Case {
                name: "max equal to the step limit reports AtMaxReplicas",
                current: 4,
                min: 1,
                max: 8,
                sample: value(5000.0),
                history: &[],
                desired: 8,
                reason: Reason::AtMaxReplicas,
            },
            Case {
                name: "already at max under load",
                current: 10,
                min: 1,
                max: 10,
                sample: value(5000.0),
                history: &[],
                desired: 10,
                reason: Reason::AtMaxReplicas,
            },
            Case {
                name: "above max (bounds lowered) comes down to max",
                current: 12,
                min: 1,
                max: 10,
                sample: value(1200.0),
                history: &[],
                desired: 10,
                reason: Reason::AtMaxReplicas,
            },
            Case {
                name: "zero current with load gets at least 1",
                current: 0,
                min: 0,
                max: 10,
                sample: value(500.0),
                history: &[],
                desired: 1,
                reason: Reason::ScaleUpLimited,
            },
            Case {
                name: "zero current with no load goes to min",
                current: 0,
                min: 1,
                max: 10,
                sample: value(0.0),
                history: &[],
                desired: 1,
                reason: Reason::AtMinReplicas,
            },
            Case {
                name: "negative current counts as 0",
                current: -3,
                min: 1,
                max: 10,
                sample: value(500.0),
                history: &[],
                desired: 1,
                reason: Reason::ScaleUpLimited,
            },
        ]);
    }

    #[test]
    fn scale_down_and_min() {
        check(&[
            Case {
                name: "no load goes to min",
                current: 3,
                min: 2,
                max: 10,
                sample: value(0.0),
                history: &[],
                desired: 2,
                reason: Reason::AtMinReplicas,
            },
            Case {
                name: "below min (bounds raised) goes up to min, past the step limit",
                current: 1,
                min: 5,
                max: 10,
                sample: value(300.0),
                history: &[],
                desired: 5,
                reason: Reason::AtMinReplicas,
            },
            Case {
                name: "no history: scale down to the need at once",
                current: 10,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[],
                desired: 3,
                reason: Reason::ScaledDown,
            },
            Case {
                name: "held at the highest recommendation in the window",
                current: 10,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[(-250, 10), (-100, 4)],
                desired: 10,
                reason: Reason::ScaleDownStabilized,
            },
            Case {
                name: "partly held: older peak left the window",
                current: 10,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[(-400, 10), (-100, 6)],
                desired: 6,
                reason: Reason::ScaleDownStabilized,
            },
            Case {
                name: "released once the peak is older than the window",
                current: 10,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[(-301, 10), (-200, 3)],
                desired: 3,
                reason: Reason::ScaledDown,
            },
            Case {
                name: "a peak exactly at the window's edge still holds",
                current: 10,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[(-300, 10)],
                desired: 10,
                reason: Reason::ScaleDownStabilized,
            },
            Case {
                name: "never below the raw need when history is lower",
                current: 10,
                min: 1,
                max: 20,
                sample: value(500.0),
                history: &[(-100, 2), (-50, 3)],
                desired: 5,
                reason: Reason::ScaledDown,
            },
            Case {
                name: "a higher peak than current does not scale up",
                current: 5,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[(-100, 12)],
                desired: 5,
                reason: Reason::ScaleDownStabilized,
            },
            Case {
                name: "a history entry far in the future (clock jumped back) is dropped",
                current: 10,
                min: 1,
                max: 20,
                sample: value(300.0),
                history: &[(3600, 10)],
                desired: 3,
                reason: Reason::ScaledDown,
            },
        ]);
    }

    #[test]
    fn bad_data_keeps_current() {
        check(&[
            Case {
                name: "no data",
                current: 4,
                min: 1,
                max: 10,
                sample: Sample::NoData,
                history: &[],
                desired: 4,
                reason: Reason::NoData,
            },
            Case {
                name: "multiple series",
                current: 4,
                min: 1,
                max: 10,
                sample: Sample::MultipleSeries { count: 3 },
                history: &[],
                desired: 4,
                reason: Reason::MultipleSeries,
            },
            Case {
                name: "NaN",
                current: 4,
                min: 1,
                max: 10,
                sample: value(f64::NAN),
                history: &[],
                desired: 4,
                reason: Reason::InvalidValue,
            },
            Case {
                name: "+Inf",
                current: 4,
                min: 1,
                max: 10,
                sample: value(f64::INFINITY),
                history: &[],
                desired: 4,
                reason: Reason::InvalidValue,
            },
            Case {
                name: "-Inf",
                current: 4,
                min: 1,
                max: 10,
                sample: value(f64::NEG_INFINITY),
                history: &[],
                desired: 4,
                reason: Reason::InvalidValue,
            },
            Case {
                name: "negative",
                current: 4,
                min: 1,
                max: 10,
                sample: value(-1.0),
                history: &[],
                desired: 4,
                reason: Reason::InvalidValue,
            },
            Case {
                name: "stale: 121 s old with a 120 s limit",
                current: 4,
                min: 1,
                max: 10,
                sample: Sample::Value {
                    total: 5000.0,
                    at: t(-121),
                },
                history: &[],
                desired: 4,
                reason: Reason::StaleData,
            },
            Case {
                name: "from the future beyond the limit",
                current: 4,
                min: 1,
                max: 10,
                sample: Sample::Value {
                    total: 5000.0,
                    at: t(600),
                },
                history: &[],
                desired: 4,
                reason: Reason::StaleData,
            },
            Case {
                name: "bad data ignores a stabilization peak",
                current: 4,
                min: 1,
                max: 10,
                sample: Sample::NoData,
                history: &[(-10, 9)],
                desired: 4,
                reason: Reason::NoData,
            },
            Case {
                name: "bad data still respects the bounds",
                current: 12,
                min: 1,
                max: 10,
                sample: Sample::NoData,
                history: &[],
                desired: 10,
                reason: Reason::NoData,
            },
            Case {
                name: "exactly at the staleness limit is fresh",
                current: 4,
                min: 1,
                max: 10,
                sample: Sample::Value {
                    total: 600.0,
                    at: t(-120),
                },
                history: &[],
                desired: 6,
                reason: Reason::ScaledUp,
            },
        ]);
    }

    #[test]
    fn odd_configuration_does_not_panic() {
        check(&[
            Case {
                name: "min > max with load: min wins",
                current: 4,
                min: 5,
                max: 3,
                sample: value(5000.0),
                history: &[],
                desired: 5,
                reason: Reason::AtMinReplicas,
            },
            Case {
                name: "min > max with no load: min wins",
                current: 4,
                min: 5,
                max: 3,
                sample: value(0.0),
                history: &[],
                desired: 5,
                reason: Reason::AtMinReplicas,
            },
            Case {
                name: "min > max with bad data: min wins",
                current: 4,
                min: 5,
                max: 3,
                sample: Sample::NoData,
                history: &[],
                desired: 5,
                reason: Reason::NoData,
            },
        ]);

        let mut i = input(4, 1, 10, value(600.0), &[]);
        i.target_per_pod = 0;
        i.tolerance = f64::NAN;
        let d = decide(&i);
        // target 0 counts as 1: 600 pods needed, limited to 8 per step.
        assert_eq!((d.desired_replicas, d.reason), (8, Reason::ScaleUpLimited));

        let mut i = input(4, 1, 10, value(420.0), &[]);
        i.tolerance = -1.0;
        assert_eq!(decide(&i).reason, Reason::ScaledUp);

        let mut i = input(10, 1, 20, value(300.0), &[]);
        let h = history(&[(-10, 10)]);
        i.history = &h;
        i.scale_down_stabilization = Duration::ZERO;
        let d = decide(&i);
        assert_eq!((d.desired_replicas, d.reason), (3, Reason::ScaledDown));

        let mut i = input(4, 1, 10, value(600.0), &[]);
        i.scale_down_stabilization = Duration::MAX;
        i.staleness_limit = Duration::MAX;
        assert_eq!(decide(&i).desired_replicas, 6);
    }

    #[test]
    fn large_numbers_do_not_overflow() {
        let cases: &[(i32, i32, f64, i32, i32, Reason)] = &[
            // (current, target, total, max, desired, reason)
            (
                1_000_000_000,
                1,
                1e12,
                i32::MAX,
                2_000_000_000,
                Reason::ScaleUpLimited,
            ),
            (
                1_500_000_000,
                1,
                1e12,
                i32::MAX,
                i32::MAX,
                Reason::AtMaxReplicas,
            ),
            (
                1_500_000_000,
                1,
                2.5e9,
                i32::MAX,
                i32::MAX,
                Reason::AtMaxReplicas,
            ),
            (
                1_500_000_000,
                1,
                2e9,
                i32::MAX,
                2_000_000_000,
                Reason::ScaledUp,
            ),
            (i32::MAX, 1, 1e12, i32::MAX, i32::MAX, Reason::AtMaxReplicas),
            (i32::MAX, 1, 1e12, 1000, 1000, Reason::AtMaxReplicas),
            (4, 1, 1e12, 1000, 8, Reason::ScaleUpLimited),
            (400, i32::MAX, 1e12, 1000, 466, Reason::ScaledUp),
            (466, i32::MAX, 1e12, 1000, 466, Reason::WithinTolerance),
            (4, 1, f64::MAX, 1000, 8, Reason::ScaleUpLimited),
        ];
        for &(current, target, total, max, desired, reason) in cases {
            let mut i = input(current, 1, max, value(total), &[]);
            i.target_per_pod = target;
            let d = decide(&i);
            assert_eq!(
                (d.desired_replicas, d.reason),
                (desired, reason),
                "current {current} target {target} total {total}: {}",
                d.message
            );
        }
    }

    #[test]
    fn history_is_pruned_appended_and_capped() {
        let h = history(&[(-400, 9), (-100, 7)]);
        let d = decide(&input(10, 1, 20, value(300.0), &h));
        assert_eq!(d.history, history(&[(-100, 7), (0, 3)]));

        // Bad data prunes but records nothing.
        let d = decide(&input(10, 1, 20, Sample::NoData, &h));
        assert_eq!(d.history, history(&[(-100, 7)]));

        // Within tolerance records the current count, not the ceil.
        let d = decide(&input(4, 1, 20, value(401.0), &[]));
        assert_eq!(d.history, history(&[(0, 4)]));

        let long: Vec<_> = (0..1500).map(|n| (-(n % 200), 2)).collect();
        let long = history(&long);
        let d = decide(&input(2, 1, 20, value(200.0), &long));
        assert_eq!(d.history.len(), MAX_HISTORY);
        assert_eq!(
            d.history.last(),
            Some(&Recommendation {
                at: t(0),
                replicas: 2
            })
        );
        assert_eq!(d.history[0], long[long.len() - (MAX_HISTORY - 1)]);
    }

    #[test]
    fn messages_carry_the_numbers() {
        let cases: &[(Input<'_>, &[&str])] = &[
            (
                input(1, 1, 20, value(1000.0), &[]),
                &[
                    "1000 connections",
                    "100 per pod",
                    "need 10",
                    "1 running",
                    "to 2",
                ],
            ),
            (
                input(4, 1, 6, value(5000.0), &[]),
                &["need 50", "4 running", "maxReplicas 6", "scaling up to 6"],
            ),
            (
                input(3, 2, 10, value(0.0), &[]),
                &[
                    "0 connections",
                    "need 0",
                    "minReplicas 2",
                    "scaling down to 2",
                ],
            ),
            (
                input(4, 1, 10, value(420.0), &[]),
                &["420", "tolerance 0.1", "keeping 4"],
            ),
            (
                input(4, 1, 10, Sample::MultipleSeries { count: 3 }, &[]),
                &["3 series", "keeping 4"],
            ),
            (input(4, 1, 10, value(f64::NAN), &[]), &["NaN", "keeping 4"]),
            (
                input(
                    4,
                    1,
                    10,
                    Sample::Value {
                        total: 1.0,
                        at: t(-121),
                    },
                    &[],
                ),
                &["121s old", "120s"],
            ),
        ];
        for (i, expected) in cases {
            let d = decide(i);
            for e in *expected {
                assert!(d.message.contains(e), "{e:?} not in {:?}", d.message);
            }
        }

        let h = history(&[(-100, 10)]);
        let d = decide(&input(10, 1, 20, value(300.0), &h));
        assert!(d.message.contains("need 3"), "{}", d.message);
        assert!(d.message.contains("300s"), "{}", d.message);
    }

    #[test]
    fn reason_strings_are_stable() {
        let all = [
            (Reason::ScaledUp, "ScaledUp", false),
            (Reason::ScaledDown, "ScaledDown", false),
            (Reason::Steady, "Steady", false),
            (Reason::WithinTolerance, "WithinTolerance", false),
            (Reason::ScaleDownStabilized, "ScaleDownStabilized", false),
            (Reason::ScaleUpLimited, "ScaleUpLimited", false),
            (Reason::AtMaxReplicas, "AtMaxReplicas", false),
            (Reason::AtMinReplicas, "AtMinReplicas", false),
            (Reason::NoData, "NoData", true),
            (Reason::MultipleSeries, "MultipleSeries", true),
            (Reason::InvalidValue, "InvalidValue", true),
            (Reason::StaleData, "StaleData", true),
        ];
        for (reason, s, bad) in all {
            assert_eq!(reason.as_str(), s);
            assert_eq!(reason.to_string(), s);
            assert_eq!(format!("{reason:?}"), s);
            assert_eq!(reason.is_bad_data(), bad, "{s}");
        }
    }

    /// Reaching exactly the step limit or exactly maxReplicas is a plain scale-up: only a
    /// recommendation beyond them is limited (mutation testing found this unchecked).
    #[test]
    fn reaching_a_limit_exactly_is_not_being_limited() {
        check(&[
            Case {
                name: "need exactly max(2 × current, current + 1)",
                current: 2,
                min: 1,
                max: 10,
                sample: value(400.0),
                history: &[],
                desired: 4,
                reason: Reason::ScaledUp,
            },
            Case {
                name: "need exactly maxReplicas",
                current: 3,
                min: 1,
                max: 5,
                sample: value(500.0),
                history: &[],
                desired: 5,
                reason: Reason::ScaledUp,
            },
        ]);
    }

    /// The message is the condition text a user reads: it says what was decided and why.
    #[test]
    fn messages_say_what_was_decided() {
        let message =
            |current: i32, total: f64| decide(&input(current, 1, 10, value(total), &[])).message;
        let up = message(2, 400.0);
        assert!(up.ends_with("; scaling up to 4"), "{up}");
        let down = message(8, 300.0);
        assert!(down.ends_with("; scaling down to 3"), "{down}");
        let steady = message(4, 350.0);
        assert!(steady.ends_with("; keeping 4"), "{steady}");
        let limited = message(2, 1_000.0);
        assert!(
            limited.ends_with(
                "; scaling up to 4: recommended 10, limited to max(2 × 2, 2 + 1) = 4 per step"
            ),
            "{limited}"
        );
        let held = |current: i32| decide(&input(current, 1, 10, Sample::NoData, &[])).message;
        assert_eq!(
            held(5),
            "the connections query returned no series: keeping 5 replicas"
        );
        assert_eq!(
            held(12),
            "the connections query returned no series: keeping 12 replicas, clamped to 10 by \
             [minReplicas 1, maxReplicas 10]"
        );
    }

    #[test]
    fn saturate_keeps_the_sign_at_the_ends() {
        assert_eq!(saturate(i64::MAX), i32::MAX);
        assert_eq!(saturate(i64::MIN), i32::MIN);
        assert_eq!(saturate(-7), -7);
    }
}
