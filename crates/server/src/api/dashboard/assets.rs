//! The dashboard's files (crates/server/web/), embedded in the binary at build time: the page
//! works on a network without internet access and needs no file next to the server.
//! This module must never serve anything but these files.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The page itself, served at `/`.
pub const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../../web/index.html"),
};

/// The file named `name` under `/assets/`, if it is one of ours.
pub fn asset(name: &str) -> Option<Asset> {
    let (content_type, body) = match name {
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../../../web/app.js"),
        ),
        "app.css" => (
            "text/css; charset=utf-8",
            include_str!("../../../web/app.css"),
        ),
        "favicon.svg" => ("image/svg+xml", include_str!("../../../web/favicon.svg")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The `Content-Security-Policy` of every dashboard response: only our own files, no inline
/// script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_files_are_served_and_none_loads_from_elsewhere() {
        assert!(asset("app.js").is_some());
        assert!(asset("favicon.svg").is_some());
        assert!(asset("../Cargo.toml").is_none());
        for file in [INDEX.body, asset("app.js").map_or("", |a| a.body)] {
            assert!(!file.contains("https://") && !file.contains("http://"));
        }
    }
}
