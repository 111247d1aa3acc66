//! Per-client token buckets: one for cheap reads, one for generation requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// Refill rate and size of one kind of bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub per_sec: f64,
    pub burst: f64,
}

/// Rate limits per client address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitConfig {
    /// GET/HEAD/DELETE: health, metrics, job status, downloads.
    pub read: Bucket,
    /// POST: requests that queue a generation.
    pub generate: Bucket,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            read: Bucket {
                per_sec: 50.0,
                burst: 100.0,
            },
            generate: Bucket {
                per_sec: 1.0,
                burst: 10.0,
            },
        }
    }
}

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Read,
    Generate,
}

#[derive(Clone, Copy, Debug)]
struct State {
    tokens: f64,
    at: Instant,
}

/// Above this many tracked clients, clients whose buckets are full again are
/// forgotten, so a scan from many addresses cannot grow the map for ever.
const MAX_TRACKED: usize = 4096;

/// The limiter; shared by all HTTP workers.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(IpAddr, Class), State>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`; `Err(retry_after_secs)` when none is left.
    pub fn check(&self, client: IpAddr, class: Class, now: Instant) -> Result<(), u64> {
        let bucket = match class {
            Class::Read => self.config.read,
            Class::Generate => self.config.generate,
        };
        let per_sec = bucket.per_sec.max(1e-6);
        let burst = bucket.burst.max(1.0);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED {
            let config = self.config;
            buckets.retain(|(_, c), s| {
                let b = match c {
                    Class::Read => config.read,
                    Class::Generate => config.generate,
                };
                let refilled = s.tokens
                    + now.saturating_duration_since(s.at).as_secs_f64() * b.per_sec.max(1e-6);
                refilled < b.burst.max(1.0)
            });
        }
        let state = buckets.entry((client, class)).or_insert(State {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.tokens = (state.tokens + elapsed * per_sec).min(burst);
        state.at = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let wait_secs = (1.0 - state.tokens) / per_sec;
            Err((wait_secs.ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            read: Bucket {
                per_sec: 2.0,
                burst: 3.0,
            },
            generate: Bucket {
                per_sec: 0.5,
                burst: 1.0,
            },
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = limiter();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(ip, Class::Read, t0), Ok(()));
        }
        assert_eq!(l.check(ip, Class::Read, t0), Err(1));
        // Half a second at 2/s refills one token.
        assert_eq!(
            l.check(ip, Class::Read, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert!(
            l.check(ip, Class::Read, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn classes_and_clients_have_their_own_buckets() {
        let l = limiter();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.check(a, Class::Generate, t0), Ok(()));
        // 0.5/s: the next token is two seconds away.
        assert_eq!(l.check(a, Class::Generate, t0), Err(2));
        assert_eq!(l.check(a, Class::Read, t0), Ok(()));
        assert_eq!(l.check(b, Class::Generate, t0), Ok(()));
    }

    #[test]
    fn the_client_map_stays_bounded() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = l.check(ip, Class::Read, t0);
        }
        let later = t0 + Duration::from_secs(10);
        let _ = l.check("10.9.9.9".parse().unwrap(), Class::Read, later);
        assert!(l.buckets.lock().len() < MAX_TRACKED);
    }
}
