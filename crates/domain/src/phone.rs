//! Phone numbers in E.164 (`+919876543210`): how merchants sign in and how shoppers are reached.

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "+919876543210")]
pub struct Phone(String);

impl Phone {
    /// Accepts E.164 with or without spaces, dashes and brackets. A bare 10-digit number starting
    /// with 6–9 (or with a leading 0) is read as Indian, the platform's home market.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let msg = "must be a phone number in international format, e.g. +919876543210";
        let trimmed = raw.trim();
        if trimmed.len() > 32 {
            return Err(msg.into());
        }
        let plus = trimmed.starts_with('+');
        let mut digits = String::with_capacity(16);
        for (i, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => {}
                ' ' | '-' | '(' | ')' | '.' => {}
                _ => return Err(msg.into()),
            }
        }
        let e164 = if plus {
            digits
        } else if digits.len() == 10 && matches!(digits.as_bytes()[0], b'6'..=b'9') {
            format!("91{digits}")
        } else if digits.len() == 11 && digits.starts_with('0') && matches!(digits.as_bytes()[1], b'6'..=b'9') {
            format!("91{}", &digits[1..])
        } else {
            return Err(msg.into());
        };
        if !(8..=15).contains(&e164.len()) || e164.starts_with('0') {
            return Err(msg.into());
        }
        // Indian mobile numbers are exactly 10 digits after +91 and start with 6–9.
        if let Some(national) = e164.strip_prefix("91")
            && (national.len() != 10 || !matches!(national.as_bytes()[0], b'6'..=b'9'))
        {
            return Err(msg.into());
        }
        Ok(Phone(format!("+{e164}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For values read back from storage, which only ever held parsed numbers.
    pub fn from_stored(s: String) -> Self {
        Phone(s)
    }

    /// The number with all but the last four digits hidden, for logs.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        format!("{}******{}", &self.0[..3.min(n)], &self.0[n.saturating_sub(4)..])
    }
}

impl<'de> Deserialize<'de> for Phone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Phone::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indian_numbers_are_normalised_to_e164() {
        for raw in ["+919876543210", "9876543210", "09876543210", "+91 98765-43210", "+91 (98765) 43210"] {
            assert_eq!(Phone::parse(raw).unwrap().as_str(), "+919876543210", "{raw}");
        }
    }

    #[test]
    fn other_countries_need_a_plus() {
        assert_eq!(Phone::parse("+14155550123").unwrap().as_str(), "+14155550123");
        assert!(Phone::parse("4155550123").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        for raw in
            ["", "abc", "+", "+0123456789", "12345", "+91123", "+915876543210", "+1234567890123456", "98765 43210x"]
        {
            assert!(Phone::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(Phone::parse("+919876543210").unwrap().masked(), "+91******3210");
    }
}
