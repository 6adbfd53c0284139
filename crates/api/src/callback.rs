//! Which callback URLs a process may name (contract §5): http or https, bounded, and on a host
//! that `notifications.allowed_hosts` lists, so that callers cannot point the server at hosts
//! its operators did not choose.

use url::Url;

pub const MAX_CALLBACK_URL_CHARS: usize = 2048;

/// The allowed hosts: exact names or addresses, `*.example.com` for any subdomain of
/// `example.com`, or `*` for any host. Empty allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    allowed_hosts: Vec<String>,
}

impl CallbackPolicy {
    pub fn new(allowed_hosts: &[String]) -> Result<Self, String> {
        let mut hosts = Vec::with_capacity(allowed_hosts.len());
        for host in allowed_hosts {
            let host = host.trim().to_ascii_lowercase();
            let name = host.strip_prefix("*.").unwrap_or(&host);
            let bracketed_ipv6 = name.starts_with('[') && name.ends_with(']');
            let plain = !name.is_empty() && !name.contains(['/', ':', '*', '@', ' ']);
            let valid = host == "*" || plain || bracketed_ipv6;
            if !valid {
                return Err(format!(
                    "'{host}' is not a host name, an address, '*.domain' or '*' (without scheme, port or path)"
                ));
            }
            hosts.push(host);
        }
        Ok(Self { allowed_hosts: hosts })
    }

    /// The URL, checked; the error is shown to the caller.
    pub fn check(&self, text: &str) -> Result<Url, String> {
        self.check_as(text, "callbackUrl", "notifications.allowed_hosts", "notifications.signing_secret")
    }

    /// The same rules for another setting's URL (`field`), against the list called `list`;
    /// `instead` is what to use rather than credentials in the URL.
    pub fn check_as(&self, text: &str, field: &str, list: &str, instead: &str) -> Result<Url, String> {
        if text.chars().count() > MAX_CALLBACK_URL_CHARS {
            return Err(format!("{field} is longer than {MAX_CALLBACK_URL_CHARS} characters"));
        }
        let url = Url::parse(text).map_err(|e| format!("{field} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{field} must be an http or https URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{field} must not carry credentials; use {instead}"));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allows(&host) {
            return Err(format!("{field} host '{host}' is not in {list} of this server"));
        }
        Ok(url)
    }

    fn allows(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|allowed| match allowed.strip_prefix("*.") {
            _ if allowed == "*" => true,
            Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => allowed == host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> CallbackPolicy {
        CallbackPolicy::new(&hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn hosts_must_be_listed() {
        let p = policy(&["127.0.0.1", "*.Example.com", "[::1]"]);
        assert!(p.check("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check("https://hooks.example.com/x?y=1").is_ok());
        assert!(p.check("https://a.b.EXAMPLE.com/").is_ok());
        assert!(p.check("http://[::1]:8080/").is_ok());
        for refused in
            ["https://example.com/", "https://badexample.com/", "http://10.0.0.1/", "http://localhost/"]
        {
            let error = p.check(refused).unwrap_err();
            assert!(error.contains("allowed_hosts"), "{refused}: {error}");
        }
        assert!(policy(&[]).check("http://127.0.0.1/").is_err(), "none allowed by default");
        assert!(policy(&["*"]).check("http://anything.test/").is_ok());
    }

    #[test]
    fn only_plain_http_urls_of_bounded_length() {
        let p = policy(&["*"]);
        for (url, mention) in [
            ("ftp://h/x", "http or https"),
            ("not a url", "not a URL"),
            ("http://user:pw@h/", "credentials"),
            (&format!("http://h/{}", "x".repeat(3000)), "longer than"),
        ] {
            let error = p.check(url).unwrap_err();
            assert!(error.contains(mention), "{url}: {error}");
        }
    }

    #[test]
    fn other_settings_name_themselves_and_their_list() {
        let error = policy(&["a.test"])
            .check_as("http://b.test/", "url", "engine.push_allowed_hosts", "headers")
            .unwrap_err();
        assert_eq!(error, "url host 'b.test' is not in engine.push_allowed_hosts of this server");
        let error = policy(&["*"]).check_as("http://u:p@b.test/", "url", "l", "headers").unwrap_err();
        assert!(error.contains("url must not carry credentials; use headers"), "{error}");
    }

    #[test]
    fn patterns_are_checked() {
        for bad in ["http://h", "h:80", "*.", "", "a/b", "*x.com"] {
            assert!(CallbackPolicy::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
