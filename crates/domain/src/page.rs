//! Keyset pagination: every list is ordered by a time-ordered id and continues after the last one
//! seen, so page 1,000 costs what page 1 costs, in the largest store as in the smallest.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use uuid::Uuid;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// How many items a page holds: `1..=100`, 20 when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    pub fn parse(raw: Option<i64>) -> Result<Self, String> {
        match raw {
            None => Ok(Limit(DEFAULT_LIMIT)),
            Some(n) if (1..=i64::from(MAX_LIMIT)).contains(&n) => Ok(Limit(n as u32)),
            Some(_) => Err(format!("must be between 1 and {MAX_LIMIT}")),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Lists fetch one row more than they return, to know whether another page exists.
    pub fn probe(self) -> i64 {
        i64::from(self.0) + 1
    }
}

impl Default for Limit {
    fn default() -> Self {
        Limit(DEFAULT_LIMIT)
    }
}

/// An opaque position in a list: the id of the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(Uuid);

impl Cursor {
    pub fn after(id: Uuid) -> Self {
        Cursor(id)
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| "is not a cursor this API returned".to_string())?;
        let arr: [u8; 16] = bytes.try_into().map_err(|_| "is not a cursor this API returned".to_string())?;
        Ok(Cursor(Uuid::from_bytes(arr)))
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

/// Where a list starts and how long it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRequest {
    pub after: Option<Cursor>,
    pub limit: Limit,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says "there is more".
    pub fn from_probe(mut rows: Vec<T>, limit: Limit, key: impl Fn(&T) -> Uuid) -> Self {
        let more = rows.len() > limit.get() as usize;
        rows.truncate(limit.get() as usize);
        let next_cursor = if more { rows.last().map(|r| Cursor::after(key(r)).encode()) } else { None };
        Page { items: rows, next_cursor }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bounded() {
        assert_eq!(Limit::parse(None).unwrap().get(), 20);
        assert_eq!(Limit::parse(Some(100)).unwrap().get(), 100);
        assert!(Limit::parse(Some(0)).is_err());
        assert!(Limit::parse(Some(101)).is_err());
        assert!(Limit::parse(Some(-5)).is_err());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor::after(Uuid::now_v7());
        assert_eq!(Cursor::parse(&c.encode()), Ok(c));
        assert!(Cursor::parse("!!").is_err());
        assert!(Cursor::parse("AAAA").is_err());
    }

    #[test]
    fn a_probe_row_means_another_page() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let page = Page::from_probe(ids.clone(), Limit::parse(Some(2)).unwrap(), |u| *u);
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_cursor, Some(Cursor::after(ids[1]).encode()));
        let last = Page::from_probe(ids[..2].to_vec(), Limit::parse(Some(2)).unwrap(), |u| *u);
        assert_eq!(last.next_cursor, None);
    }
}
