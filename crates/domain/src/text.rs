//! Bounded text: every string a client sends has a length limit and no control characters.

/// Limits shared by the API and its documentation.
pub mod limits {
    pub const NAME: usize = 120;
    pub const TITLE: usize = 200;
    pub const DESCRIPTION: usize = 20_000;
    pub const SHORT: usize = 60;
    pub const SKU: usize = 64;
    pub const URL: usize = 2048;
    pub const NOTE: usize = 1000;
    pub const ADDRESS_LINE: usize = 200;
    pub const EMAIL: usize = 254;
    pub const IMAGES: usize = 10;
    pub const OPTIONS: usize = 3;
    pub const VARIANTS: usize = 100;
}

/// Trims and checks a single-line string: `min..=max` characters, no control characters.
pub fn line(raw: &str, min: usize, max: usize) -> Result<String, String> {
    check(raw, min, max, false)
}

/// Like [`line`] but newlines and tabs are allowed (descriptions, notes).
pub fn multiline(raw: &str, max: usize) -> Result<String, String> {
    check(raw, 0, max, true)
}

fn check(raw: &str, min: usize, max: usize, multiline: bool) -> Result<String, String> {
    let s = raw.trim();
    let n = s.chars().count();
    if n < min {
        return Err(if min == 1 { "must not be empty".into() } else { format!("must be at least {min} characters") });
    }
    if n > max {
        return Err(format!("must be at most {max} characters"));
    }
    let bad = s.chars().any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t' || c == '\r')));
    if bad {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_string())
}

/// An absolute http(s) URL or an uploaded `/media/` path (images, logos). Checked loosely.
pub fn url(raw: &str) -> Result<String, String> {
    let s = line(raw, 1, limits::URL)?;
    // Images uploaded to kirana itself are referenced by their path, so they survive a change of
    // the public host name. Only that one prefix, and only plain path characters, are allowed.
    if let Some(path) = s.strip_prefix("/media/") {
        let plain = path.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c));
        if !plain || path.contains("..") || path.contains("//") {
            return Err("must be an uploaded /media/ path or an http(s) URL".into());
        }
        return Ok(s);
    }
    let rest =
        s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).ok_or("must be an http:// or https:// URL")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || s.chars().any(char::is_whitespace) {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(s)
}

/// An e-mail address, checked for shape only (a real check is a message that arrives).
pub fn email(raw: &str) -> Result<String, String> {
    let s = line(raw, 3, limits::EMAIL)?;
    let (local, domain) = s.split_once('@').ok_or("must be an e-mail address")?;
    if local.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || s.chars().any(char::is_whitespace)
    {
        return Err("must be an e-mail address".into());
    }
    Ok(s.to_lowercase())
}

/// A host name for a custom domain: lowercase labels of letters, digits and hyphens.
pub fn domain(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let msg = "must be a domain name such as shop.example.com";
    if s.len() < 4 || s.len() > 253 || !s.contains('.') {
        return Err(msg.into());
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(msg.into());
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_trimmed_and_bounded() {
        assert_eq!(line("  Chai  ", 1, 10), Ok("Chai".into()));
        assert!(line("   ", 1, 10).is_err());
        assert!(line("abcdefghijk", 1, 10).is_err());
        assert!(line("a\u{0}b", 1, 10).is_err());
        // Limits count characters, not bytes: ten Devanagari letters fit in ten.
        assert!(line("किराना", 1, 6).is_ok());
    }

    #[test]
    fn multiline_text_keeps_newlines_but_not_other_controls() {
        assert!(multiline("a\nb", 10).is_ok());
        assert!(multiline("a\u{7}b", 10).is_err());
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert!(url("https://cdn.example.com/a.jpg").is_ok());
        assert!(url("javascript:alert(1)").is_err());
        assert!(url("https:///nohost").is_err());
        assert!(url("https://a b").is_err());
        assert!(url("/media/abc/def_10x10").is_ok());
        assert!(url("/media/../secret").is_err());
        assert!(url("/etc/passwd").is_err());
    }

    #[test]
    fn emails_and_domains_are_checked_for_shape() {
        assert_eq!(email("A@B.in"), Ok("a@b.in".into()));
        assert!(email("nope").is_err());
        assert_eq!(domain("Shop.Example.COM."), Ok("shop.example.com".into()));
        assert!(domain("-bad.com").is_err());
        assert!(domain("localhost").is_err());
    }
}
