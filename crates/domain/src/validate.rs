//! Field errors. Input is checked whole and every mistake is reported at once, each naming its
//! field in the JSON-pointer-ish dotted form clients see (`variants[2].price`).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The offending field, e.g. `customer.phone` or `variants[0].price`.
    pub field: String,
    /// What is wrong with it, in words a merchant can act on.
    pub message: String,
}

/// One or more invalid fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError { field: field.into(), message: message.into() }])
    }
}

/// Collects field errors while a whole input is parsed.
#[derive(Debug, Default)]
pub struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the error, if any, and hands back the parsed value otherwise.
    pub fn check<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(message) => {
                self.errors.push(FieldError { field: field.into(), message });
                None
            }
        }
    }

    /// Checks an optional input: absent stays absent, present must parse.
    pub fn check_opt<T, R>(
        &mut self,
        field: impl Into<String>,
        raw: Option<R>,
        parse: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match raw {
            None => Some(None),
            Some(r) => self.check(field, parse(r)).map(Some),
        }
    }

    pub fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into() });
    }

    pub fn merge(&mut self, prefix: &str, inner: Invalid) {
        for e in inner.0 {
            self.errors.push(FieldError { field: format!("{prefix}{}", e.field), message: e.message });
        }
    }

    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.errors.is_empty() { Ok(()) } else { Err(Invalid(self.errors)) }
    }
}

/// Unwraps a value a [`Checker`] already accepted. Only called after `finish()` returned `Ok`,
/// so `None` here is a bug in the caller, not bad input.
pub fn checked<T>(v: Option<T>) -> T {
    v.expect("value was validated by Checker::finish")
}
