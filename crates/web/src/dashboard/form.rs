//! Submitted dashboard forms: url-encoded or multipart, read once and bounded, CSRF-checked
//! before a handler sees them; and the mapping of rule violations back onto form fields.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use axum::http::header;
use kirana_domain::Invalid;
use kirana_server::AppState;
use kirana_storage::StorageError;

use crate::csrf::Csrf;
use crate::error::WebError;

/// Fields a dashboard form may carry (the product form's variant rows are the most).
const MAX_FIELDS: usize = 400;

/// A form as posted: its text fields in order (repeated names allowed), at most one file, and
/// the browser's form token (already checked).
pub struct Submitted {
    fields: Vec<(String, String)>,
    pub file: Option<Bytes>,
    pub csrf: Csrf,
}

impl FromRequest<AppState> for Submitted {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let csrf = Csrf::from_request_parts(&mut parts, state).await?;
        let multipart = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        let req = Request::from_parts(parts, body);
        let mut fields = Vec::new();
        let mut file = None;
        if multipart {
            let mut form =
                Multipart::from_request(req, state).await.map_err(|e| WebError::BadRequest(e.body_text()))?;
            let too_large = |e: axum::extract::multipart::MultipartError| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    WebError::BadRequest(format!(
                        "the upload is too large (at most {} MiB)",
                        kirana_server::media::MAX_UPLOAD_BYTES / (1024 * 1024)
                    ))
                } else {
                    WebError::BadRequest(e.body_text())
                }
            };
            while let Some(field) = form.next_field().await.map_err(too_large)? {
                if fields.len() >= MAX_FIELDS {
                    return Err(WebError::BadRequest("the form has too many fields".into()));
                }
                let name = field.name().unwrap_or_default().to_string();
                if field.file_name().is_some() {
                    let bytes = field.bytes().await.map_err(too_large)?;
                    // A file input left empty still sends a part, with no bytes.
                    if !bytes.is_empty() && file.is_none() {
                        file = Some(bytes);
                    }
                } else {
                    fields.push((name, field.text().await.map_err(too_large)?));
                }
            }
        } else {
            let bytes = Bytes::from_request(req, state)
                .await
                .map_err(|_| WebError::BadRequest("the form could not be read (too large?)".into()))?;
            fields = form_urlencoded::parse(&bytes).into_owned().take(MAX_FIELDS + 1).collect();
            if fields.len() > MAX_FIELDS {
                return Err(WebError::BadRequest("the form has too many fields".into()));
            }
        }
        let submitted = Submitted { fields, file, csrf };
        submitted.csrf.check(submitted.text("_csrf"))?;
        Ok(submitted)
    }
}

impl Submitted {
    /// A field's value, trimmed; empty when absent.
    pub fn text(&self, name: &str) -> &str {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).unwrap_or("")
    }

    /// A field's value as typed (multi-line text keeps its shape).
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A field that may be left blank.
    pub fn opt(&self, name: &str) -> Option<String> {
        Some(self.text(name)).filter(|v| !v.is_empty()).map(str::to_string)
    }

    /// Every value of a repeated field, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.trim()).collect()
    }

    /// A checkbox: present when ticked.
    pub fn ticked(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }

    /// The values as given, to show the form again after an error.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.fields.iter().filter(|(k, _)| k != "_csrf").map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// An amount typed by a person ("249", "249.5", "1,299.00") in minor units of a currency with
/// `exponent` decimals.
pub fn parse_amount(raw: &str, exponent: u8) -> Result<i64, String> {
    let s: String = raw.trim().trim_start_matches('₹').chars().filter(|c| *c != ',' && *c != ' ').collect();
    let msg = || format!("must be an amount such as 249 or 249.50 (at most {exponent} decimals)");
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > usize::from(exponent)
        || whole.len() > 12
    {
        return Err(msg());
    }
    let scale = 10i64.pow(u32::from(exponent));
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| msg())? };
    let frac_val: i64 = if frac.is_empty() { 0 } else { frac.parse::<i64>().map_err(|_| msg())? };
    let frac_scaled = frac_val * 10i64.pow(u32::from(exponent) - frac.len() as u32);
    whole.checked_mul(scale).and_then(|w| w.checked_add(frac_scaled)).ok_or_else(msg)
}

/// Shows an amount in minor units the way the form takes it back ("249.50").
pub fn show_amount(minor: i64, exponent: u8) -> String {
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10i64.pow(u32::from(exponent));
    format!("{}.{:0width$}", minor / scale, minor % scale, width = usize::from(exponent))
}

/// Field messages to show beside a form's inputs; `""` holds a message for the whole form.
pub type Errors = BTreeMap<String, String>;

fn invalid_to_errors(i: &Invalid) -> Errors {
    i.0.iter().map(|f| (f.field.clone(), f.message.clone())).collect()
}

/// A failure the merchant can fix by changing the form, as messages; anything else is passed on.
pub fn form_errors(e: WebError) -> Result<Errors, WebError> {
    match e {
        WebError::Invalid(i) | WebError::Storage(StorageError::Invalid(i)) => Ok(invalid_to_errors(&i)),
        WebError::Storage(StorageError::Conflict { field, message, .. }) => {
            Ok(Errors::from([(field.unwrap_or("").to_string(), message)]))
        }
        WebError::Storage(e @ (StorageError::InvalidTransition { .. } | StorageError::InsufficientStock(_))) => {
            Ok(Errors::from([(String::new(), e.to_string())]))
        }
        WebError::BadRequest(m) => Ok(Errors::from([(String::new(), m)])),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_read_as_people_type_them() {
        assert_eq!(parse_amount("249", 2), Ok(24_900));
        assert_eq!(parse_amount("249.5", 2), Ok(24_950));
        assert_eq!(parse_amount("₹1,299.00", 2), Ok(129_900));
        assert_eq!(parse_amount(".5", 2), Ok(50));
        assert_eq!(parse_amount("500", 0), Ok(500));
        assert!(parse_amount("1.234", 2).is_err());
        assert!(parse_amount("-5", 2).is_err());
        assert!(parse_amount("", 2).is_err());
        assert!(parse_amount("abc", 2).is_err());
        assert!(parse_amount("99999999999999999", 2).is_err());
        assert_eq!(show_amount(24_950, 2), "249.50");
        assert_eq!(show_amount(5, 2), "0.05");
        assert_eq!(show_amount(500, 0), "500");
    }
}
