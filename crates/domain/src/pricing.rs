//! Server-side totals. The client never sends a price: the server prices the cart from the
//! catalog, applies the coupon, delivery and tax, all in integer minor units.

use serde::Serialize;

use crate::Amount;
use crate::money::div_round_half_up;

/// What a store charges besides its goods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub delivery_fee: Amount,
    pub free_delivery_threshold: Option<Amount>,
    pub tax_rate_bps: u32,
    pub prices_include_tax: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Sum of unit price × quantity over the lines.
    pub subtotal: i64,
    /// Coupon discount on the subtotal.
    pub discount: i64,
    pub delivery_fee: i64,
    /// Tax on the discounted goods: included in them or added on top, as the store says.
    pub tax: i64,
    /// What the shopper pays.
    pub total: i64,
}

/// Sums lines of (unit price, quantity). Inputs are bounded, so this cannot overflow; it is
/// still checked, because a silent wrap here would be a wrong bill.
pub fn subtotal(lines: impl IntoIterator<Item = (Amount, u32)>) -> Option<i64> {
    lines
        .into_iter()
        .try_fold(0i64, |acc, (price, qty)| price.minor().checked_mul(i64::from(qty)).and_then(|l| acc.checked_add(l)))
}

/// Totals for a subtotal and a discount already computed (see `coupon::Coupon::discount`).
pub fn totals(subtotal: i64, discount: i64, terms: &Terms) -> Totals {
    let discount = discount.clamp(0, subtotal);
    let goods = subtotal - discount;
    let delivery_fee = match terms.free_delivery_threshold {
        _ if subtotal == 0 => 0,
        Some(t) if goods >= t.minor() => 0,
        _ => terms.delivery_fee.minor(),
    };
    let bps = i128::from(terms.tax_rate_bps);
    let (tax, total) = if terms.prices_include_tax {
        let tax = div_round_half_up(i128::from(goods) * bps, 10_000 + bps) as i64;
        (tax, goods + delivery_fee)
    } else {
        let tax = div_round_half_up(i128::from(goods) * bps, 10_000) as i64;
        (tax, goods + delivery_fee + tax)
    };
    Totals { subtotal, discount, delivery_fee, tax, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms(fee: i64, threshold: Option<i64>, bps: u32, inclusive: bool) -> Terms {
        Terms {
            delivery_fee: Amount::parse(fee).unwrap(),
            free_delivery_threshold: threshold.map(|t| Amount::parse(t).unwrap()),
            tax_rate_bps: bps,
            prices_include_tax: inclusive,
        }
    }

    #[test]
    fn delivery_is_free_from_the_threshold_on() {
        let t = terms(4_000, Some(50_000), 0, true);
        assert_eq!(totals(49_999, 0, &t).delivery_fee, 4_000);
        assert_eq!(totals(50_000, 0, &t).delivery_fee, 0);
        // The threshold is judged on goods after discount.
        assert_eq!(totals(55_000, 10_000, &t).delivery_fee, 4_000);
    }

    #[test]
    fn exclusive_tax_is_added_and_rounded_half_up() {
        let t = terms(0, None, 1_800, false);
        let r = totals(10_005, 0, &t); // 18 % of 100.05 = 18.009 → 18.01
        assert_eq!(r.tax, 1_801);
        assert_eq!(r.total, 11_806);
    }

    #[test]
    fn inclusive_tax_is_reported_but_not_added() {
        let t = terms(0, None, 1_800, true);
        let r = totals(11_800, 0, &t);
        assert_eq!(r.tax, 1_800);
        assert_eq!(r.total, 11_800);
    }

    #[test]
    fn subtotal_refuses_to_overflow() {
        let max = Amount::parse(crate::money::MAX_AMOUNT).unwrap();
        assert!(subtotal(vec![(max, u32::MAX); 100]).is_none());
        assert_eq!(subtotal(vec![(Amount::parse(250).unwrap(), 4)]), Some(1000));
    }

    proptest! {
        #[test]
        fn totals_add_up(sub in 0i64..1_000_000_000, disc in 0i64..1_000_000_000, fee in 0i64..100_000,
                         thr in proptest::option::of(0i64..1_000_000), bps in 0u32..=10_000, incl: bool) {
            let t = terms(fee, thr, bps, incl);
            let r = totals(sub, disc, &t);
            prop_assert!(r.discount <= r.subtotal);
            prop_assert!(r.tax >= 0 && r.total >= 0);
            let expected = r.subtotal - r.discount + r.delivery_fee + if incl { 0 } else { r.tax };
            prop_assert_eq!(r.total, expected);
        }
    }
}
