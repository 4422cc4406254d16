//! Global, time-ordered identifiers: one newtype per kind so a product id can never be passed
//! where an order id is expected.
//!
//! UUIDv7 sorts by creation time, which is what keyset pagination orders by, and is unique across
//! shards, so a store can move to another shard without renumbering anything.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh identifier, ordered after every one this process made before.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn uuid(&self) -> Uuid {
                self.0
            }

            /// Parses the textual form; `None` for anything that is not a UUID. Callers answer
            /// 404 for a malformed id, exactly as for a missing one.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::try_parse(s).ok().map(Self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A store: the tenant, and the shard key.
    StoreId
);
id_type!(MerchantId);
id_type!(CategoryId);
id_type!(ProductId);
id_type!(VariantId);
id_type!(CartId);
id_type!(OrderId);
id_type!(CustomerId);
id_type!(PaymentId);
id_type!(RefundId);
id_type!(PayoutId);
id_type!(
    /// One balanced movement in a store's ledger (its lines share it).
    EntryId
);
id_type!(CouponId);
id_type!(EventId);
id_type!(
    /// A bearer credential (session or API key), named without revealing its secret.
    TokenId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_sort_in_creation_order() {
        let ids: Vec<OrderId> = (0..1000).map(|_| OrderId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        assert!(StoreId::parse("not-a-uuid").is_none());
        assert!(StoreId::parse("").is_none());
        let id = StoreId::generate();
        assert_eq!(StoreId::parse(&id.to_string()), Some(id));
    }
}
