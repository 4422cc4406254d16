//! Template rendering shared by the storefront and the dashboard: one minijinja environment
//! setup (HTML auto-escaping, the filters and functions templates use), and [`Pages`], the
//! built-in templates compiled once at startup.

use axum::response::Html;
use minijinja::value::{Kwargs, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::WebError;

use kirana_server::media::IMAGE_WIDTHS;

/// Configures an environment the same way for built-in and merchant templates: everything
/// `.html`/`.xml` is escaped unless a value is explicitly marked safe by our own code.
pub fn configure(env: &mut Environment<'_>) {
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") || name.ends_with(".xml") { AutoEscape::Html } else { AutoEscape::None }
    });
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env.set_formatter(escape_html);
    env.add_filter("money", money);
    env.add_filter("decimal", decimal);
    env.add_filter("datetime", datetime);
    env.add_filter("date", date);
    env.add_function("img", img);
}

/// Escapes `& < > " '` — everything HTML needs, in text and in quoted attributes. (The engine's
/// default also escapes `/`, which is safe but makes every URL in a page longer.)
fn escape_html(out: &mut minijinja::Output, state: &mut minijinja::State, value: &Value) -> Result<(), Error> {
    if !matches!(state.auto_escape(), AutoEscape::Html) || value.is_safe() || value.is_none() || value.is_undefined() {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = match value.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(value.to_string()),
    };
    let mut last = 0;
    for (i, b) in text.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.write_str(&text[last..i]).map_err(|_| Error::new(ErrorKind::WriteFailure, "write"))?;
        out.write_str(rep).map_err(|_| Error::new(ErrorKind::WriteFailure, "write"))?;
        last = i + 1;
    }
    out.write_str(&text[last..]).map_err(|_| Error::new(ErrorKind::WriteFailure, "write"))
}

/// Minor units as a plain decimal in the currency's own precision (`249.00`, `500`, `1.005`),
/// for machine-read places such as structured data.
pub fn decimal(minor: i64, currency: Option<String>) -> String {
    let exp =
        currency.as_deref().and_then(|c| kirana_domain::Currency::parse(c).ok()).map(|c| c.exponent()).unwrap_or(2);
    crate::dashboard::show_amount(minor, exp)
}

/// Renders minor units for people: `₹1,23,456.50` for INR (Indian grouping), `$1,234.50`…
pub fn money(minor: i64, currency: Option<String>) -> String {
    let code = currency.unwrap_or_else(|| "INR".into());
    let exp = kirana_domain::Currency::parse(&code).map(|c| c.exponent()).unwrap_or(2);
    let symbol = match code.as_str() {
        "INR" => "₹",
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        _ => "",
    };
    let neg = minor < 0;
    let m = minor.unsigned_abs();
    let div = 10u64.pow(u32::from(exp));
    let (whole, frac) = (m / div, m % div);
    let digits = whole.to_string();
    let grouped = if code == "INR" { group_indian(&digits) } else { group_western(&digits) };
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if symbol.is_empty() {
        out.push_str(&code);
        out.push(' ');
    } else {
        out.push_str(symbol);
    }
    out.push_str(&grouped);
    if exp > 0 {
        out.push_str(&format!(".{:0width$}", frac, width = usize::from(exp)));
    }
    out
}

fn group_western(d: &str) -> String {
    let mut out = String::new();
    for (i, ch) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn group_indian(d: &str) -> String {
    if d.len() <= 3 {
        return d.to_string();
    }
    let (head, tail) = d.split_at(d.len() - 3);
    let mut out = String::new();
    for (i, ch) in head.chars().enumerate() {
        if i > 0 && (head.len() - i) % 2 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out.push(',');
    out.push_str(tail);
    out
}

/// Times are shown in India Standard Time, the platform's home zone.
const SHOWN_OFFSET: time::UtcOffset = match time::UtcOffset::from_hms(5, 30, 0) {
    Ok(o) => o,
    Err(_) => time::UtcOffset::UTC,
};

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.to_offset(SHOWN_OFFSET))
}

fn datetime(s: String) -> String {
    match parse_time(&s) {
        Some(t) => format!("{} {} {}, {:02}:{:02}", t.day(), month(t.month()), t.year(), t.hour(), t.minute()),
        None => s,
    }
}

fn date(s: String) -> String {
    match parse_time(&s) {
        Some(t) => format!("{} {} {}", t.day(), month(t.month()), t.year()),
        None => s,
    }
}

fn month(m: time::Month) -> &'static str {
    use time::Month::*;
    match m {
        January => "Jan",
        February => "Feb",
        March => "Mar",
        April => "Apr",
        May => "May",
        June => "Jun",
        July => "Jul",
        August => "Aug",
        September => "Sep",
        October => "Oct",
        November => "Nov",
        December => "Dec",
    }
}

fn attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `{{ img(url, alt, sizes="…", eager=false) }}`: a responsive `<img>` with width and height
/// set (no layout shift). Uploaded images (`/media/<store>/<hash>_<W>x<H>`) get a `srcset` of
/// their resized variants; other URLs are shown as given, in a square box.
fn img(url: String, alt: Option<String>, kwargs: Kwargs) -> Result<Value, Error> {
    let sizes: Option<String> = kwargs.get("sizes")?;
    let eager: Option<bool> = kwargs.get("eager")?;
    kwargs.assert_all_used()?;
    let alt = attr(&alt.unwrap_or_default());
    let loading = if eager.unwrap_or(false) { "eager" } else { "lazy" };
    let html = match kirana_server::media::dimensions(&url) {
        Some((w, h)) => {
            // Variant files are named by their target width, never wider than the original.
            let files = kirana_server::media::variant_widths(w);
            let srcset: Vec<String> =
                files.iter().map(|vw| format!("{}/{}.jpg {}w", attr(&url), vw, (*vw).min(w))).collect();
            let shown = files.iter().copied().filter(|vw| *vw <= 640).max().unwrap_or(IMAGE_WIDTHS[0]);
            let shown_w = shown.min(w).max(1);
            let shown_h = (u64::from(shown_w) * u64::from(h) / u64::from(w.max(1))) as u32;
            format!(
                "<img src=\"{}/{}.jpg\" srcset=\"{}\" sizes=\"{}\" width=\"{}\" height=\"{}\" alt=\"{}\" loading=\"{}\" decoding=\"async\">",
                attr(&url),
                shown,
                srcset.join(", "),
                attr(&sizes.unwrap_or_else(|| "(max-width: 640px) 100vw, 640px".into())),
                shown_w,
                shown_h.max(1),
                alt,
                loading
            )
        }
        None if url.starts_with("https://") || url.starts_with("http://") => format!(
            "<img src=\"{}\" width=\"640\" height=\"640\" alt=\"{}\" loading=\"{}\" decoding=\"async\" style=\"object-fit:cover\">",
            attr(&url),
            alt,
            loading
        ),
        None => String::new(),
    };
    Ok(Value::from_safe_string(html))
}

/// The built-in templates, compiled once.
pub struct Pages {
    env: Environment<'static>,
}

impl Default for Pages {
    fn default() -> Self {
        Self::new()
    }
}

impl Pages {
    pub fn new() -> Self {
        let mut env = Environment::new();
        configure(&mut env);
        for (name, source) in crate::theme::DEFAULT_THEME.iter().chain(crate::dashboard::TEMPLATES.iter()) {
            // Built-in templates are part of the binary; one that does not compile is a bug
            // caught by the test suite, not an operator's problem.
            env.add_template(name, source).unwrap_or_else(|e| panic!("built-in template {name}: {e:#}"));
        }
        Pages { env }
    }

    pub fn env(&self) -> &Environment<'static> {
        &self.env
    }

    /// Renders a built-in template.
    pub fn render(&self, name: &str, ctx: impl Serialize) -> Result<Html<String>, WebError> {
        let tmpl = self.env.get_template(name).map_err(|e| WebError::Template(format!("{name}: {e:#}")))?;
        tmpl.render(Value::from(minijinja::value::Serde(&ctx)))
            .map(Html)
            .map_err(|e| WebError::Template(format!("{name}: {e:#}")))
    }
}

/// A template error as a merchant should read it: which template, which line, what is wrong.
pub fn describe(e: &Error) -> String {
    let place = match (e.name(), e.line()) {
        (Some(n), Some(l)) => format!("{n}, line {l}: "),
        (Some(n), None) => format!("{n}: "),
        _ => String::new(),
    };
    let what = match e.kind() {
        ErrorKind::OutOfFuel => "the template does too much work (too many steps); simplify its loops".to_string(),
        _ => e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string()),
    };
    format!("{place}{what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_uses_indian_grouping_for_rupees() {
        assert_eq!(money(12_345_650, Some("INR".into())), "₹1,23,456.50");
        assert_eq!(money(99_900, None), "₹999.00");
        assert_eq!(money(123_456_789, Some("USD".into())), "$1,234,567.89");
        assert_eq!(money(500, Some("JPY".into())), "¥500");
        assert_eq!(money(1_005, Some("KWD".into())), "KWD 1.005");
    }

    fn no_kwargs() -> Kwargs {
        Kwargs::from_iter(std::iter::empty::<(&str, Value)>())
    }

    #[test]
    fn uploaded_images_get_existing_variants_and_true_proportions() {
        const H: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let small = img(format!("/media/s/{H}_200x150"), Some("a\"b".into()), no_kwargs()).unwrap().to_string();
        assert!(small.contains(&format!("src=\"/media/s/{H}_200x150/320.jpg\"")), "{small}");
        assert!(small.contains("width=\"200\" height=\"150\""), "{small}");
        assert!(small.contains("alt=\"a&quot;b\""), "{small}");
        let big = img(format!("/media/s/{H}_2000x1000"), None, no_kwargs()).unwrap().to_string();
        assert!(big.contains(&format!("src=\"/media/s/{H}_2000x1000/640.jpg\"")), "{big}");
        assert!(big.contains("width=\"640\" height=\"320\""), "{big}");
        assert!(big.contains("/1280.jpg 1280w"), "{big}");
        let mid = img(format!("/media/s/{H}_500x500"), None, no_kwargs()).unwrap().to_string();
        assert!(
            mid.contains("/640.jpg 500w") && mid.contains("width=\"500\""),
            "a 500-px photo shows at 500 px: {mid}"
        );
        assert!(!mid.contains("1280.jpg"), "{mid}");
    }

    #[test]
    fn decimals_follow_the_currency() {
        assert_eq!(decimal(24_950, Some("INR".into())), "249.50");
        assert_eq!(decimal(500, Some("JPY".into())), "500");
        assert_eq!(decimal(1_005, Some("KWD".into())), "1.005");
    }

    #[test]
    fn times_are_shown_in_india() {
        assert_eq!(datetime("2026-11-25T20:00:00Z".into()), "26 Nov 2026, 01:30");
        assert_eq!(date("2026-01-01T00:00:00Z".into()), "1 Jan 2026");
        assert_eq!(datetime("garbage".into()), "garbage");
    }
}
