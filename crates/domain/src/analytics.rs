//! Sales analytics as merchants read them: totals per day and the products that sold, built
//! from rollups the analytics consumer keeps (so a report costs the days it covers, never the
//! orders in them).

use serde::Serialize;

use crate::ProductId;

/// The reporting day: kirana's merchants keep India's calendar (UTC+05:30).
pub const REPORTING_OFFSET_MS: i64 = 19_800_000;
const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 in the reporting calendar for an epoch-millisecond instant.
pub fn day_of(millis: i64) -> i64 {
    (millis + REPORTING_OFFSET_MS).div_euclid(DAY_MS)
}

/// The start of the hour containing an instant, epoch milliseconds (hours are the same in
/// UTC and India, whose offset is a whole number of half hours: the rollup uses UTC hours).
pub fn hour_of(millis: i64) -> i64 {
    millis - millis.rem_euclid(3_600_000)
}

/// `YYYY-MM-DD` of a reporting day.
pub fn day_label(day: i64) -> String {
    let date = time::Date::from_julian_day((day + 2_440_588) as i32).unwrap_or(time::Date::MIN);
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// Parses `YYYY-MM-DD` into a reporting day.
pub fn parse_day(s: &str) -> Result<i64, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(s.trim(), &fmt).map_err(|_| "must be a date such as 2026-11-25".to_string())?;
    Ok(i64::from(date.to_julian_day()) - 2_440_588)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DaySales {
    /// `YYYY-MM-DD`, India's calendar (`FROM..TO` for the totals).
    pub date: String,
    pub orders: i64,
    /// Sum of order totals, minor units.
    pub revenue: i64,
    pub units: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProductSales {
    pub product_id: ProductId,
    pub title: String,
    pub units: i64,
    pub revenue: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Analytics {
    pub from: String,
    pub to: String,
    pub totals: DaySales,
    /// Every day of the range, oldest first; days without orders are zeros.
    pub days: Vec<DaySales>,
    /// Best sellers by revenue over the range, at most 10.
    pub top_products: Vec<ProductSales>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_follow_india_and_round_trip() {
        // 2026-11-25T19:00:00Z is 00:30 on the 26th in India.
        let t = 1_795_633_200_000;
        assert_eq!(day_label(day_of(t)), "2026-11-26");
        assert_eq!(day_label(day_of(t - 3_600_000)), "2026-11-25");
        assert_eq!(parse_day("2026-11-26"), Ok(day_of(t)));
        assert!(parse_day("26/11/2026").is_err());
        assert_eq!(hour_of(t + 59_000), t);
    }
}
