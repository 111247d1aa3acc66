//! Bearer-token checks and the rule that only a local-only bind may run open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::path::Path;

use super::ServeError;

/// Compares two byte strings in time that depends only on their lengths, so a
/// client cannot find the token byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    // Walk the expected length whatever the input is, so a short guess costs
    // the same as a long one.
    for i in 0..b.len() {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// True when `header` (the whole `Authorization` value, if any) carries `token`.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(bearer_token)
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// The token from the config: the literal one, else the first line of the
/// token file. Empty tokens are refused (they would match nothing useful).
pub fn resolve_token(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, ServeError> {
    let token = match (token, token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| ServeError::TokenFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            Some(text.lines().next().unwrap_or("").trim().to_owned())
        }
        (None, None) => None,
    };
    match token {
        Some(t) if t.is_empty() => Err(ServeError::EmptyToken),
        other => Ok(other),
    }
}

/// True unless every address `bind` resolves to is exactly 127.0.0.1 or ::1.
///
/// Other 127.0.0.0/8 addresses count as exposed on purpose: they are used for
/// forwarded or container-facing listeners, and being strict costs nothing.
pub fn bind_requires_token(bind: &str) -> bool {
    let addrs: Vec<SocketAddr> = match bind.to_socket_addrs() {
        Ok(a) => a.collect(),
        // Unresolvable: the bind itself will fail; ask for a token meanwhile.
        Err(_) => return true,
    };
    addrs.is_empty() || addrs.iter().any(|a| !is_local_only(a.ip()))
}

fn is_local_only(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secrets", b"secret"));
        assert!(!constant_time_eq(b"Secret", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(authorized(Some("Bearer secret"), "secret"));
        assert!(authorized(Some("bearer  secret "), "secret"));
        assert!(!authorized(Some("Basic secret"), "secret"));
        assert!(!authorized(Some("Bearer"), "secret"));
        assert!(!authorized(None, "secret"));
    }

    #[test]
    fn only_the_plain_loopback_addresses_run_without_a_token() {
        assert!(!bind_requires_token("127.0.0.1:5000"));
        assert!(!bind_requires_token("[::1]:5000"));
        assert!(bind_requires_token("127.0.0.2:5000"));
        assert!(bind_requires_token("0.0.0.0:5000"));
        assert!(bind_requires_token("[::]:5000"));
        assert!(bind_requires_token("no-such-host.invalid:5000"));
    }

    #[test]
    fn empty_tokens_are_refused() {
        assert!(matches!(
            resolve_token(Some("  "), None),
            Err(ServeError::EmptyToken)
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        assert_eq!(
            resolve_token(None, Some(&file)).unwrap().as_deref(),
            Some("abc123")
        );
        assert!(matches!(
            resolve_token(None, Some(&dir.path().join("missing"))),
            Err(ServeError::TokenFile { .. })
        ));
    }
}
